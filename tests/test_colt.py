"""Tests of COLT: lotto_jax.colt (class split, the intersection step) and ``lotto colt``.

Independent truths: numpy boolean selection for the class split and
``numpy.array_split`` for its ranges; a numpy global / per-leaf magnitude pruning
(stable argsort, exact rounded-half-up counts) and ``np.logical_and`` for the
intersection; :func:`lotto_jax.prune.by_fraction` for the reduction to IMP; the
hypergeometric expectation 0.85² for independent masks; for the end-to-end run, the
stored partition networks' weights pruned and intersected by numpy.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import jax.numpy as jnp
import numpy as np
import pytest
from _killrun import (
    assert_killed,
    assert_one_line_error,
    assert_same_run,
    engine_lines,
    lotto,
)
from _killrun import here as run_here
from _tiny_data import clusters_npz

from lotto_jax import colt, masks, prune, scores
from lotto_jax.data import Dataset, Split

# ------------------------------------------------------------------ numpy truth


def np_removed(frac, n):
    """round(frac * n), half up, for the fraction as written in decimal."""
    return math.floor(Fraction(str(frac)) * n + Fraction(1, 2))


def np_prune(params, mask, frac, scope):
    """IMP's rule in numpy: remove the round(frac * kept) smallest |θ| among the kept
    weights, over all leaves (global) or per leaf; ties to the first position."""
    keys = sorted(params)
    groups = [keys] if scope == "global" else [[k] for k in keys]
    out = {}
    for g in groups:
        p = np.concatenate([np.abs(np.ravel(params[k])) for k in g])
        m = np.concatenate([np.ravel(mask[k]) for k in g])
        kept = np.flatnonzero(m)
        drop = kept[np.argsort(p[kept], kind="stable")[:np_removed(frac, len(kept))]]
        new = m.copy()
        new[drop] = False
        offset = 0
        for k in g:
            n = np.size(mask[k])
            out[k] = new[offset:offset + n].reshape(np.shape(mask[k]))
            offset += n
    return out


def _tree(seed, shapes=(("a", (40, 30)), ("b", (30, 10)))):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes}


def _density(mask):
    return sum(int(np.sum(v)) for v in mask.values()) / sum(np.size(v) for v in mask.values())


# ---------------------------------------------------------------- the class split


@pytest.mark.parametrize(("n", "p"), [(10, 2), (10, 3), (7, 4), (5, 5)])
def test_class_ranges_are_numpy_array_split(n, p):
    want = tuple((int(c[0]), int(c[-1]) + 1) for c in np.array_split(np.arange(n), p))
    assert colt.class_ranges(n, p) == want


def _toy_dataset(seed=0, n=200, with_validation=True):
    rng = np.random.default_rng(seed)

    def split(m):
        return Split(rng.normal(size=(m, 3)).astype(np.float32),
                     rng.integers(0, 10, m).astype(np.int32))

    return Dataset("toy", split(n), split(n // 4) if with_validation else None,
                   split(n // 2), (3,), 10, {"mean": [0.0], "std": [1.0]})


@pytest.mark.parametrize("remap", [True, False])
def test_split_classes_selects_each_range_like_numpy(remap):
    ds = _toy_dataset()
    parts = colt.split_classes(ds, 3, remap=remap)
    for part, (lo, hi) in zip(parts, [(0, 4), (4, 7), (7, 10)], strict=True):
        assert part.name == f"toy[classes {lo}-{hi - 1}]"
        assert part.num_classes == 10 and part.input_shape == (3,)
        for name in ("train", "validation", "test"):
            full, got = getattr(ds, name), getattr(part, name)
            sel = np.flatnonzero((full.y >= lo) & (full.y < hi))
            np.testing.assert_array_equal(got.x, full.x[sel])
            np.testing.assert_array_equal(got.y, full.y[sel] - (lo if remap else 0))
            assert got.y.dtype == np.int32
    # the parts cover every example exactly once
    assert sum(len(p.train) for p in parts) == len(ds.train)


def test_split_classes_without_validation_and_errors():
    ds = _toy_dataset(with_validation=False)
    assert all(p.validation is None for p in colt.split_classes(ds))
    y = ds.train.y.copy()
    y[y >= 5] = 0  # no example of classes 5-9 left in train
    bad = Dataset("toy", Split(ds.train.x, y), None, ds.test, (3,), 10, {})
    with pytest.raises(ValueError, match=r"^dataset: the train split has no example of "
                                         r"classes 5\.\.9"):
        colt.split_classes(bad)
    for p in (1, 0, 11, 2.0, True):
        with pytest.raises(ValueError, match=r"^partitions: "):
            colt.split_classes(ds, p)


# --------------------------------------------------------------- the COLT step


@pytest.mark.parametrize(("scope", "n_parts"), [("global", 2), ("layerwise", 3)])
def test_intersection_and_densities_match_numpy(scope, n_parts):
    rng = np.random.default_rng(1)
    mask = {k: rng.random(v.shape) < 0.7 for k, v in _tree(0).items()}
    params = [_tree(10 + i) for i in range(n_parts)]
    new, parts, bad = colt.next_mask(
        [{k: jnp.asarray(v) for k, v in p.items()} for p in params],
        {k: jnp.asarray(v) for k, v in mask.items()}, fraction=0.15, scope=scope)
    want_parts = [np_prune(p, mask, 0.15, scope) for p in params]
    want = {k: np.logical_and.reduce([w[k] for w in want_parts]) for k in mask}
    for got_p, want_p in zip(parts, want_parts, strict=True):
        for k in mask:
            np.testing.assert_array_equal(np.asarray(got_p[k]), want_p[k])
    for k in mask:
        np.testing.assert_array_equal(np.asarray(new[k]), want[k])
        assert not np.any(np.asarray(new[k]) & ~mask[k])  # a subset of the old mask
    assert _density(want) <= min(_density(w) for w in want_parts)
    assert all(int(v) == 0 for v in bad.values())


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_identical_partitions_give_imps_mask(scope):
    p = {k: jnp.asarray(v) for k, v in _tree(3).items()}
    mask = masks.init(p)
    new, _, _ = colt.next_mask([p, p], mask, fraction=0.2, scope=scope)
    imp_mask = prune.by_fraction(scores.magnitude(p), mask, 0.2, scope=scope)
    for k in p:
        np.testing.assert_array_equal(np.asarray(new[k]), np.asarray(imp_mask[k]))
    # and that is (1 - 0.2) of the weights, exactly
    assert _density(new) == pytest.approx(0.8, abs=1 / sum(np.size(v) for v in p.values()))


def test_independent_partitions_keep_about_72_percent():
    shapes = (("a", (200, 100)), ("b", (100, 50)))
    a, b = (_tree(s, shapes) for s in (5, 6))
    mask = masks.init(a)
    new, parts, _ = colt.next_mask([a, b], mask, fraction=0.15)
    assert [_density(m) for m in parts] == pytest.approx([0.85, 0.85], abs=1e-4)
    # |A ∩ B| / n for two independent uniformly random 85 % subsets: mean 0.85² =
    # 0.7225, std ~ 0.85 · 0.15 / sqrt(n) < 1e-3 for n = 25,000
    assert _density(new) == pytest.approx(0.7225, abs=5e-3)


def test_bad_inputs_name_the_argument():
    p = {k: jnp.asarray(v) for k, v in _tree(0).items()}
    m = masks.init(p)
    for params in ([p], p, ()):
        with pytest.raises(ValueError, match=r"^params: COLT needs"):
            colt.next_mask(params, m, fraction=0.1)
    for f in (0, 1, 1.5, -0.1, True):
        with pytest.raises(ValueError, match=r"^fraction: expected a value in \(0, 1\)"):
            colt.next_mask([p, p], m, fraction=f)


# ------------------------------------------------------------------ lotto colt


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """40 features, 10 classes around random centres: learnable in a few steps."""
    return clusters_npz(tmp_path_factory.mktemp("colt"))


def _args(npz, out, *extra):
    return ["colt", "--model", "mlp", "--dataset", f"npz:{npz}", "--steps", "30",
            "--eval-every", "10", "--batch-size", "32", "--rounds", "2", *extra,
            "--out", str(out)]


@pytest.fixture(scope="module")
def reference(tiny_npz, tmp_path_factory):
    """The uninterrupted tiny run (checkpoints every 10 steps), in this process."""
    out = tmp_path_factory.mktemp("colt_ref") / "run"
    first = run_here(_args(tiny_npz, out, "--save-every", "10"))
    assert first.returncode == 0, first.stderr[-3000:]
    return out


def _check_masks(out, rows, rep=None):
    """Every stored mask_r (replicate ``rep`` of a replicated run) is the numpy
    intersection of the stored round r-1 partition networks pruned by numpy, and
    the densities in results.json are its counts."""
    from lotto_jax.runs.store import RunStore

    store = RunStore(str(out))

    def flat(tree):
        return {"/".join(map(str, k)): np.asarray(v) if rep is None else np.asarray(v)[rep]
                for k, v in _flatten(tree)}

    prev = flat(store.restore("round_000/mask"))
    assert all(v.all() for v in prev.values())
    for r in range(1, len(rows)):
        finals = [flat(store.restore(f"controls/part{p}/round_{r - 1:03d}/final")["params"])
                  for p in (0, 1)]
        kernels = {k: v for k, v in prev.items() if v.ndim >= 2}
        want_parts = [np_prune({k: f[k] for k in kernels}, kernels, 0.15, "global")
                      for f in finals]
        got = flat(store.restore(f"round_{r:03d}/mask"))
        for k in prev:
            want = np.logical_and(*[w[k] for w in want_parts]) if k in kernels else prev[k]
            np.testing.assert_array_equal(got[k], want, err_msg=f"round {r} {k}")
        total = sum(v.size for v in kernels.values())
        density = sum(int(got[k].sum()) for k in kernels) / total
        parts = [sum(int(w[k].sum()) for k in kernels) / total for w in want_parts]
        assert density <= min(parts)
        if rep is None:
            assert rows[r]["density"] == pytest.approx(density, abs=1e-12)
            assert rows[r]["partition_densities"] == pytest.approx(parts, abs=1e-12)
        prev = got


def test_lotto_colt_end_to_end(tiny_npz, reference):
    out = reference
    res = json.loads((out / "results.json").read_text())
    rows = res["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert res["ranges"] == [[0, 5], [5, 10]]
    assert rows[0]["density"] == 1.0 and rows[0]["pruning_steps"] == 0
    _check_masks(out, rows)
    for r in (1, 2):
        assert rows[r]["pruning_steps"] == r * 2 * 30
        assert rows[r]["total_steps"] == r * 2 * 30 + (r + 1) * 30
    assert rows[2]["partition_final_test_accuracy"] is None  # the last round prunes no more
    # a rerun trains nothing and gives the same results; lotto report reads the run
    again = run_here(_args(tiny_npz, out, "--save-every", "10"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training from step" not in again.stderr
    assert json.loads((out / "results.json").read_text()) == res
    rep = run_here(["report", str(out)])
    assert rep.returncode == 0 and "part0 final" in rep.stdout, rep.stderr[-2000:]
    assert "COLT: " in rep.stdout and "IMP: " not in rep.stdout


def test_replicates_prune_each_replicate_on_its_own(tiny_npz, tmp_path):
    """--replicates 2: the vmapped pruning gives each replicate the numpy
    intersection of its own partition networks; the densities in results.json are
    the replicates' mean."""
    out = tmp_path / "run"
    res = run_here(_args(tiny_npz, out, "--replicates", "2", "--rounds", "1"))
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["rounds"]
    for rep in (0, 1):
        _check_masks(out, rows, rep)
    layers = json.loads((out / "round_001" / "metrics.json").read_text())
    assert rows[1]["density"] == pytest.approx(np.mean(np.asarray(layers["kept"]))
                                               / layers["total"], abs=1e-12)
    assert len(rows[1]["final_test_accuracy"]) == 2


