"""Tests for lotto_jax.imp: counts, rewinding, controls, one compile, resume.

The tiny problem (tests/_imp_run.py): an MLP 40-32-10 on MNIST-1D, 30 steps of Adam
with a cosine schedule, evaluation every 10 steps, 20 % per round (10 % for the
output layer). Independent truths: integer count arithmetic for the densities, the
θ0 / θK / θT we compute here (θK by our own call to ``train.fit``), the schedule
function for fine-tuning, and an uninterrupted run for resume. (Kills of a real
process: tests/test_resume_imp.py, through the installed entry point.)
"""

import glob
import json
import math
import os
import shutil
import time

import _imp_run as tiny
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lotto_jax import data, imp, masks, prune, train
from lotto_jax.runs import common
from lotto_jax.runs import imp as imp_run
from lotto_jax.runs.engine import Engine
from lotto_jax.runs.store import ConfigMismatchError, CorruptCheckpointError, RunStore

LAYERS = {"Dense_0/kernel": 40 * 32, "output/kernel": 32 * 10}


# ----------------------------------------------------------------------------------
# fixtures


def host(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


class FitSpy:
    """Wraps train.fit; records each network's start state, mask and end params.

    A stacked call (``replicates=True``, controls trained together, one row each:
    description ``"reinit+random 1/2 (...)"``) is recorded as one call per member.
    """

    def __init__(self):
        self.calls = []
        self.stacks = []  # the member names of every fit call
        self.real = train.fit
        self.labels = {"now": None}  # the engine's label of the stack (track_labels)

    def __call__(self, trainer, state, mask, dataset, **kw):
        desc = self.labels["now"]
        names, _, rest = desc.partition(" ")
        members = names.split("+") if kw.get("replicates") else [names]
        self.stacks.append(members)
        rows = [(m, (lambda t: t) if not kw.get("replicates")
                 else (lambda t, i=i: jax.tree.map(lambda x: x[i], t)))
                for i, m in enumerate(members)]
        recs = [{"description": f"{m} {rest}", "step": int(take(state.step)),
                 "params": host(take(state.params)), "mask": host(take(mask)),
                 "hold_lr": kw.get("hold_lr", -1), "until": kw.get("until")}
                for m, take in rows]
        state, result = self.real(trainer, state, mask, dataset, **kw)
        for rec, (_, take) in zip(recs, rows, strict=True):
            rec["final"] = host(take(state.params))
            self.calls.append(rec)
        return state, result

    def trained(self, prefix):
        """Calls whose description starts with ``prefix`` (e.g. 'round 2/')."""
        return [c for c in self.calls if c["description"].startswith(prefix)]


def run_spied(monkeypatch_ctx, fn, *args, **kw):
    spy = FitSpy()
    engine_fit = Engine._fit
    spy.labels = tiny.track_labels(monkeypatch_ctx.setattr)
    monkeypatch_ctx.setattr(train, "fit", spy)
    try:
        return fn(*args, **kw), spy
    finally:
        monkeypatch_ctx.setattr(train, "fit", spy.real)
        monkeypatch_ctx.setattr(Engine, "_fit", engine_fit)


@pytest.fixture(scope="module")
def setup():
    return tiny.setup()


@pytest.fixture(scope="module")
def init_run(setup, tmp_path_factory):
    """rewind=init with the shuffle control, then rerun adding reinit and random."""
    dataset, _, params0, trainer, init_fn = setup
    d = str(tmp_path_factory.mktemp("imp") / "run")
    with pytest.MonkeyPatch.context() as mp:
        first, spy1 = run_spied(mp, tiny.run, trainer, params0, dataset, init_fn,
                                store=d, controls=("shuffle",))
        kept = sorted(glob.glob(os.path.join(d, "round_*", "**"), recursive=True)
                      + glob.glob(os.path.join(d, "controls", "shuffle", "**"),
                                  recursive=True)
                      + [os.path.join(d, "init.manifest.json")])
        mtimes = {p: os.stat(p).st_mtime_ns for p in kept if os.path.isfile(p)}
        time.sleep(0.01)
        second, spy2 = run_spied(mp, tiny.run, trainer, params0, dataset, init_fn,
                                 store=d, controls=imp.CONTROLS)
    return {"dir": d, "first": first, "spy1": spy1, "result": second, "spy2": spy2,
            "mtimes": mtimes, "params0": params0, "trainer": trainer, "dataset": dataset}


def assert_trees_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def trees_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def kept_counts(mask):
    return {masks.path_str(p): int(np.asarray(m).sum())
            for p, m in jax.tree_util.tree_flatten_with_path(mask)[0]
            if np.ndim(m) >= 2}


# ----------------------------------------------------------------------------------
# counts


def expected_kept(rounds):
    """Per-layer kept counts by integer arithmetic: remove floor(k*f + 1/2)."""
    out = []
    kept = dict(LAYERS)
    for _ in range(rounds + 1):
        out.append(dict(kept))
        for name, k in kept.items():
            num, den = (1, 10) if name.startswith("output/") else (1, 5)
            kept[name] = k - (2 * k * num + den) // (2 * den)  # floor(k*f + 1/2)
    return out


def test_density_follows_exact_count_arithmetic(init_run):
    res = init_run["result"]
    expected = expected_kept(2)
    assert expected[1] == {"Dense_0/kernel": 1024, "output/kernel": 288}
    assert expected[2] == {"Dense_0/kernel": 819, "output/kernel": 259}
    for r, rnd in enumerate(res.rounds):
        assert kept_counts(rnd.mask) == expected[r]
        layers = {k: v["kept"] for k, v in rnd.metrics["layers"].items()}
        assert layers == expected[r]
        total = sum(expected[r].values())
        assert rnd.density == total / sum(LAYERS.values())
        # biases are never pruned
        assert bool(rnd.mask["Dense_0"]["bias"].all()) and bool(rnd.mask["output"]["bias"].all())
        # pruning only removes: each mask is inside the previous one
        if r:
            prev = res.rounds[r - 1].mask
            assert all(not np.any(np.asarray(m) & ~np.asarray(p))
                       for m, p in zip(jax.tree.leaves(rnd.mask), jax.tree.leaves(prev), strict=True))
    # the masks are the magnitude ranking of the previous round's trained weights
    spy = init_run["spy1"]
    for r in (1, 2):
        theta_t = spy.trained(f"round {r - 1}/")[-1]["final"]
        k = expected[r]["Dense_0/kernel"]
        w = np.abs(theta_t["Dense_0"]["kernel"]).ravel()
        top = np.zeros(w.size, bool)
        prev_kept = np.asarray(res.rounds[r - 1].mask["Dense_0"]["kernel"]).ravel()
        order = np.lexsort((np.arange(w.size), np.where(prev_kept, w, -1.0)))
        top[order[-k:]] = True
        np.testing.assert_array_equal(
            np.asarray(res.rounds[r].mask["Dense_0"]["kernel"]).ravel(), top)


# ----------------------------------------------------------------------------------
# rewinding


def test_rewind_init_starts_from_theta0_masked(init_run):
    spy, res, params0 = init_run["spy1"], init_run["result"], init_run["params0"]
    for r in range(3):
        (call,) = spy.trained(f"round {r}/")
        assert call["step"] == 0 and call["hold_lr"] == -1
        assert_trees_equal(call["mask"], res.rounds[r].mask)
        assert_trees_equal(call["params"], masks.apply(params0, res.rounds[r].mask))
    # the trunk's curve replays the cosine schedule from step 0
    lrs = [c["lr"] for c in res.rounds[2].metrics["curve"]]
    assert lrs[0] == pytest.approx(1e-2) and lrs[-1] < 1e-3


def test_rewind_to_step_k(setup, tmp_path):
    dataset, _, params0, trainer, init_fn = setup
    d = str(tmp_path / "run")
    with pytest.MonkeyPatch.context() as mp:
        res, spy = run_spied(mp, tiny.run, trainer, params0, dataset, init_fn,
                             store=d, rounds=1, controls=("reinit",), rewind="step:10")
    # θK by our own dense run from θ0 to step 10.
    dense = masks.init(params0)
    state, _ = train.fit(trainer, trainer.init(host(params0)), dense, dataset,
                         data_key=jax.random.key(1), until=10)
    theta_k = host(state.params)
    state, _ = train.fit(trainer, state, dense, dataset, data_key=jax.random.key(1))
    theta_t0 = host(state.params)
    # round 0: paused at K, then finished: the same trajectory as one dense run
    r0 = spy.trained("round 0/")
    assert [c["until"] for c in r0] == [10, None]
    assert_trees_equal(r0[-1]["final"], theta_t0)
    # round 1 starts at step K from θK ⊙ m1
    (r1,) = spy.trained("round 1/")
    assert r1["step"] == 10
    assert_trees_equal(r1["params"], masks.apply(theta_k, res.rounds[1].mask))
    assert res.rounds[1].metrics["curve"][0]["step"] == 20  # T - K steps trained
    # θK is in the store, readable by plain orbax
    stored = ocp.StandardCheckpointer().restore(os.path.join(d, "rewind"))
    assert_trees_equal(stored["params"], theta_k)
    # reinit: the same mask, fresh weights, from step K too
    (c1,) = spy.trained("reinit 1/")
    assert c1["step"] == 10
    assert_trees_equal(c1["mask"], res.rounds[1].mask)
    fresh = ocp.StandardCheckpointer().restore(os.path.join(d, "controls/reinit/round_001/init"))
    assert_trees_equal(c1["params"], masks.apply(fresh["params"], res.rounds[1].mask))
    assert not trees_equal(c1["params"], r1["params"])


def test_lr_rewinding_and_finetuning(setup):
    dataset, _, params0, trainer, init_fn = setup
    lr_final = float(trainer.lr_fn(tiny.STEPS - 1))
    for rewind in ("lr", "finetune"):
        with pytest.MonkeyPatch.context() as mp:
            res, spy = run_spied(mp, tiny.run, trainer, params0, dataset, init_fn,
                                 store=None, rounds=2, controls=(), rewind=rewind)
        for r in (1, 2):
            (prev,) = spy.trained(f"round {r - 1}/")
            (call,) = spy.trained(f"round {r}/")
            assert call["step"] == 0
            assert_trees_equal(call["params"], masks.apply(prev["final"], res.rounds[r].mask))
            lrs = [c["lr"] for c in res.rounds[r].metrics["curve"]]
            if rewind == "lr":
                assert call["hold_lr"] == -1
                # recorded at the eval steps 0, 10, 20, 30: the replayed schedule
                assert lrs == [float(trainer.lr_fn(s)) for s in (0, 10, 20, 30)]
            else:
                assert call["hold_lr"] == tiny.STEPS - 1
                assert lrs == [lr_final] * len(lrs) and lr_final < 1e-3
        # the dense round follows the schedule in both modes
        assert res.rounds[0].metrics["curve"][0]["lr"] == pytest.approx(1e-2)


# ----------------------------------------------------------------------------------
# controls


def test_controls_masks_and_weights(init_run):
    res, spy, params0 = init_run["result"], init_run["spy2"], init_run["params0"]
    d = init_run["dir"]
    for r in (1, 2):
        trunk = res.rounds[r].mask
        ctrl = {c: res.controls[c][r - 1] for c in imp.CONTROLS}
        assert all(cr.round == r for cr in ctrl.values())
        # reinit: the trunk's mask, other initial weights
        assert_trees_equal(ctrl["reinit"].mask, trunk)
        (call,) = spy.trained(f"reinit {r}/")
        assert call["step"] == 0
        fresh = ocp.StandardCheckpointer().restore(
            os.path.join(d, f"controls/reinit/round_{r:03d}/init"))
        assert_trees_equal(call["params"], masks.apply(fresh["params"], trunk))
        assert not trees_equal(fresh["params"], params0)
        assert not np.allclose(call["params"]["Dense_0"]["kernel"],
                               masks.apply(params0, trunk)["Dense_0"]["kernel"])
        # shuffle / random: the trunk's per-layer counts, another mask
        for c in ("shuffle", "random"):
            m = ctrl[c].mask
            assert kept_counts(m) == kept_counts(trunk)
            assert ctrl[c].metrics["layers"] == res.rounds[r].metrics["layers"]
            for name in ("Dense_0", "output"):
                assert not np.array_equal(m[name]["kernel"], trunk[name]["kernel"])
                assert bool(np.all(m[name]["bias"]))
            # trained from the trunk's rewind point θ0, under the control's mask
            calls = (init_run["spy1"] if c == "shuffle" else spy).trained(f"{c} {r}/")
            assert_trees_equal(calls[0]["params"], masks.apply(params0, m))
        assert not trees_equal(ctrl["shuffle"].mask, ctrl["random"].mask)
    # the store holds each control under its own name
    for c in imp.CONTROLS:
        for r in (1, 2):
            assert os.path.exists(os.path.join(d, f"controls/{c}/round_{r:03d}/metrics.json"))


def test_random_mask_counts_and_independence():
    m = {"a": np.arange(60).reshape(6, 10) % 3 == 0, "b": np.ones(5, bool)}
    keys = jax.random.split(jax.random.key(0), 300)
    draws = jax.jit(jax.vmap(lambda k: imp.random_mask(m, k)))(keys)
    assert np.all(np.asarray(draws["a"]).sum((1, 2)) == 20)
    assert bool(np.all(draws["b"]))
    # every position is kept with probability 1/3 (a uniform subset of size 20)
    freq = np.asarray(draws["a"]).mean(0)
    assert np.all(np.abs(freq - 1 / 3) < 0.13)
    assert len({np.asarray(a).tobytes() for a in draws["a"]}) == 300


def test_top_k_selection_equals_a_stable_sort():
    """imp._top_k and prune._top_mask (O(n) bitwise selections) against numpy's
    stable sorts, on tie-heavy inputs with -0.0, 0.0, infinities and NaN, every k."""
    rng = np.random.default_rng(0)
    top_k = jax.jit(imp._top_k)
    keep_last = jax.jit(lambda s, v, k: prune._top_mask(s, v, k, prefer="last"))
    values = np.array([-2.0, -0.5, -0.0, 0.0, 0.5, 2.0, np.inf, -np.inf, np.nan], np.float32)
    for n in (1, 7, 40):
        for _ in range(4):
            s = rng.choice(values, n).astype(np.float32)
            canon = np.where(s == 0, 0.0, s)  # jnp.sort's order: -0 = 0, NaN largest
            key = np.where(np.isnan(canon), np.inf, canon)
            nan_last = np.isnan(canon).astype(int)
            order = np.lexsort((np.arange(n), -key, -nan_last))  # largest first, stable
            for k in range(n + 1):
                want = np.zeros(n, bool)
                want[order[:k]] = True
                np.testing.assert_array_equal(np.asarray(top_k(s, np.int32(k))), want)
            # prune.by_fraction's variant: only valid (kept) entries, ties to the last
            valid = rng.random(n) < 0.7
            by_rank = np.lexsort((np.arange(n), key, nan_last, valid))  # ascending
            for k in range(int(valid.sum()) + 1):
                want = np.zeros(n, bool)
                want[by_rank[n - k:]] = True
                np.testing.assert_array_equal(
                    np.asarray(keep_last(s, valid, np.int32(k))), want & valid)
    # random_mask keeps the top N(0, 1) draws: the double argsort it replaced
    m = {"w": np.arange(5000).reshape(50, 100) % 7 < 3}
    draws = imp.scores.random(jax.tree.map(lambda x: np.zeros(x.shape, np.float32), m),
                              key=jax.random.key(3))["w"].ravel()
    old = np.argsort(np.argsort(-np.asarray(draws), kind="stable"), kind="stable") < m["w"].sum()
    np.testing.assert_array_equal(
        np.asarray(imp.random_mask(m, jax.random.key(3))["w"]).ravel(), old)


def test_checkpoint_cadence(setup, tmp_path):
    """save_every=None checkpoints by wall time: save_interval=0 at every
    evaluation (steps 10, 20), a long interval never mid-round."""
    dataset, _, params0, trainer, init_fn = setup
    seen = []
    save_step = RunStore.save_step

    def counting(self, prefix, step, tree, **kw):
        seen.append(step)
        return save_step(self, prefix, step, tree, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunStore, "save_step", counting)
        for interval, want in ((0, [10, 20]), (3600, [])):
            seen.clear()
            tiny.run(trainer, params0, dataset, init_fn, store=str(tmp_path / f"r{interval}"),
                     rounds=0, controls=(), save_every=None, save_interval=interval)
            assert seen == want


def test_adding_controls_does_not_retrain_the_trunk(init_run):
    spy2 = init_run["spy2"]
    described = sorted({c["description"].split()[0] for c in spy2.calls})
    assert described == ["random", "reinit"]
    assert len(spy2.calls) == 4  # 2 controls x rounds 1, 2
    # the two missing controls of each round trained together, one vmapped fit
    assert spy2.stacks == [["reinit", "random"]] * 2
    for path, mtime in init_run["mtimes"].items():
        assert os.stat(path).st_mtime_ns == mtime, path
    first, second = init_run["first"], init_run["result"]
    for a, b in zip(first.rounds, second.rounds, strict=True):
        assert a.metrics == b.metrics
    assert [c.metrics for c in first.controls["shuffle"]] == \
        [c.metrics for c in second.controls["shuffle"]]


def test_one_compile_across_rounds_controls_and_resume(init_run, setup, tmp_path):
    """The train chunk is traced once for every round, control and resumed state."""
    trainer = init_run["trainer"]
    dataset, _, params0, _, init_fn = setup
    d = str(tmp_path / "crash")

    class Crash(Exception):
        pass

    save_step = RunStore.save_step

    def crashing(self, prefix, step, tree, **kw):
        save_step(self, prefix, step, tree, **kw)
        if prefix == "controls/shuffle/round_002":
            raise Crash(prefix)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunStore, "save_step", crashing)
        with pytest.raises(Crash):
            tiny.run(trainer, params0, dataset, init_fn, store=d)
    assert glob.glob(os.path.join(d, "controls/shuffle/round_002/checkpoints/*.manifest.json"))
    with pytest.MonkeyPatch.context() as mp:
        resumed, spy = run_spied(mp, tiny.run, trainer, params0, dataset, init_fn, store=d)
    # only the unfinished control ran again, from its checkpoint at step 20
    assert [(c["description"].split(" (")[0], c["step"]) for c in spy.calls] == \
        [("shuffle 2/2", 20)]
    ref = init_run["first"]
    for a, b in zip(ref.rounds, resumed.rounds, strict=True):
        assert_trees_equal(a.mask, b.mask)
    assert_trees_equal(ref.controls["shuffle"][1].mask, resumed.controls["shuffle"][1].mask)
    assert ref.controls["shuffle"][1].metrics == resumed.controls["shuffle"][1].metrics
    assert not os.path.exists(os.path.join(d, "controls/shuffle/round_002/checkpoints"))
    assert trainer._train_chunk._cache_size() == 1


