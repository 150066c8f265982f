"""Tests for lotto_jax.supermask against hand-worked cases and independent references.

Truths used: numpy stable sorts for top-k masks, gradients of a 2x2 linear layer with
squared loss written out by hand (and ``jax.grad`` with respect to ``W_eff`` taken
separately), ``sqrt(2 / fan_in)`` in float64 for the initialisers, sequential runs for
the vmapped one, the plain model run on the exported weights for the export, and
numpy forward passes on the checkpoints the driver wrote.
"""

import contextlib
import dataclasses
import io
import json
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from _numpy_ref import mlp_accuracy

from lotto_jax import data, masks, models, prune, scores, supermask, train
from lotto_jax.runs import supermask as supermask_run
from lotto_jax.runs.common import RunConfig
from lotto_jax.supermask import (
    bernoulli,
    edge_popup,
    export_mask,
    export_signs,
    export_weights,
    init_scores,
    init_state,
    init_weights,
    sample_mask,
    sign,
    topk_mask,
)


def _linear(params, model_state, x, train):
    del train
    return x @ params["w"], model_state


@pytest.fixture(scope="module")
def mnist1d():
    return data.load("mnist1d", seed=0, validation=0)


def _copy(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def _ones(tree):
    return jax.tree.map(lambda x: jnp.ones(jnp.shape(x), bool), tree)


def test_public_names():
    for name in supermask.__all__:
        assert hasattr(supermask, name), name


# --- top-k -------------------------------------------------------------------------


def test_topk_hand_worked_ties_and_rounding():
    # n = 6, keep 0.5 -> 3 kept: 3.0, 2.0 and, of the three 1.0s (flat 1, 2, 3), the
    # last one (flat index 3), the rule of prune.to_density.
    s = {"w": jnp.array([[3.0, 1.0, 1.0], [1.0, 0.0, 2.0]])}
    want = np.array([[True, False, False], [True, False, True]])
    np.testing.assert_array_equal(topk_mask(s, 0.5)["w"], want)
    # All equal: keep the last round(k n) positions.
    eq = {"w": jnp.ones((1, 5))}
    np.testing.assert_array_equal(topk_mask(eq, 0.4)["w"], [[0, 0, 0, 1, 1]])
    # Round half up: 0.5 * 3 = 1.5 -> 2; 0.1 * 5 = 0.5 -> 1; 0.3 * 5 = 1.5 -> 2.
    for keep, n, kept in [(0.5, 3, 2), (0.1, 5, 1), (0.3, 5, 2), (1.0, 7, 7), (0.05, 9, 0)]:
        m = topk_mask({"w": jnp.arange(n, dtype=jnp.float32).reshape(1, n)}, keep)["w"]
        assert int(m.sum()) == kept, (keep, n)
        np.testing.assert_array_equal(np.asarray(m)[0], np.arange(n) >= n - kept)
    # -0.0 ties with +0.0 (then by position).
    z = {"w": jnp.array([[0.0, -0.0, 0.0, -1.0]])}
    np.testing.assert_array_equal(topk_mask(z, 0.5)["w"], [[False, True, True, False]])


def _numpy_topk(v: np.ndarray, n_keep: int) -> np.ndarray:
    order = np.argsort(v.ravel(), kind="stable")
    out = np.zeros(v.size, bool)
    out[order[v.size - n_keep :]] = True
    return out.reshape(v.shape)


def test_topk_matches_numpy_and_prune():
    rng = np.random.default_rng(0)
    for trial in range(24):
        shape = ((5, 7), (1, 13))[trial % 2]
        v = rng.integers(-4, 5, shape).astype(np.float32) * float(rng.choice([1e-30, 1, 1e30]))
        if trial % 3 == 0:
            v = rng.normal(size=shape).astype(np.float32)
        keep = float(rng.uniform(0.01, 1.0))
        n_keep = math.floor(keep * v.size + 0.5)
        got = topk_mask({"w": jnp.asarray(v), "b": jnp.zeros(3)}, keep)
        np.testing.assert_array_equal(got["w"], _numpy_topk(v, n_keep))
        assert bool(got["b"].all())
        ref = prune.to_density(
            {"w": jnp.asarray(v)}, {"w": jnp.ones(shape, bool)}, keep, scope="layerwise"
        )
        np.testing.assert_array_equal(got["w"], ref["w"])


def test_topk_layer_keep_override_and_jit():
    s = {"a": jnp.arange(10.0).reshape(2, 5), "output": jnp.arange(4.0).reshape(2, 2)}
    m = jax.jit(lambda t: topk_mask(t, 0.5, layer_keep={"^output": 0.25}))(s)
    assert int(m["a"].sum()) == 5 and int(m["output"].sum()) == 1
    assert bool(m["output"][1, 1])


# --- gradients -----------------------------------------------------------------------


def _hand_case():
    x = jnp.array([[1.0, 2.0]])
    t = jnp.array([[0.5, -1.0]])
    w = jnp.array([[1.0, -2.0], [3.0, 0.5]])
    return x, t, w


def _loss(search, scores, state, x, t):
    y, _ = search(scores, state, x, True)
    return 0.5 * jnp.sum((y - t) ** 2)


@pytest.mark.parametrize("signs", [1.0, -1.0])
def test_edge_popup_gradient_is_straight_through(signs):
    x, t, w = _hand_case()
    s = signs * jnp.array([[0.9, 0.1], [0.2, 0.8]])  # |s| top-2: w[0,0] and w[1,1]
    search = edge_popup(_linear, keep=0.5)
    state = init_state({"w": w})
    g = jax.grad(_loss, argnums=1)(search, {"w": s}, state, x, t)["w"]
    # By hand: W_eff = [[1, 0], [0, 0.5]], y = x W_eff = [1, 1], r = y - t = [0.5, 2],
    # dL/dW_eff = x^T r = [[0.5, 2], [1, 4]], dL/dM = dL/dW_eff * W.
    dl_dweff = np.array([[0.5, 2.0], [1.0, 4.0]])
    # jax.grad with respect to W_eff, taken separately, agrees with the hand value.
    weff = jnp.array([[1.0, 0.0], [0.0, 0.5]])
    np.testing.assert_allclose(
        jax.grad(lambda m: 0.5 * jnp.sum((x @ m - t) ** 2))(weff), dl_dweff
    )
    dl_dm = dl_dweff * np.asarray(w)
    np.testing.assert_array_equal(g, signs * dl_dm)  # "abs": d|s|/ds = sign(s)
    g_signed = jax.grad(_loss, argnums=1)(
        edge_popup(_linear, keep=0.5, rank="signed"), {"w": jnp.abs(s)}, state, x, t
    )["w"]
    np.testing.assert_array_equal(g_signed, dl_dm)


def test_bernoulli_and_sign_gradients():
    x, t, w = _hand_case()
    s = jnp.array([[0.3, -0.2], [1.5, -2.0]])
    state = init_state({"w": w}, key=jax.random.key(7), count=3)
    search = bernoulli(_linear)
    m = np.asarray(sample_mask({"w": s}, key=jax.random.fold_in(jax.random.key(7), 3))["w"])
    g = jax.grad(_loss, argnums=1)(search, {"w": s}, state, x, t)["w"]
    weff = np.asarray(w) * m
    r = np.asarray(x) @ weff - np.asarray(t)
    sig = 1 / (1 + np.exp(-np.asarray(s, np.float64)))
    want = (np.asarray(x).T @ r) * np.asarray(w) * sig * (1 - sig)
    np.testing.assert_allclose(g, want, rtol=1e-6)
    # Sign: W_eff = (W * M) * sign(s); dL/ds = dL/dW_eff * W * M.
    fixed = jnp.array([[True, False], [True, True]])
    st = init_state({"w": w}, mask={"w": fixed})
    g = jax.grad(_loss, argnums=1)(sign(_linear), {"w": s}, st, x, t)["w"]
    sg = np.where(np.asarray(s) >= 0, 1.0, -1.0)
    weff = np.asarray(w) * np.asarray(fixed) * sg
    r = np.asarray(x) @ weff - np.asarray(t)
    np.testing.assert_allclose(g, (np.asarray(x).T @ r) * np.asarray(w) * fixed, rtol=1e-6)


# --- initialisers ----------------------------------------------------------------------


def test_signed_constant_values_are_exact():
    params = {
        "conv": {"kernel": jnp.zeros((3, 3, 4, 8)), "bias": jnp.full((8,), 0.3)},
        "bn": {"scale": jnp.full((8,), 0.7), "bias": jnp.full((8,), 0.2)},
        "output": {"kernel": jnp.zeros((20, 10))},
    }
    key = jax.random.key(0)
    w = init_weights(params, key=key, method="signed-constant")
    for name, fan in (("conv", 36), ("output", 20)):
        k = np.asarray(w[name]["kernel"])
        sigma = np.float32(np.sqrt(2.0 / fan))
        assert set(np.unique(k).tolist()) == {-sigma, sigma}
        assert 0.3 < (k > 0).mean() < 0.7
    # The paper's bias-free layers and non-affine normalisation.
    assert float(jnp.abs(w["conv"]["bias"]).max()) == 0.0
    assert bool((w["bn"]["scale"] == 1).all()) and bool((w["bn"]["bias"] == 0).all())
    # Scaled: sigma / sqrt(k) = sqrt(2 / (k fan_in)), k per layer; same signs.
    sc = init_weights(
        params, key=key, method="scaled_signed_constant", keep=0.25,
        layer_keep={"output": 0.5},
    )
    for name, fan, k in (("conv", 36, 0.25), ("output", 20, 0.5)):
        sigma = np.float32(np.sqrt(2.0 / (k * fan)))
        np.testing.assert_array_equal(np.abs(sc[name]["kernel"]), sigma)
        np.testing.assert_array_equal(np.sign(sc[name]["kernel"]), np.sign(w[name]["kernel"]))
    kn = init_weights({"k": jnp.zeros((400, 500))}, key=key, method="kaiming-normal")
    assert abs(float(kn["k"].std()) / math.sqrt(2 / 400) - 1) < 0.01
    # Scores: U(+-1/sqrt(fan_in)) on kernels, zeros elsewhere; magnitude = |W|.
    s = init_scores(params, key=key)
    b = 1 / math.sqrt(36)
    assert float(jnp.abs(s["conv"]["kernel"]).max()) <= b
    assert float(jnp.abs(s["conv"]["kernel"]).max()) > 0.9 * b
    assert float(jnp.abs(s["bn"]["scale"]).max()) == 0.0
    np.testing.assert_array_equal(
        init_scores(w, method="magnitude")["output"]["kernel"], np.abs(w["output"]["kernel"])
    )


# --- export ------------------------------------------------------------------------


def _mlp(features=(32,), name="mlp"):
    """The model's apply function and params with distinct non-zero values.

    The values are deterministic ramps rather than a random init: the search
    re-draws the kernels anyway, and this skips compiling the model's initialiser.
    """
    kw = {"hidden": features[0]} if name == "mnist1d_mlp" else {"features": features}
    module = models.build(name, **kw)
    shapes = jax.eval_shape(lambda: models.init(module, jax.random.key(0), (40,)))
    params = jax.tree.map(
        lambda a: jnp.linspace(-0.5, 0.7, math.prod(a.shape), dtype=a.dtype).reshape(a.shape),
        shapes["params"],
    )
    return train.classifier(module), params


def test_export_reproduces_the_forward_pass():
    # The residual MNIST-1D MLP: non-zero (PyTorch-uniform) biases.
    apply_fn, params = _mlp((32,), name="mnist1d_mlp")
    w = init_weights(params, key=jax.random.key(1), other="keep")
    s = init_scores(w, key=jax.random.key(2))
    x = jax.random.normal(jax.random.key(3), (16, 40))

    def check(search, state, train_, key=None):
        @jax.jit
        def run(s, st, k):
            logits, _ = search(s, st, x, train_)
            found = export_weights(search, s, st, key=k)
            return logits, apply_fn(found, {}, x, False)[0], found

        logits, plain, found = run(s, state, key)
        np.testing.assert_array_equal(logits, plain)
        return found

    ep = edge_popup(apply_fn, keep=0.3)
    found = check(ep, init_state(w), True)
    mask = export_mask(ep, s, init_state(w))
    sizes = (40 * 32, 32 * 32, 32 * 10)
    kept = sum(math.floor(0.3 * n + 0.5) for n in sizes)
    assert masks.density(mask) == kept / sum(sizes)
    # other="keep": the model's (non-zero) biases are kept, frozen and unmasked.
    assert float(jnp.abs(params["Dense_0"]["bias"]).max()) > 0
    np.testing.assert_array_equal(found["Dense_0"]["bias"], params["Dense_0"]["bias"])
    st = init_state(w, key=jax.random.key(5), count=11)
    check(bernoulli(apply_fn), st, True, key=jax.random.fold_in(jax.random.key(5), 11))
    check(bernoulli(apply_fn, evaluation="threshold"), st, False)
    fixed = prune.to_density(scores.random(w, key=jax.random.key(6)), masks.init(w), 0.5,
                             scope="layerwise")
    sst = init_state(w, mask=fixed)
    check(sign(apply_fn), sst, True)
    signs = export_signs(sign(apply_fn), s, sst)
    assert set(np.unique(signs["Dense_1"]["kernel"]).tolist()) == {-1.0, 1.0}
    assert bool((signs["Dense_1"]["bias"] == 1).all())
    # The "Lottery Jackpots" start: magnitude scores give the magnitude-pruned mask.
    mag = init_scores(params, method="magnitude")
    ref = prune.to_density(scores.magnitude(params), masks.init(params), 0.3,
                           scope="layerwise")
    for a, b in zip(jax.tree.leaves(export_mask(ep, mag, init_state(params))),
                    jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(a, b)


def test_one_trace_for_new_scores_and_weights():
    apply_fn, params = _mlp()
    traces = []

    def counted(p, ms, x, t):
        traces.append(1)
        return apply_fn(p, ms, x, t)

    f = jax.jit(edge_popup(counted, keep=0.5), static_argnums=3)
    x = jnp.ones((2, 40))
    for seed in range(3):
        w = init_weights(params, key=jax.random.key(seed))
        f(init_scores(w, key=jax.random.key(seed + 10)), init_state(w), x, True)
    assert len(traces) == 1


# --- training ----------------------------------------------------------------------


def _search_and_state(method, apply_fn, w, seed=0):
    if method == "edge-popup":
        return edge_popup(apply_fn, keep=0.5), init_state(w)
    if method == "bernoulli":
        return bernoulli(apply_fn), init_state(w, key=jax.random.key(seed))
    fixed = prune.to_density(scores.random(w, key=jax.random.key(seed)), masks.init(w), 0.5,
                             scope="layerwise")
    return sign(apply_fn), init_state(w, mask=fixed)


def _assert_only_scores_changed(w0, s0, final):
    for a, b in zip(jax.tree.leaves(w0), jax.tree.leaves(final.model_state.weights),
                    strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)  # bit-identical
    kernel_changed = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(s0), jax.tree.leaves(final.params), strict=True)
        if a.ndim >= 2
    ]
    assert kernel_changed and all(kernel_changed)


