"""Tests of BiP: lotto_jax.bip (implicit gradient, global top-k, the alternating
optimiser) and ``lotto bip``.

Independent truths:
* the implicit gradient against a central finite difference of the upper objective
  ``F(m) = ℓ(m ⊙ θ*(m))`` with ``θ*(m)`` solved in closed form (numpy, float64):
  exact for a linear loss (a quadratic lower level), and an error that shrinks in
  proportion to the curvature of a quadratic loss (the Hessian-free assumption);
* the global top-k against a numpy stable argsort over all kernels;
* the straight-through gradients and both optimiser levels against a hand-written
  numpy SGD with momentum and weight decay on a linear model;
* the end-to-end run: the exported weights are θ ⊙ m of the stored BiP state, the
  masks keep round(keep · N) weights, and a numpy forward pass of the exported
  network gives the recorded final test accuracy.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import optax
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

from lotto_jax import bip
from lotto_jax import data as data_lib

# ------------------------------------------------------------ the implicit gradient


def _upper(m, c, a, gamma):
    """F(m) = ℓ(m ⊙ θ*(m)) for ℓ(z) = cᵀz + ½ zᵀAz, θ* = argmin ℓ(m⊙θ) + γ/2 ‖θ‖²
    (closed form: (D A D + γ I) θ = −D c, D = diag(m)), in float64."""
    d = np.diag(m)
    theta = np.linalg.solve(d @ a @ d + gamma * np.eye(len(m)), -d @ c)
    z = m * theta
    return c @ z + 0.5 * z @ a @ z, theta


def _fd(m, c, a, gamma, h=1e-6):
    g = np.zeros_like(m)
    for i in range(len(m)):
        e = np.zeros_like(m)
        e[i] = h
        g[i] = (_upper(m + e, c, a, gamma)[0] - _upper(m - e, c, a, gamma)[0]) / (2 * h)
    return g


def _ours(m, c, a, gamma):
    _, theta = _upper(m, c, a, gamma)
    with jax.enable_x64(True):
        loss = lambda z: jnp.dot(c, z) + 0.5 * z @ a @ z  # noqa: E731
        return np.asarray(bip.hypergradient(loss, jnp.asarray(m), jnp.asarray(theta),
                                            gamma=gamma))


def test_hypergradient_is_exact_for_a_quadratic_lower_level():
    """ℓ linear in z: the lower level is quadratic, ∇²ℓ = 0 holds, and the
    first-order implicit gradient equals the finite difference (closed form
    −2 m c² / γ too), for binary and relaxed masks."""
    rng = np.random.default_rng(0)
    c, gamma = rng.normal(size=6), 0.7
    for m in (np.array([1, 0, 1, 1, 0, 1.0]), rng.uniform(0.1, 1, 6)):
        want = _fd(m, c, np.zeros((6, 6)), gamma)
        np.testing.assert_allclose(want, -2 * m * c**2 / gamma, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(_ours(m, c, np.zeros((6, 6)), gamma), want,
                                   rtol=1e-6, atol=1e-9)


def test_hypergradient_error_is_first_order_in_the_curvature():
    """ℓ(z) = cᵀz + ε/2 zᵀAz: the Hessian-free approximation's error against the
    finite difference falls 10x when ε does (it is O(ε / γ)), and the dropped
    term is what is missing: with ε = 0 it vanishes."""
    rng = np.random.default_rng(1)
    c, gamma = rng.normal(size=5), 1.0
    b = rng.normal(size=(5, 5))
    a = b @ b.T / 5
    m = rng.uniform(0.2, 1, 5)
    errors = [np.abs(_ours(m, c, eps * a, gamma) - _fd(m, c, eps * a, gamma)).max()
              for eps in (1e-2, 1e-3)]
    assert errors[0] > 1e-5
    assert errors[0] / errors[1] == pytest.approx(10, rel=0.05)


def test_hypergradient_refuses_a_bad_gamma():
    for g in (0, -1.0, True, "1"):
        with pytest.raises(ValueError, match=r"^gamma: expected a number > 0"):
            bip.hypergradient(lambda z: z.sum(), jnp.ones(2), jnp.ones(2), gamma=g)


# ------------------------------------------------------------------ the mask


def np_round(keep, n):
    return math.floor(Fraction(str(keep)) * n + Fraction(1, 2))


def test_mask_of_keeps_the_global_top_k_of_abs_scores():
    rng = np.random.default_rng(2)
    s = {"a": {"kernel": rng.normal(size=(7, 5)), "bias": rng.normal(size=5)},
         "b": {"kernel": rng.normal(size=(5, 3))}}
    for keep in (0.5, 0.1, 0.37):
        got = bip.mask_of(jax.tree.map(jnp.asarray, s), keep)
        flat = np.concatenate([np.abs(s["a"]["kernel"]).ravel(), np.abs(s["b"]["kernel"]).ravel()])
        n = np_round(keep, flat.size)
        want = np.zeros(flat.size, bool)
        want[np.argsort(-flat, kind="stable")[:n]] = True
        np.testing.assert_array_equal(np.asarray(got["a"]["kernel"]).ravel(), want[:35])
        np.testing.assert_array_equal(np.asarray(got["b"]["kernel"]).ravel(), want[35:])
        assert np.asarray(got["a"]["bias"]).all()
    for k in (0, 1.5, True):
        with pytest.raises(ValueError, match=r"^keep: expected a fraction in \(0, 1\]"):
            bip.mask_of(s, k)


def test_mask_of_breaks_ties_to_the_later_position():
    """Integer scores (many ties): numpy's stable ascending argsort over the kernels'
    concatenation, the lowest N - round(keep N) dropped (so of equal scores the
    later positions stay), eagerly and under jit."""
    rng = np.random.default_rng(4)
    s = {"a": {"kernel": jnp.asarray(rng.integers(-3, 4, (30, 20)), jnp.float32),
               "bias": jnp.zeros(20)},
         "b": {"kernel": jnp.asarray(rng.integers(-3, 4, (20, 7)), jnp.float32)}}
    flat = np.abs(np.concatenate([np.ravel(s["a"]["kernel"]), np.ravel(s["b"]["kernel"])]))
    for keep in (0.5, 0.1, 0.33, 0.9):
        want = np.ones(flat.size, bool)
        want[np.argsort(flat, kind="stable")[:flat.size - np_round(keep, flat.size)]] = False
        jitted = (jax.jit(lambda t, k=keep: bip.mask_of(t, k))(s),) if keep == 0.33 else ()
        for got in (bip.mask_of(s, keep), *jitted):
            np.testing.assert_array_equal(np.ravel(got["a"]["kernel"]), want[:600])
            np.testing.assert_array_equal(np.ravel(got["b"]["kernel"]), want[600:])


# ------------------------------------------------- gradients and the optimiser


def _linear_setup():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    t = rng.normal(size=(8, 3)).astype(np.float32)
    params = {"dense": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}}

    def apply_fn(p, ms, xb, train):
        return xb @ p["dense"]["kernel"] + p["dense"]["bias"][None], ms

    def loss(joint, fn):
        out, _ = fn(joint, {}, jnp.asarray(x), True)
        return 0.5 * jnp.mean(jnp.sum((out - t) ** 2, -1))

    def np_dz(z_w, bias=b):
        """∂ℓ/∂(effective kernel) and ∂ℓ/∂bias in numpy."""
        r = (x @ z_w + bias - t) / len(x)
        return x.T @ r, r.sum(0)

    return params, apply_fn, loss, np_dz, w


def test_apply_gradients_are_straight_through():
    """∂ℓ/∂θ = m ⊙ ∂ℓ/∂z and ∂ℓ/∂s = sign(s) ⊙ θ ⊙ ∂ℓ/∂z (numpy), with the scores
    signed (one flipped) so that the sign matters."""
    params, apply_fn, loss, np_dz, w = _linear_setup()
    joint = bip.init(params)
    joint["scores"]["dense"]["kernel"] = joint["scores"]["dense"]["kernel"].at[0, 0].multiply(-1)
    keep = 0.5
    grads = jax.grad(loss)(joint, bip.apply(apply_fn, keep))
    s = np.asarray(joint["scores"]["dense"]["kernel"])
    m = np.zeros(12, bool)
    m[np.argsort(-np.abs(s).ravel(), kind="stable")[:6]] = True
    m = m.reshape(4, 3)
    gz, gb = np_dz(w * m)
    np.testing.assert_allclose(grads["theta"]["dense"]["kernel"], m * gz, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["theta"]["dense"]["bias"], gb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["scores"]["dense"]["kernel"], np.sign(s) * w * gz,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(grads["scores"]["dense"]["bias"], 0)


@pytest.mark.parametrize("form", ["paper", "code"])
def test_alternating_steps_match_numpy_sgd(form):
    """Two steps of the alternating optimiser under SGD (lr 0.1, momentum 0.9, wd
    0.01): step 0 moves θ (kernel and bias) by numpy's SGD and no score; step 1
    moves the scores by numpy's SGD on ∂ℓ/∂s + the correction (paper: −c sign(s)
    (∂ℓ/∂θ)², code: −c (∂ℓ/∂s)²) times score_scale, and no weight."""
    params, apply_fn, loss, np_dz, w = _linear_setup()
    keep, lr, mom, wd, c, scale = 0.5, 0.1, 0.9, 0.01, 0.3, 2.0
    sgd = optax.chain(optax.add_decayed_weights(wd), optax.trace(mom))
    tx = bip.alternating(sgd, sgd, score_scale=scale, ig_scale=c, form=form)
    fn = bip.apply(apply_fn, keep)
    joint = bip.init(params)
    state = tx.init(joint)
    b = np.asarray(params["dense"]["bias"])
    s = w.copy()
    m = np.zeros(12, bool)
    m[np.argsort(-np.abs(s).ravel(), kind="stable")[:6]] = True
    m = m.reshape(4, 3)
    # step 0: θ-step
    g = jax.grad(loss)(joint, fn)
    upd, state = tx.update(g, state, joint)
    joint = jax.tree.map(lambda p, u: p - lr * u, joint, upd)
    gz, gb = np_dz(w * m)
    w1 = w - lr * (m * gz + wd * w)
    b1 = b - lr * (gb + wd * b)
    np.testing.assert_allclose(joint["theta"]["dense"]["kernel"], w1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(joint["theta"]["dense"]["bias"], b1, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(joint["scores"]["dense"]["kernel"], s)
    # step 1: m-step at the updated θ (the mask has not changed: scores did not move)
    g = jax.grad(loss)(joint, fn)
    upd, state = tx.update(g, state, joint)
    joint = jax.tree.map(lambda p, u: p - lr * u, joint, upd)
    gz, _ = np_dz(w1 * m, b1)
    g_theta, g_s = m * gz, np.sign(s) * w1 * gz
    corr = -c * np.sign(s) * g_theta**2 if form == "paper" else -c * g_s**2
    s1 = s - lr * scale * (g_s + corr + wd * s)
    np.testing.assert_allclose(joint["scores"]["dense"]["kernel"], s1, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(joint["theta"]["dense"]["kernel"], w1, rtol=0, atol=0)
    # the halves a level never trains keep exactly zero optimiser state
    assert not np.any(np.asarray(state.weights[1].trace["scores"]["dense"]["kernel"]))
    assert not np.any(np.asarray(state.scores[1].trace["theta"]["dense"]["kernel"]))
    assert int(state.count) == 2


def test_without_the_correction_the_m_step_is_plain_score_descent():
    """ig_scale = 0 (the code's ``accelerate`` path): the m-step's update is the
    score optimiser on ∂ℓ/∂s alone, in either form."""
    params, apply_fn, loss, _, _ = _linear_setup()
    fn = bip.apply(apply_fn, 0.5)
    joint = bip.init(params)
    g = jax.grad(loss)(joint, fn)
    for form in bip.CORRECTIONS:
        tx = bip.alternating(optax.identity(), optax.identity(), ig_scale=0.0, form=form)
        state = tx.init(joint)._replace(count=jnp.int32(1))
        upd, _ = tx.update(g, state, joint)
        np.testing.assert_array_equal(upd["scores"]["dense"]["kernel"],
                                      g["scores"]["dense"]["kernel"])


def test_alternating_refuses_bad_arguments():
    ident = optax.identity()
    with pytest.raises(ValueError, match=r"^form: expected one of"):
        bip.alternating(ident, ident, form="hessian")
    with pytest.raises(ValueError, match=r"^ig_scale: expected a number >= 0"):
        bip.alternating(ident, ident, ig_scale=-1)
    with pytest.raises(ValueError, match=r"^score_scale: expected a number > 0"):
        bip.alternating(ident, ident, score_scale=0)
    with pytest.raises(ValueError, match=r"^params: expected a dict with keys 'theta'"):
        bip.alternating(ident, ident).init({"dense": jnp.ones(2)})


# ------------------------------------------------------------------ lotto bip


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    return clusters_npz(tmp_path_factory.mktemp("bip"))


def _args(npz, out, *extra, keep=("0.2", "0.05"), finetune="10"):
    return ["bip", "--model", "mlp", "--dataset", f"npz:{npz}", "--steps", "30",
            "--eval-every", "10", "--batch-size", "32", "--keep", *keep,
            "--bip-steps", "20", "--finetune-steps", finetune, "--mask-lr", "1.0",
            *extra, "--out", str(out)]


@pytest.fixture(scope="module")
def reference(tiny_npz, tmp_path_factory):
    out = tmp_path_factory.mktemp("bip_ref") / "run"
    first = run_here(_args(tiny_npz, out, "--save-every", "10"))
    assert first.returncode == 0, first.stderr[-3000:]
    return out


def _np_accuracy(params, x, y):
    h = x.reshape(len(x), -1)
    layers = sorted(params)  # the mlp's Dense_0 .. and output
    order = [k for k in layers if k != "output"] + ["output"]
    for i, k in enumerate(order):
        h = h @ np.asarray(params[k]["kernel"]) + np.asarray(params[k]["bias"])
        if i < len(order) - 1:
            h = np.maximum(h, 0)
    return float(np.mean(np.argmax(h, -1) == y))


def test_lotto_bip_end_to_end(tiny_npz, reference):
    from lotto_jax.runs.store import RunStore

    out = reference
    res = json.loads((out / "results.json").read_text())
    store = RunStore(str(out))
    test = data_lib.load(f"npz:{tiny_npz}").test  # standardised as the run saw it
    assert [r["keep"] for r in res["keeps"]] == [0.2, 0.05]
    for row in res["keeps"]:
        name = f"k{row['keep']:g}"
        joint = store.restore(f"bip/{name}/final")["params"]
        mask = store.restore(f"export/{name}/mask")
        weights = store.restore(f"export/{name}/weights")
        kernels = [k for k in sorted(mask) if np.ndim(mask[k]["kernel"]) == 2]
        n = sum(np.size(mask[k]["kernel"]) for k in kernels)
        kept = sum(int(np.sum(mask[k]["kernel"])) for k in kernels)
        assert kept == np_round(row["keep"], n) and row["kept"] == kept
        flat = np.concatenate([np.abs(np.asarray(joint["scores"][k]["kernel"])).ravel()
                               for k in kernels])
        thr = np.sort(flat)[::-1][kept - 1]
        for k in kernels:  # the mask is the top-k of the stored scores
            s = np.abs(np.asarray(joint["scores"][k]["kernel"]))
            assert np.all(s[np.asarray(mask[k]["kernel"])] >= thr)
            np.testing.assert_array_equal(
                weights[k]["kernel"], np.asarray(joint["theta"][k]["kernel"]) * mask[k]["kernel"])
        acc = _np_accuracy(weights, np.asarray(test.x), np.asarray(test.y))
        assert acc == pytest.approx(row["final_test_accuracy"], abs=1e-6)
        assert row["steps"] == {"pretrain": 30, "bip": 20, "finetune": 10, "total": 60}
        assert row["finetune"]["final_test_accuracy"] is not None
    assert res["keeps"][1]["mask_changed"] > 0  # the search moved the mask
    again = run_here(_args(tiny_npz, out, "--save-every", "10"))
    assert again.returncode == 0 and "training from step" not in again.stderr
    assert json.loads((out / "results.json").read_text()) == res


def test_killed_mid_bip_resumes_to_the_same_run(tiny_npz, reference, tmp_path):
    """SIGKILLed right after keep 0.05's BiP checkpoint at step 10 (a subprocess),
    then rerun: it resumes there and every item is bit-equal to the reference."""
    out = tmp_path / "run"
    args = _args(tiny_npz, out, "--save-every", "10")
    assert_killed(lotto(args, cache_dir=tmp_path / "xla",
                        kill_after="bip/k0.05/checkpoints/step_00000010"))
    again = run_here(args)
    assert again.returncode == 0, again.stderr[-3000:]
    lines = engine_lines(again)
    assert "pretrain: finished, kept" in lines and "bip/k0.2: finished, kept" in lines
    assert "bip/k0.05: training from step 10" in lines
    assert_same_run(reference, out)


def test_replicates_train_each_seed_as_its_single_run(tiny_npz, reference, tmp_path):
    """--replicates 2: replicate 0 is the single run (same masks, same accuracy)."""
    out = tmp_path / "run"
    res = run_here(_args(tiny_npz, out, "--replicates", "2", keep=("0.2",), finetune="0"))
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["keeps"]
    single = json.loads((reference / "results.json").read_text())["keeps"]
    for r, s in zip(rows, single[:1], strict=True):
        assert len(r["final_test_accuracy"]) == 2
        assert r["final_test_accuracy"][0] == pytest.approx(s["final_test_accuracy"], abs=1e-6)
        assert r["kept"][0] == s["kept"]


BAD = [
    (["--keep", "0"], "--keep: expected fractions in (0, 1)"),
    (["--keep", "1.0"], "--keep: expected fractions in (0, 1)"),
    (["--keep", "0.1", "0.1"], "--keep: expected distinct fractions"),
    (["--bip-steps", "0"], "--bip-steps: expected an int >= 1"),
    (["--finetune-steps", "-1"], "--finetune-steps: expected an int >= 0"),
    (["--mask-lr", "0"], "--mask-lr: expected a number > 0"),
    (["--ig-scale", "-1"], "--ig-scale: expected a number >= 0"),
    (["--bip-momentum", "1"], "--bip-momentum: expected a value in [0, 1)"),
    (["--correction", "hessian"], "--correction: expected one of"),
    (["--pretrained", "/nonexistent/ckpt"], "--pretrained: no orbax checkpoint"),
    (["--batch-size", "1000"], "--batch-size: 1000 is larger than the training set"),
]


@pytest.mark.parametrize(("extra", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_naming_the_flag(tiny_npz, tmp_path, extra, message):
    out = tmp_path / "run"
    assert_one_line_error(run_here(_args(tiny_npz, out, *extra)), message)


def test_ls_and_report_read_a_bip_run(reference):
    """``lotto ls`` lists it as kind bip with the sparsest keep's best BiP accuracy;
    ``lotto report`` prints a row per keep with the numbers of results.json."""
    res = json.loads((reference / "results.json").read_text())
    ls = run_here(["ls", str(reference)])
    assert ls.returncode == 0, ls.stderr[-2000:]
    row = ls.stdout.splitlines()[1].split()
    best = res["keeps"][1]["best_test_accuracy"]
    assert row[1:3] == ["bip", "done"] and f"{100 * best:.2f}%" in ls.stdout
    rep = run_here(["report", str(reference)])
    assert rep.returncode == 0, rep.stderr[-2000:]
    for r in res["keeps"]:
        line = next(x for x in rep.stdout.splitlines() if x.startswith(f"{r['keep']:g} "))
        assert f"{100 * r['final_test_accuracy']:.2f}" in line
        assert f"{100 * r['start_test_accuracy']:.2f}" in line
    assert (reference / "figures" / "bip.png").exists()


def _truncate(d, item):
    path = d / item
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs
                   if os.path.basename(r) == "d")
    with open(files[0], "r+b") as f:
        f.truncate(3)


def test_repair_recomputes_damaged_items_as_the_undamaged_run(tiny_npz, reference, tmp_path):
    """A BiP network's final and an exported mask truncated: without ``--repair``
    one error line naming ``--repair``; with it the two are recomputed (the unit
    retrained, the export redone) and the run equals the reference, bit for bit."""
    d = tmp_path / "run"
    shutil.copytree(reference, d)
    shutil.rmtree(d / "figures", ignore_errors=True)
    _truncate(d, "bip/k0.2/final")
    _truncate(d, "export/k0.05/mask")
    args = _args(tiny_npz, d, "--save-every", "10")
    assert_one_line_error(run_here(args), "--repair")
    again = run_here([*args, "--repair"])
    assert again.returncode == 0, again.stderr[-3000:]
    lines = engine_lines(again)
    assert "bip/k0.2: training from step 0" in lines and "bip/k0.05: finished, kept" in lines
    assert_same_run(reference, d)


def test_pretrained_weights_give_the_same_bip_as_pretraining(tiny_npz, reference, tmp_path):
    """``--pretrained`` = the reference's pretrained network: no pretraining unit,
    0 pretraining steps, and every BiP network bit-equal to the reference's (same
    start, same data order)."""
    from lotto_jax.runs.store import RunStore

    out = tmp_path / "run"
    res = run_here(_args(tiny_npz, out, "--pretrained", reference / "pretrain" / "final",
                         keep=("0.2",), finetune="0"))
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads((out / "results.json").read_text())
    assert got["pretrain"] is None and not (out / "pretrain").exists()
    want = json.loads((reference / "results.json").read_text())
    for g, w in zip(got["keeps"], want["keeps"][:1], strict=True):
        assert g["steps"]["pretrain"] == 0 and g["steps"]["total"] == 20
        assert g["final_test_accuracy"] == w["final_test_accuracy"]
        name = f"k{g['keep']:g}"
        a, b = (RunStore(str(d)).restore(f"bip/{name}/final") for d in (out, reference))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(u, v)