# ----------------------------------------------------------------------------------
# the store: refusal, corruption, resume


def test_changed_arguments_are_refused(init_run, setup):
    dataset, _, params0, trainer, _ = setup
    with pytest.raises(ConfigMismatchError, match=r"fraction: 0\.2 -> 0\.3"):
        imp_run.run_imp(trainer, params0, {}, dataset, rounds=2, fraction=0.3,
                    layer_fractions={"^output/": 0.1}, data_key=jax.random.key(1),
                    key=jax.random.key(2), store=init_run["dir"])


def test_corrupt_mask_is_reported_not_loaded(init_run, setup, tmp_path):
    dataset, _, params0, trainer, init_fn = setup
    d = str(tmp_path / "copy")
    shutil.copytree(init_run["dir"], d)
    victims = glob.glob(os.path.join(d, "round_002", "mask", "**", "d", "*"), recursive=True)
    victim = sorted(v for v in victims if os.path.isfile(v))[0]
    with open(victim, "r+b") as f:
        f.seek(0)
        f.write(b"\xde\xad\xbe\xef")
    with pytest.raises(CorruptCheckpointError, match=victim):
        tiny.run(trainer, params0, dataset, init_fn, store=d)
    # a finished round that lost its weights is reported too
    shutil.rmtree(os.path.join(d, "round_002", "mask"))
    os.remove(os.path.join(d, "round_002", "mask.manifest.json"))
    with pytest.raises(CorruptCheckpointError, match="round_002/mask"):
        tiny.run(trainer, params0, dataset, init_fn, store=d)