@pytest.mark.parametrize("method", ["bernoulli", "sign"])  # edge-popup: next test
def test_fit_trains_scores_only(method, mnist1d):
    apply_fn, params = _mlp()
    w = init_weights(params, key=jax.random.key(1), other="keep")
    s = init_scores(w, key=jax.random.key(2))
    w0, s0 = _copy(w), _copy(s)
    search, state = _search_and_state(method, apply_fn, w)
    config = supermask.default_train_config(method, steps=12, eval_every=6)
    trainer = train.make_trainer(search, config, num_train=mnist1d.train.x.shape[0])
    final, result = train.fit(
        trainer, trainer.init(s, state), _ones(s), mnist1d, data_key=jax.random.key(0),
    )
    _assert_only_scores_changed(w0, s0, final)
    assert int(final.model_state.count) == 12
    assert [r.step for r in result.curve] == [0, 6, 12]


def test_edge_popup_beats_chance_on_mnist1d(mnist1d):
    apply_fn, params = _mlp((256,), name="mnist1d_mlp")
    w = init_weights(params, key=jax.random.key(1))
    s = init_scores(w, key=jax.random.key(2))
    w0, s0 = _copy(w), _copy(s)
    search = edge_popup(apply_fn, keep=0.5)
    config = supermask.default_train_config("edge-popup", steps=250, eval_every=250)
    trainer = train.make_trainer(search, config, num_train=mnist1d.train.x.shape[0])
    final, result = train.fit(
        trainer, trainer.init(s, init_state(w)), _ones(s), mnist1d,
        data_key=jax.random.key(0),
    )
    _assert_only_scores_changed(w0, s0, final)
    assert result.curve[0].test_accuracy < 0.2
    assert result.final_test_accuracy > 0.35  # chance is 0.1


