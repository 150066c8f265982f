"""Tests of essential sparsity: lotto_jax.oneshot and ``lotto oneshot``.

Independent truths: numpy stable argsorts for the one-shot masks and their exact
kept counts (round half up of d·N), a numpy forward pass of the masked weights for
the accuracies, hand-worked curves for the knee rules, and, end to end, the source
run's own recorded accuracy for the dense network and a numpy forward pass of its
stored final weights for every pruned one.
"""

from __future__ import annotations

import json
import math
import os
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lotto_jax import data, oneshot
from lotto_jax.runs import cli, layout

# ------------------------------------------------------------------ numpy truth


def np_count(d, n):
    """round(d · n) half up, for the density as written in decimal."""
    return math.floor(Fraction(str(d)) * n + Fraction(1, 2))


def np_top(values, k):
    """Boolean keep-mask of the k largest values; ties: the earlier position wins."""
    order = np.lexsort((np.arange(values.size), -values))  # by -value, then position
    keep = np.zeros(values.size, bool)
    keep[order[:k]] = True
    return keep


def np_masks(params, d, scope):
    """The one-shot magnitude mask of the kernels (ndim >= 2) at density d."""
    names = [k for k in sorted(params) if params[k].ndim >= 2]
    out = {k: np.ones(params[k].shape, bool) for k in params}
    if scope == "global":
        flat = np.concatenate([np.abs(params[k]).ravel() for k in names])
        keep = np_top(flat, np_count(d, flat.size))
        i = 0
        for k in names:
            out[k] = keep[i:i + params[k].size].reshape(params[k].shape)
            i += params[k].size
    else:
        for k in names:
            v = np.abs(params[k]).ravel()
            out[k] = np_top(v, np_count(d, v.size)).reshape(params[k].shape)
    return out


def np_forward(p, x):
    """The 2-layer ReLU net of :func:`_apply`, in float64."""
    h = np.maximum(x @ p["a"] + p["a_b"], 0)
    return h @ p["b"] + p["b_b"]


def _apply(params, model_state, x, train):
    del train
    h = jax.nn.relu(x @ params["a"] + params["a_b"][None])
    return h @ params["b"] + params["b_b"][None], model_state


def _params(seed=0):
    r = np.random.default_rng(seed)
    p = {"a": r.normal(size=(12, 16)), "a_b": r.normal(size=16) * 0.1,
         "b": r.normal(size=(16, 5)), "b_b": r.normal(size=5) * 0.1}
    p["a"][0, :6] = 0.5  # ties across positions
    p["b"][:3, 0] = -0.5
    return {k: v.astype(np.float32) for k, v in p.items()}


DENS = [0.3, 0.9, 0.05, 0.5, 0.15]  # not sorted: rows follow the given order

# ----------------------------------------------------------------- algorithm


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_masks_match_numpy_are_nested_and_keep_exact_counts(scope):
    p = _params()
    stack = oneshot.magnitude_masks(jax.tree.map(jnp.asarray, p), DENS, scope=scope)
    for i, d in enumerate(DENS):
        want = np_masks(p, d, scope)
        for k in p:
            np.testing.assert_array_equal(np.asarray(stack[k][i]), want[k], err_msg=f"{k} {d}")
        n_kernels = p["a"].size + p["b"].size
        kept = int(np.asarray(stack["a"][i]).sum() + np.asarray(stack["b"][i]).sum())
        if scope == "global":
            assert kept == np_count(d, n_kernels)
        else:
            assert kept == np_count(d, p["a"].size) + np_count(d, p["b"].size)
    for i, j in [(i, j) for i in range(len(DENS)) for j in range(len(DENS))]:
        if DENS[i] > DENS[j]:  # the sparser mask is a subset of the denser one
            for k in ("a", "b"):
                assert not np.any(np.asarray(stack[k][j]) & ~np.asarray(stack[k][i]))