def test_parse_rewind_and_config_validation():
    assert imp.parse_rewind("step:5", 30) == ("step", 5)
    for bad in ("step:0", "step:30", "step:x", "warm", ""):
        with pytest.raises(ValueError, match="rewind"):
            imp.parse_rewind(bad, 30)
    with pytest.raises(ValueError, match="controls"):
        imp_run.ImpConfig(controls=("reinit", "bogus"))
    with pytest.raises(ValueError, match="save_every"):
        imp_run.ImpConfig(save_every=0)
    with pytest.raises(ValueError, match="save_interval"):
        imp_run.ImpConfig(save_interval=-1.0)


# ----------------------------------------------------------------------------------
# the driver's pruning options, end to end (imp_run.main on a 40-100-100-10 MLP)

MLP_LAYERS = {"Dense_0": (40, 100), "Dense_1": (100, 100), "output": (100, 10)}


def half_up(fraction: float, kept: int) -> int:
    """``floor(fraction * kept + 1/2)`` in integer arithmetic."""
    num, den = fraction.as_integer_ratio()
    return (2 * kept * num + den) // (2 * den)


def np_prune(theta_t, prev, groups):
    """The pruning rule in numpy: each group ``(leaf paths in tree order, fraction)``
    pools |θT| of its leaves, and its ``half_up(fraction, kept)`` lowest kept
    scores are removed, ties by position (tree order, then row-major)."""
    new = {k: {n: np.array(v) for n, v in layer.items()} for k, layer in prev.items()}
    for paths, fraction in groups:
        score = np.concatenate([np.abs(theta_t[a][b]).ravel() for a, b in paths])
        keep = np.concatenate([prev[a][b].ravel() for a, b in paths])
        idx = np.flatnonzero(keep)
        order = idx[np.lexsort((idx, score[idx]))]  # by score, then position
        keep[order[:half_up(fraction, len(idx))]] = False
        start = 0
        for a, b in paths:
            size = prev[a][b].size
            new[a][b] = keep[start:start + size].reshape(prev[a][b].shape)
            start += size
    return new