def test_vmap_over_seeds_equals_sequential(mnist1d):
    apply_fn, params = _mlp((48,))
    search = edge_popup(apply_fn, keep=0.5)
    config = supermask.default_train_config("edge-popup", steps=10, eval_every=10)
    trainer = train.make_trainer(search, config, num_train=mnist1d.train.x.shape[0])
    starts, sequential = [], []
    for seed in (0, 1):
        w = init_weights(params, key=jax.random.key(seed))
        s = init_scores(w, key=jax.random.key(seed + 100))
        starts.append((s, init_state(w)))
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), *starts)
    data_keys = jnp.stack([jax.random.key(0), jax.random.key(1)])
    for i, (s, st) in enumerate(starts):
        st_copy = jax.tree.map(jnp.copy, st)
        final, _ = train.fit(
            trainer, trainer.init(jax.tree.map(jnp.copy, s), st_copy), _ones(s), mnist1d,
            data_key=data_keys[i],
        )
        sequential.append(final)
    vstate = jax.vmap(trainer.init)(*stacked)
    vfinal, vresult = train.fit(
        trainer, vstate, jax.tree.map(lambda s: jnp.ones(s.shape, bool), stacked[0]),
        mnist1d, data_key=data_keys, replicates=True,
    )
    for i, final in enumerate(sequential):
        for a, b in zip(jax.tree.leaves(final.params), jax.tree.leaves(vfinal.params),
                        strict=True):
            np.testing.assert_allclose(a, b[i], rtol=1e-5, atol=1e-6)
        pick = jax.tree.map(lambda v, i=i: v[i], (vfinal.params, vfinal.model_state))
        for a, b in zip(jax.tree.leaves(export_mask(search, *pick)),
                        jax.tree.leaves(export_mask(search, final.params, final.model_state)),
                        strict=True):
            np.testing.assert_array_equal(a, b)
    assert np.shape(vresult.final_test_accuracy) == (2,)