def test_masks_keep_an_existing_mask_pruned():
    p = _params(1)
    start = {k: np.ones(v.shape, bool) for k, v in p.items()}
    start["a"][:, :8] = False  # half of "a" already pruned
    stack = oneshot.magnitude_masks(p, [0.9, 0.2], mask=start)
    assert not np.any(np.asarray(stack["a"])[:, :, :8])
    # density 0.2 of all 272 kernel weights: the 54 largest among the 192 kept
    masked = {k: np.where(start[k], p[k], 0.0) for k in p}
    np.testing.assert_array_equal(np.asarray(stack["b"][1]), np_masks(masked, 0.2, "global")["b"])


def test_evaluate_masks_equals_a_numpy_forward_pass():
    p = _params(2)
    r = np.random.default_rng(3)
    x = r.normal(size=(103, 12)).astype(np.float32)  # 103: a padded last batch of 40
    y = r.integers(0, 5, 103)
    stack = oneshot.magnitude_masks(p, DENS, scope="layerwise")
    losses, acc = oneshot.evaluate_masks(_apply, p, {}, stack, x, y, batch_size=40)
    assert acc.shape == (len(DENS),)
    for i, d in enumerate(DENS):
        m = np_masks(p, d, "layerwise")
        logits = np_forward({k: p[k].astype(np.float64) * m[k] for k in p}, x)
        want = np.mean(np.argmax(logits, 1) == y)
        z = logits - logits.max(1, keepdims=True)
        ce = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(103), y])
        assert float(acc[i]) == pytest.approx(want, abs=1e-6)
        assert float(losses[i]) == pytest.approx(ce, rel=1e-4)
    assert len({float(a) for a in acc}) > 1  # the masks matter


# ---------------------------------------------------------------------- knee

D = [0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.01]
A = [0.95, 0.95, 0.945, 0.935, 0.93, 0.80, 0.50, 0.10]


def test_knee_drop_rule_on_a_hand_made_curve():
    # dense 0.95, tolerance 0.01: 0.935 (density 0.3) is within 0.94? no: 0.935 < 0.94
    assert oneshot.knee(D, A, 0.95).density == 0.5
    assert oneshot.knee(D, A, 0.95).sparsity == pytest.approx(0.5)
    assert oneshot.knee(D, A, 0.95, tolerance=0.025).density == 0.2
    # the first failure stops the walk even if a sparser point recovers
    assert oneshot.knee([0.9, 0.5, 0.1], [0.90, 0.99, 0.99], 0.99).density == 1.0
    # flat curve: everything removable; given order does not matter
    assert oneshot.knee([0.01, 0.5], [0.99, 0.99], 0.99).density == 0.01
    # a density of 1 is the dense point: dense_accuracy stands for it
    assert oneshot.knee([1.0, 0.5, 0.1], [0.0, 0.98, 0.5], 0.98).density == 0.5


def test_knee_kneedle_on_a_hand_made_curve():
    # x = 1 - d scaled by 0.99, y scaled by the fall 0.95 - 0.10 = 0.85:
    # diff(d) = x/0.99 + (y - 0.10)/0.85 - 1; hand-computed maximum at d = 0.2
    x = 1 - np.array([1.0, *D])
    y = np.array([0.95, *A])
    diff = x / 0.99 + (y - 0.10) / 0.85 - 1
    assert np.argmax(diff) == 5 and diff[5] == pytest.approx(0.8 / 0.99 + 0.83 / 0.85 - 1)
    assert oneshot.knee(D, A, 0.95, rule="kneedle").density == 0.2
    # a straight decline has no knee above its chord: the dense network
    d = [0.75, 0.5, 0.25]
    assert oneshot.knee(d, [0.75, 0.5, 0.25], 1.0, rule="kneedle").density == 1.0
    # no fall at all: the sparsest point
    assert oneshot.knee(d, [0.9, 0.9, 0.9], 0.9, rule="kneedle").density == 0.25