def test_killed_mid_partition_resumes_to_the_same_run(tiny_npz, reference, tmp_path):
    """SIGKILLed right after partition 1's round-0 checkpoint at step 20 (a
    subprocess), then rerun: it resumes that network from step 20 and ends with
    every item bit-equal to the uninterrupted run's."""
    out = tmp_path / "run"
    args = _args(tiny_npz, out, "--save-every", "10")
    assert_killed(lotto(args, cache_dir=tmp_path / "xla",
                        kill_after="controls/part1/round_000/checkpoints/step_00000020"))
    assert not (out / "controls" / "part1" / "round_000" / "metrics.json").exists()
    again = run_here(args)
    assert again.returncode == 0, again.stderr[-3000:]
    lines = engine_lines(again)
    assert "round_000: finished, kept" in lines
    assert "controls/part0/round_000: finished, kept" in lines
    assert "controls/part1/round_000: training from step 20" in lines
    assert_same_run(reference, out)


def _flatten(tree, prefix=()):
    for k, v in sorted(tree.items()):
        if isinstance(v, dict):
            yield from _flatten(v, (*prefix, k))
        else:
            yield (*prefix, k), v


BAD = [
    (["--partitions", "1"], "--partitions: expected an int >= 2"),
    (["--partitions", "11"], "--partitions: 11 class ranges need at least as many"),
    (["--fraction", "0"], "--fraction: expected a value in (0, 1)"),
    (["--fraction", "1.0"], "--fraction: expected a value in (0, 1)"),
    (["--labels", "shift"], "--labels: expected one of"),
    (["--scope", "per-layer"], "--scope: expected"),
    (["--output-fraction", "1.2"], "--output-fraction: expected"),
    (["--rounds", "-1"], "--rounds: expected an int >= 0"),
    (["--batch-size", "100", "--partitions", "10"], "--batch-size: 100 is larger than "
                                                    "partition"),
]


@pytest.mark.parametrize(("extra", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_naming_the_flag_and_writes_nothing(tiny_npz, tmp_path,
                                                                  extra, message):
    out = tmp_path / "run"
    assert_one_line_error(run_here(_args(tiny_npz, out, *extra)), message)
    assert not out.exists()