# --- bad input ---------------------------------------------------------------------


def test_bad_inputs_name_the_argument():
    w = {"w": jnp.ones((2, 3))}
    for keep in (0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="keep"):
            edge_popup(_linear, keep=keep)
        with pytest.raises(ValueError, match="keep"):
            supermask_run.SupermaskConfig(keep=keep)
    with pytest.raises(ValueError, match="method"):
        supermask_run.SupermaskConfig(method="prune-everything")
    with pytest.raises(ValueError, match="method"):
        supermask.Supermask("nope", _linear)
    with pytest.raises(ValueError, match="weight_init"):
        supermask_run.SupermaskConfig(weight_init="xavier")
    with pytest.raises(ValueError, match="method"):
        init_weights(w, key=jax.random.key(0), method="xavier")
    with pytest.raises(ValueError, match="score_init"):
        supermask_run.SupermaskConfig(score_init="zeros")
    with pytest.raises(ValueError, match="sign_mask"):
        supermask_run.SupermaskConfig(method="sign", sign_mask="magnitude")
    with pytest.raises(ValueError, match="sign_mask: expected one of"):
        supermask_run.SupermaskConfig(method="sign", sign_mask="largest")
    with pytest.raises(ValueError, match="save_every: expected a positive int"):
        supermask_run.SupermaskConfig(save_every=0)
    with pytest.raises(ValueError, match="save_interval: expected seconds >= 0"):
        supermask_run.SupermaskConfig(save_interval=-1.0)
    with pytest.raises(ValueError, match=r"layer_keep\['w'\]: expected a fraction kept"):
        topk_mask(w, 0.5, layer_keep={"w": 2.0})
    with pytest.raises(ValueError, match="layer_keep: pattern 'nothing'"):
        topk_mask(w, 0.5, layer_keep={"nothing": 0.5})
    x = jnp.ones((1, 2))
    with pytest.raises(ValueError, match=r"state.mask\['w'\]: shape \(3, 2\)"):
        sign(_linear)({"w": jnp.ones((2, 3))}, init_state(w).replace(
            mask={"w": jnp.ones((3, 2), bool)}), x, True)
    with pytest.raises(ValueError, match=r"mask\['w'\]: shape \(3, 2\)"):
        init_state(w, mask={"w": jnp.ones((3, 2), bool)})
    with pytest.raises(ValueError, match="mask: tree structure"):
        init_state(w, mask={"v": jnp.ones((2, 3), bool)})
    with pytest.raises(ValueError, match=r"state\.mask: the sign method needs"):
        sign(_linear)(w, init_state(w), x, True)
    with pytest.raises(ValueError, match=r"state\.key"):
        bernoulli(_linear)(w, init_state(w), x, True)
    with pytest.raises(ValueError, match=r"scores\['w'\]: shape \(3, 2\)"):
        edge_popup(_linear)({"w": jnp.ones((3, 2))}, init_state(w), x, True)
    with pytest.raises(ValueError, match="key: only the bernoulli"):
        export_mask(edge_popup(_linear), w, init_state(w), key=jax.random.key(0))