@pytest.mark.parametrize("args, kw, name", [
    (([0.5, 1.5], [0.1, 0.1], 0.9), {}, "densities"),
    (([0.5, 0.5], [0.1, 0.1], 0.9), {}, "densities"),
    (([], [], 0.9), {}, "densities"),
    (([0.5, 0.1], [0.1], 0.9), {}, "accuracies"),
    (([0.5], [0.1], 0.9), {"rule": "elbow"}, "rule"),
    (([0.5], [0.1], 0.9), {"tolerance": 1.0}, "tolerance"),
])
def test_knee_refuses_bad_arguments_by_name(args, kw, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        oneshot.knee(*args, **kw)


# ------------------------------------------------------------ lotto oneshot


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished 2-replicate ``lotto train`` run of ``mlp`` on a learnable
    40-feature set (labels from a random linear map)."""
    d = tmp_path_factory.mktemp("oneshot")
    r = np.random.default_rng(0)
    w = r.normal(size=(40, 10))
    x = r.normal(size=(600, 40)).astype(np.float32)
    y = np.argmax(x @ w, 1)
    np.savez(d / "set.npz", x_train=x[:500], y_train=y[:500], x_test=x[500:], y_test=y[500:])
    run = d / "train"
    assert cli.main(["train", "--model", "mlp", "--dataset", f"npz:{d / 'set.npz'}",
                     "--steps", "60", "--eval-every", "30", "--batch-size", "50",
                     "--replicates", "2", "--out", str(run)]) == 0
    return d, run


def _np_mlp(p, x):
    h = x.astype(np.float64)
    for name in ("Dense_0", "Dense_1"):
        h = np.maximum(h @ p[name]["kernel"] + p[name]["bias"], 0)
    return h @ p["output"]["kernel"] + p["output"]["bias"]


def test_lotto_oneshot_end_to_end(source, capsys):
    d, run = source
    out = d / "os"
    argv = ["oneshot", "--run", str(run), "--densities", "0.5", "0.2", "0.03",
            "--retrain-steps", "20", "--out", str(out)]
    assert cli.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    trained = json.loads((run / "results.json").read_text())
    # the dense network: the source run's own final test accuracy, per replicate
    np.testing.assert_allclose(res["dense_test_accuracy"], trained["final_test_accuracy"],
                               atol=1e-6)
    final = ocp.StandardCheckpointer().restore(str(run / "train" / "final"))
    test = data.load(f"npz:{d / 'set.npz'}").test  # normalised as the run saw it
    for scope in ("global", "layerwise"):
        e = res["scopes"][scope]
        for rep in range(2):
            p = jax.tree.map(lambda a, rep=rep: np.asarray(a)[rep], final["params"])
            flat = {f"{k}/{j}": v for k, sub in p.items() for j, v in sub.items()}
            for i, dens in enumerate(res["densities"]):
                m = np_masks(flat, dens, scope)
                pm = {k: {j: v * m[f"{k}/{j}"] for j, v in sub.items()} for k, sub in p.items()}
                want = np.mean(np.argmax(_np_mlp(pm, np.asarray(test.x)), 1)
                               == np.asarray(test.y))
                assert e["test_accuracy"][i][rep] == pytest.approx(want, abs=1e-6)
                assert e["kept"][i][rep] == sum(int(v.sum()) for k, v in m.items()
                                                if v.ndim >= 2)
        # retraining starts from the one-shot network: its step-0 accuracy is the same
        for i, dens in enumerate(res["densities"]):
            metrics = json.loads((out / "retrain" / scope / f"d{dens:g}" /
                                  "metrics.json").read_text())
            np.testing.assert_allclose(metrics["curve"][0]["test_accuracy"],
                                       e["test_accuracy"][i], atol=1e-6)
            np.testing.assert_allclose(metrics["final_test_accuracy"],
                                       e["retrained"]["test_accuracy"][i], atol=1e-9)
        assert e["mean"] == pytest.approx(np.mean(e["test_accuracy"], 1).tolist())
        k = oneshot.knee(res["densities"], e["mean"], res["dense_mean"])
        assert res["knee"][scope] == {"density": k.density, "sparsity": k.sparsity}
    assert (out / "figures" / "accuracy.png").stat().st_size > 0
    # the readers know the run: its kind, its six finished units, its report
    view = layout.read(str(out))
    assert view.kind == "oneshot" and view.done and view.finished == 6 == len(view.units)
    (out / "figures" / "accuracy.png").unlink()
    assert cli.main(["report", str(out)]) == 0
    assert (out / "figures" / "accuracy.png").stat().st_size > 0
    # a rerun trains nothing and gives the same record
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "retrain/global/d0.5: finished, kept" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text()) == res


def _write_run(path, config, **files):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    for name, text in files.items():
        (path / name).write_text(text)
    return path


@pytest.mark.parametrize("flags, message", [
    (["--densities", "0.5", "1.5"], "--densities: expected densities in (0, 1]"),
    (["--densities", "0"], "--densities: expected densities in (0, 1]"),
    (["--densities", "0.5", "0.5"], "--densities: expected distinct densities"),
    (["--scopes", "local"], "--scopes: expected distinct values"),
    (["--knee", "elbow"], "--knee: expected one of"),
    (["--tolerance", "1"], "--tolerance: expected an accuracy drop in [0, 1)"),
    (["--retrain-steps", "-1"], "--retrain-steps: expected an int >= 0"),
    (["--retrain-lr", "0"], "--retrain-lr: expected a positive learning rate"),
])
def test_bad_flags_are_one_line_errors(source, tmp_path, capsys, flags, message):
    _, run = source
    out = tmp_path / "out"
    assert cli.main(["oneshot", "--run", str(run), *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lotto: error: ") and message in err[0], err
    assert not out.exists()


def test_bad_source_runs_are_one_line_errors(source, tmp_path, capsys):
    _, run = source
    unfinished = _write_run(tmp_path / "unfinished",
                            json.loads((run / "config.json").read_text()))
    pai = _write_run(tmp_path / "pai", {"method": "snip", "density": 0.1})
    cases = [(tmp_path / "nowhere", "no such run directory"),
             (tmp_path, "no such run directory"),  # a directory but not a run
             (pai, "is a pai run; lotto oneshot prunes"),
             (unfinished, "has no trained weights yet (train/final")]
    for path, message in cases:
        out = tmp_path / "out"
        assert cli.main(["oneshot", "--run", str(path), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lotto: error: --run: "), err
        assert message in err[0], err
        assert not out.exists()
        assert not os.path.exists(path / "results.json")


def test_an_imp_runs_round_zero_is_the_source(source, tmp_path):
    """An IMP run (laid out by hand through the store) whose round 0 holds the
    train run's final weights gives the train run's one-shot accuracies."""
    from lotto_jax.runs.store import RunStore

    _, run = source
    train_config = json.loads((run / "config.json").read_text())
    final = ocp.StandardCheckpointer().restore(str(run / "train" / "final"))
    imp_dir = tmp_path / "imp"
    with RunStore.open(str(imp_dir), {"run": train_config["run"], "rounds": 1,
                                      "rewind": "init"}) as store:
        store.save("round_000/mask", jax.tree.map(lambda a: np.ones(np.shape(a), bool),
                                                  final["params"]))
        store.save("round_000/final", final)
        store.write_json("round_000/metrics.json", {"density": 1.0})
    args = ["--densities", "0.5", "0.03", "--scopes", "layerwise"]
    assert cli.main(["oneshot", "--run", str(imp_dir), *args, "--out", str(tmp_path / "a")]) == 0
    assert cli.main(["oneshot", "--run", str(run), *args, "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / n / "results.json").read_text()) for n in "ab")
    assert a["unit"] == "round_000" and b["unit"] == "train"
    assert a["scopes"] == b["scopes"]
    assert a["dense_test_accuracy"] == b["dense_test_accuracy"]
    assert not (imp_dir / "results.json").exists()  # the source is only read