def np_mlp_accuracy(params, mask, split):
    p = {k: {n: np.where(mask[k][n], np.asarray(v, np.float64), 0.0) for n, v in layer.items()}
         for k, layer in params.items()}
    h = np.asarray(split.x, np.float64)
    for layer in ("Dense_0", "Dense_1"):
        h = np.maximum(h @ p[layer]["kernel"] + p[layer]["bias"], 0.0)
    logits = h @ p["output"]["kernel"] + p["output"]["bias"]
    return float(np.mean(logits.argmax(1) == split.y))


@pytest.mark.parametrize(
    "options",
    [{"prune_biases": True}, {"output_fraction": None},
     {"scope": "global", "output_fraction": None}],
    ids=["prune-biases", "output-fraction-none", "global"],
)
def test_main_pruning_options_match_numpy(tmp_path, options):
    """``imp_run.main`` with ``prune_biases`` (kernel and bias of a layer ranked
    together: ``groups="layer"``, the default; output at 0.1), ``output_fraction=None``
    (the output layer at 0.2 like the others) and ``scope="global"`` (one ranking of
    all kernels). Truths, on the θT and masks restored from the store with plain
    orbax: each round's mask is numpy's rule applied to the previous round's θT; the
    kept counts follow integer arithmetic; pruned weights (biases too) are exactly 0
    in θT; the reported accuracy is re-computed by a numpy forward pass (one test
    example in 1000 of float32/float64 tolerance)."""
    d = str(tmp_path / "run")
    run = common.RunConfig(
        model="mlp", train=train.TrainConfig(steps=10, batch_size=50, eval_every=10, lr=1e-2))
    imp_run.main(imp_run.ImpConfig(run=run, rounds=2, out=d, **options))
    config = imp_run.ImpConfig(**options)
    names = ("bias", "kernel") if config.prune_biases else ("kernel",)  # tree order
    out_f = config.output_fraction if config.output_fraction is not None else 0.2
    if config.scope == "global":
        groups = [([(k, "kernel") for k in MLP_LAYERS], 0.2)]
    else:
        groups = [([(k, n) for n in names], out_f if k == "output" else 0.2)
                  for k in MLP_LAYERS]
    # counts per group by integer arithmetic
    sizes = {k: math.prod(s) + (s[1] if config.prune_biases else 0)
             for k, s in MLP_LAYERS.items()}
    if config.scope == "global":
        kept = [sum(sizes.values())]
    else:
        kept = [sizes[k] for k in MLP_LAYERS]
    want_counts = [list(kept)]
    for _ in range(2):
        kept = [k - half_up(f, k) for k, (_, f) in zip(kept, groups, strict=True)]
        want_counts.append(list(kept))
    if options == {"prune_biases": True}:  # e.g. Dense_0: 4100 -> 3280 -> 2624
        assert [c[0] for c in want_counts] == [4100, 3280, 2624]
        assert [c[2] for c in want_counts] == [1010, 909, 818]

    ckpt = ocp.StandardCheckpointer()
    restore = lambda item: ckpt.restore(os.path.join(d, item))  # noqa: E731
    test = data.load("mnist1d", seed=0).test
    prev = None
    for r in range(3):
        mask = restore(f"round_{r:03d}/mask")
        theta_t = restore(f"round_{r:03d}/final")["params"]
        for k in MLP_LAYERS:
            if not config.prune_biases:
                assert np.all(mask[k]["bias"])
            for n in ("bias", "kernel"):  # pruned weights, biases too, exactly 0
                assert np.all(theta_t[k][n][~mask[k][n]] == 0.0)
        if r == 0:
            assert all(np.all(m) for m in jax.tree.leaves(mask))
        else:
            want = np_prune(prev[1], prev[0], groups)
            for k in MLP_LAYERS:
                for n in ("bias", "kernel"):
                    np.testing.assert_array_equal(mask[k][n], want[k][n], err_msg=f"{r} {k}/{n}")
        counts = [sum(int(mask[a][b].sum()) for a, b in paths) for paths, _ in groups]
        assert counts == want_counts[r]
        with open(os.path.join(d, f"round_{r:03d}", "metrics.json")) as f:
            metrics = json.load(f)
        assert metrics["density"] == sum(counts) / sum(want_counts[0])
        assert np_mlp_accuracy(theta_t, mask, test) == pytest.approx(
            metrics["final_test_accuracy"], abs=1e-3 + 1e-9)
        prev = (mask, theta_t)
    if config.prune_biases:  # biases were ranked with the kernels and lost some
        assert not np.all(mask["Dense_0"]["bias"]) or not np.all(mask["Dense_1"]["bias"])