# --- the driver --------------------------------------------------------------------


def _config(tmp_path, method, **kw):
    run = RunConfig(
        model="mlp",
        train=supermask.default_train_config(method, steps=20, eval_every=10),
    )
    return supermask_run.SupermaskConfig(run=run, method=method, out=str(tmp_path / method), **kw)


@pytest.fixture(scope="module")
def edge_popup_seed1(tmp_path_factory):
    """``(config, results, what it printed)`` of one edge-popup search (keep 0.3)
    with seed 1 and data seed 1: the single run that replicate 1 of a
    2-replicate search equals."""
    config = _config(tmp_path_factory.mktemp("single"), "edge-popup", keep=0.3)
    config = dataclasses.replace(
        config, run=dataclasses.replace(config.run, seed=1, data_seed=1))
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        results = supermask_run.main(config)
    return config, results, printed.getvalue()


def test_main_edge_popup_writes_results(edge_popup_seed1, mnist1d):
    """Truths: the exported mask and frozen weights restored with plain orbax from
    the run's ``export/`` items; the density counted from the mask; the exported
    accuracy re-computed by a numpy forward pass on weights ⊙ mask (tolerance: one
    test example in 1000, a float32/float64 near-tie of two logits); the curve's
    evaluation steps (0, 10, 20)."""
    config, results, printed = edge_popup_seed1
    out = pathlib.Path(config.out)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert results["layer_density"] == {
        "Dense_0/kernel": 1200 / 4000, "Dense_1/kernel": 0.3, "output/kernel": 0.3
    }
    assert results["exported_test_accuracy"] == results["final_test_accuracy"]
    assert set(results["baselines"]) == {"all_ones", "shuffled"}
    search = json.loads((out / "search" / "metrics.json").read_text())
    assert [r["step"] for r in search["curve"]] == [0, 10, 20]
    assert search["curve"][-1]["test_accuracy"] == results["final_test_accuracy"]
    assert search["curve"][0]["test_accuracy"] == results["initial_test_accuracy"]
    ckptr = ocp.StandardCheckpointer()
    mask = ckptr.restore(str(out / "export" / "mask"))
    weights = ckptr.restore(str(out / "export" / "weights"))
    kernels = [np.asarray(mask[k]["kernel"]) for k in ("Dense_0", "Dense_1", "output")]
    assert results["density"] == pytest.approx(
        sum(int(m.sum()) for m in kernels) / sum(m.size for m in kernels))
    assert all(np.all(mask[k]["bias"]) for k in mask)
    # The stored ticket alone reproduces the reported accuracy.
    ticket = jax.tree.map(lambda w, m: np.where(m, w, 0), weights, mask)
    assert mlp_accuracy(ticket, mnist1d.test) == pytest.approx(
        results["exported_test_accuracy"], abs=1e-3 + 1e-9)
    assert "supermask search" in printed


def test_main_replicates_equal_single_runs(tmp_path, edge_popup_seed1):
    """--replicates 2: replicate 1 is the single run with seed 1 and data seed 1."""
    both = _config(tmp_path, "edge-popup", keep=0.3)
    both = dataclasses.replace(both, run=dataclasses.replace(both.run, replicates=2))
    rep = supermask_run.main(both)
    _, one, _ = edge_popup_seed1
    assert rep["replicates"] == 2 and len(rep["final_test_accuracy"]) == 2
    assert rep["final_test_accuracy"][1] == pytest.approx(one["final_test_accuracy"], abs=1e-6)
    mask = ocp.StandardCheckpointer().restore(str(tmp_path / "edge-popup" / "export" / "mask"))
    assert mask["Dense_0"]["kernel"].shape == (2, 40, 100)  # stacked replicate masks




def test_main_bernoulli(tmp_path, mnist1d):
    """Truths: the mask, scores and weights restored with plain orbax; the exported
    mask is ``scores > 0`` (``sigmoid(s) > 0.5``) on kernels and all-True on biases;
    the reported threshold accuracy re-computed by a numpy forward pass on weights ⊙
    mask, the reported expected (final) accuracy on weights ⊙ sigmoid(scores).
    Tolerance: one test example in 1000 (a float32/float64 near-tie of two logits)."""
    results = supermask_run.main(_config(tmp_path, "bernoulli", eval_samples=2))
    out = tmp_path / "bernoulli" / "export"
    ckptr = ocp.StandardCheckpointer()
    mask, found, weights = (ckptr.restore(str(out / k)) for k in ("mask", "scores", "weights"))
    n_kept = n_total = 0
    for layer in weights:
        np.testing.assert_array_equal(mask[layer]["kernel"], found[layer]["kernel"] > 0)
        assert np.all(mask[layer]["bias"])
        n_kept += int(mask[layer]["kernel"].sum())
        n_total += mask[layer]["kernel"].size
    assert results["density"] == pytest.approx(n_kept / n_total)
    test = mnist1d.test
    threshold = jax.tree.map(lambda w, m: np.where(m, w, 0), weights, mask)
    expected = {k: {"kernel": v["kernel"] / (1 + np.exp(-np.asarray(found[k]["kernel"],
                                                                    np.float64))),
                    "bias": v["bias"]} for k, v in weights.items()}
    one_example = 1e-3 + 1e-9
    assert mlp_accuracy(threshold, test) == pytest.approx(
        results["threshold_test_accuracy"], abs=one_example)
    assert mlp_accuracy(expected, test) == pytest.approx(
        results["expected_test_accuracy"], abs=one_example)
    assert results["expected_test_accuracy"] == results["final_test_accuracy"]
    assert results["threshold_test_accuracy"] == results["exported_test_accuracy"]
    assert len(results["sampled_test_accuracies"]) == 2
    assert all(0.0 <= a <= 1.0 for a in results["sampled_test_accuracies"])
    assert results["sampled_test_accuracy"] == pytest.approx(
        np.mean(results["sampled_test_accuracies"]))


def test_main_sign_on_pretrained_weights(tmp_path, mnist1d):
    module = models.build("mlp")
    params = init_weights(_mlp((100, 100))[1], key=jax.random.key(3),
                          method="kaiming-normal", other="keep")
    path = os.path.abspath(tmp_path / "pretrained")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, {"params": params, "step": jnp.asarray(5)})
    ckptr.wait_until_finished()
    loaded = supermask_run.load_params(path, params)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="pretrained"):
        supermask_run.load_params(path, {"Dense_0": params["Dense_0"]})
    config = _config(tmp_path, "sign", pretrained=path, sign_mask="magnitude")
    results = supermask_run.main(config)
    assert results["score_init"] == "magnitude" and results["weight_init"] is None
    # Magnitude scores start the sign search at the pretrained network itself.
    test = mnist1d.test
    start = masks.apply(params, prune.to_density(
        scores.magnitude(params), masks.init(params), 0.5, scope="layerwise"))
    logits = jax.jit(module.apply)({"params": start}, jnp.asarray(test.x))
    module_acc = jnp.mean(jnp.argmax(logits, -1) == test.y)
    assert results["initial_test_accuracy"] == pytest.approx(float(module_acc), abs=1e-6)
    out = tmp_path / "sign" / "export"
    stored = ocp.StandardCheckpointer().restore(str(out / "weights"))
    for a, b in zip(jax.tree.leaves(stored), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)  # biases kept too, weights untouched
    signs = ocp.StandardCheckpointer().restore(str(out / "signs"))
    assert set(np.unique(signs["Dense_0"]["kernel"]).tolist()) <= {-1.0, 1.0}
    assert results["density"] == 0.5
