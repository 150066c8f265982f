"""Tests for the pruning-at-init scores of lotto_jax.scores: SNIP, GraSP, SynFlow.

Independent truths: central finite differences in float64 (SNIP, w.r.t. the weights
and w.r.t. a multiplicative mask variable), the dense Hessian of a tiny net formed
with ``jax.hessian`` on the flattened params (GraSP), numpy closed forms of SynFlow
on linear chains, and Tanaka et al.'s conservation laws.
"""

import itertools
import math

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from lotto_jax import masks, pai, scores

# ----------------------------------------------------------------------------------
# a tiny smooth classifier (tanh: finite differences are accurate)


# Arrays are drawn with numpy: eager JAX ops each compile on first use, which costs
# seconds on a loaded machine; the score functions run under jax.jit.


def tiny_params(seed, dtype=np.float32, sizes=(3, 4, 2)):
    r = np.random.default_rng(seed)
    n = lambda *shape: jnp.asarray(r.standard_normal(shape).astype(dtype))  # noqa: E731
    return {
        "l1": {"kernel": n(*sizes[:2]), "bias": 0.1 * n(sizes[1])},
        "l2": {"kernel": n(*sizes[1:]), "bias": 0.1 * n(sizes[2])},
    }


def tiny_logits(p, x):
    h = jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"][None])
    return h @ p["l2"]["kernel"] + p["l2"]["bias"][None]


def tiny_batches(seed, dtype=np.float32, n_batches=2, size=5, d=3, classes=2):
    r = np.random.default_rng(seed)
    return [(jnp.asarray(r.standard_normal((size, d)).astype(dtype)),
             jnp.asarray(r.integers(0, classes, size).astype(np.int32)))
            for _ in range(n_batches)]


def ones_mask(params):
    return jax.tree.map(lambda p: np.ones(p.shape, bool), params)


def partial_mask(params):
    m = ones_mask(params)
    m["l1"]["kernel"][0, 1] = m["l1"]["kernel"][2, 3] = False
    m["l2"]["kernel"][1, 0] = False
    return jax.tree.map(jnp.asarray, m)


def central_diff(f, flat, eps):
    """Central finite differences of scalar ``f`` at numpy vector ``flat``."""
    out = np.zeros_like(flat)
    for i in range(flat.size):
        e = np.zeros_like(flat)
        e[i] = eps
        out[i] = (float(f(flat + e)) - float(f(flat - e))) / (2 * eps)
    return out


# ----------------------------------------------------------------------------------
# SNIP


def test_snip_equals_finite_difference_sensitivity_in_float64():
    # tolerance: central differences with eps 1e-6 in float64: error ~1e-9 here.
    with jax.enable_x64(True):
        params = tiny_params(0, np.float64)
        batches = tiny_batches(1, np.float64)
        mask = partial_mask(params)
        loss_fn = scores.cross_entropy(tiny_logits)
        got = jax.jit(lambda p, m, b: scores.snip(loss_fn, p, m, b))(params, mask, batches)

        flat, unravel = ravel_pytree(params)
        flat_m = np.asarray(ravel_pytree(jax.tree.map(np.float64, mask))[0])
        flat = np.asarray(flat)

        @jax.jit
        def mean_loss(a, b):  # the mean loss at params a * b (elementwise, flat)
            p = unravel(a * b)
            return sum(loss_fn(p, batch) for batch in batches) / len(batches)

        # g = ∇θ L(θ ⊙ m) by finite differences on θ
        g = central_diff(lambda t: mean_loss(t, flat_m), flat, 1e-6)
        # ∂L/∂m at m = mask by finite differences on a multiplicative mask variable
        dm = central_diff(lambda v: mean_loss(flat, v), flat_m, 1e-6)
        got_flat = np.asarray(ravel_pytree(got)[0])
        kept = flat_m == 1
        np.testing.assert_allclose(got_flat[kept], np.abs(g * flat)[kept], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(got_flat, np.abs(dm), rtol=1e-6, atol=1e-9)
        assert np.all(g[~kept] == 0)          # the masked net ignores pruned θ ...
        assert np.all(got_flat[~kept] > 0)    # ... but |∂L/∂m| does not vanish there
        # and jax.grad w.r.t. the mask variable agrees too
        dm_ad = jax.jit(jax.grad(mean_loss, argnums=1))(flat, flat_m)
        np.testing.assert_allclose(got_flat, np.abs(np.asarray(dm_ad)), rtol=1e-10)


def test_snip_averages_batches_before_the_absolute_value():
    params = {"w": jnp.array([[2.0, -3.0]])}
    loss = lambda p, b: jnp.sum(p["w"] * b[0])  # noqa: E731  ∇w L = x
    batches = [(jnp.array([[1.0, 1.0]]),), (jnp.array([[-1.0, 1.0]]),)]
    # mean gradient (0, 1): |g ⊙ θ| = (0, 3); summing |.| per batch would give (2, 3)
    np.testing.assert_array_equal(scores.snip(loss, params, None, batches)["w"], [[0.0, 3.0]])


def test_snip_jitted_with_traced_mask_and_batches_compiles_once():
    traces = []

    def logits(p, x):
        traces.append(1)
        return tiny_logits(p, x)

    params = tiny_params(0)
    loss_fn = scores.cross_entropy(logits)
    f = jax.jit(lambda m, b: scores.snip(loss_fn, params, m, b))
    mask = partial_mask(params)
    a = f(mask, tiny_batches(1))
    b = f(ones_mask(params), tiny_batches(2))
    assert len(traces) == 2  # one trace (two batches -> two calls of logits)
    assert float(a["l1"]["kernel"][0, 1]) != float(b["l1"]["kernel"][0, 1])


def test_sample_batches_sizes_and_balance():
    x = np.arange(300, dtype=np.float32).reshape(100, 3)
    y = np.arange(100) % 5
    b = scores.sample_batches(x, y, key=jax.random.key(0), num_classes=5, per_class=3,
                              batch_size=4)
    assert [len(yb) for _, yb in b] == [4, 4, 4, 3]
    ys = np.concatenate([np.asarray(yb) for _, yb in b])
    xs = np.concatenate([np.asarray(xb) for xb, _ in b])
    assert len(set(xs[:, 0].tolist())) == 15  # no example drawn twice
    np.testing.assert_array_equal(y[(xs[:, 0] / 3).astype(int)], ys)  # labels follow x
    bal = scores.sample_batches(x, y, key=jax.random.key(0), num_classes=5, per_class=3,
                                balanced=True)
    np.testing.assert_array_equal(np.bincount(np.asarray(bal[0][1]), minlength=5), [3] * 5)
    with pytest.raises(ValueError, match="per_class"):
        scores.sample_batches(x, y, key=jax.random.key(0), num_classes=5, per_class=30)


# ----------------------------------------------------------------------------------
# GraSP


@pytest.mark.parametrize("prunable", ["all", "kernels"])
def test_grasp_matches_dense_hessian_in_float64(prunable):
    # tolerance: both sides are exact float64 autodiff: 1e-9 relative.
    T = 7.0
    with jax.enable_x64(True):
        params = tiny_params(2, np.float64)
        batches = tiny_batches(3, np.float64)
        mask = partial_mask(params)
        loss_fn = scores.cross_entropy(tiny_logits)
        pred = masks.all_leaves if prunable == "all" else masks.default_prunable
        run = jax.jit(lambda t: scores.grasp(loss_fn, params, mask, batches,
                                             temperature=t, prunable=pred))
        got = run(T)

        selected = params if prunable == "all" else {k: {"kernel": v["kernel"]}
                                                     for k, v in params.items()}
        flat, unravel = ravel_pytree(selected)

        def f(vec):
            sel = unravel(vec)
            full = {k: {"kernel": sel[k]["kernel"],
                        "bias": sel[k]["bias"] if prunable == "all" else params[k]["bias"]}
                    for k in params}
            full = masks.apply(full, mask)
            return sum(loss_fn(full, b, temperature=T) for b in batches) / len(batches)

        H = np.asarray(jax.jit(jax.hessian(f))(flat))
        g = np.asarray(jax.jit(jax.grad(f))(flat))
        assert H.shape == (flat.size, flat.size)
        expected = unravel(jnp.asarray(np.asarray(flat) * (H @ g)))
        for k in params:
            np.testing.assert_allclose(got[k]["kernel"], expected[k]["kernel"],
                                       rtol=1e-9, atol=1e-14)
            want_bias = expected[k]["bias"] if prunable == "all" else np.zeros(
                params[k]["bias"].shape)
            np.testing.assert_allclose(got[k]["bias"], want_bias, rtol=1e-9, atol=1e-14)
        # pruned weights: Hg of the masked network is 0 there
        assert float(got["l1"]["kernel"][0, 1]) == 0.0
        # the temperature matters (a wrong or ignored T would not match above)
        other = run(1.0)
        assert not np.allclose(other["l1"]["kernel"], got["l1"]["kernel"])


def test_grasp_keeps_the_papers_set():
    """Paper: remove the highest S(-θ) = -θ ⊙ Hg; ours keeps the highest θ ⊙ Hg."""
    params = tiny_params(4, sizes=(6, 8, 3))
    batches = tiny_batches(5, d=6, classes=3)
    loss_fn = scores.cross_entropy(tiny_logits)
    s = jax.jit(lambda p: scores.grasp(loss_fn, p, None, batches))(params)
    kernels = ["l1", "l2"]
    # S(-θ) = -θ ⊙ Hg = -(our score); θ ⊙ Hg itself is checked against H above
    paper = -np.concatenate([np.asarray(s[k]["kernel"]).ravel() for k in kernels])
    n = paper.size
    keep = round(0.3 * n)
    removed = np.argsort(-paper, kind="stable")[: n - keep]  # highest S(-θ) removed
    expected = np.ones(n, bool)
    expected[removed] = False
    mask = pai.prune_at_init("grasp", params=params, density=0.3,
                             loss_fn=loss_fn, batches=batches)
    got = np.concatenate([np.asarray(mask[k]["kernel"]).ravel() for k in kernels])
    np.testing.assert_array_equal(got, expected)
    assert np.any(np.asarray(s["l1"]["kernel"]) < 0)  # signed: no absolute value


def test_grasp_never_forms_a_dense_hessian():
    """Every intermediate of the jitted computation is O(parameters), not O(N²)."""
    params = tiny_params(0, sizes=(20, 40, 10))
    batches = tiny_batches(1, d=20, classes=10)
    n = sum(x.size for x in jax.tree.leaves(params))
    loss_fn = scores.cross_entropy(tiny_logits)
    jaxpr = jax.make_jaxpr(lambda p: scores.grasp(loss_fn, p, None, batches))(params)

    def sizes(jx):
        for eqn in jx.eqns:
            for v in eqn.outvars:
                yield math.prod(getattr(v.aval, "shape", ()))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from sizes(sub)

    assert max(sizes(jaxpr.jaxpr)) < n * 10 < n * n


# ----------------------------------------------------------------------------------
# SynFlow


def chain_params(seed, dims, scale=1.0):
    r = np.random.default_rng(seed)
    return {f"W{i}": jnp.asarray((scale * r.standard_normal((a, b))).astype(np.float32))
            for i, (a, b) in enumerate(itertools.pairwise(dims))}


def chain_apply(relu):
    def apply(p, state, x):
        for i in range(len(p)):
            x = x @ p[f"W{i}"]
            if relu and i < len(p) - 1:
                x = jax.nn.relu(x)
        return x
    return apply


def chain_closed_form(params, mask):
    """numpy, float64: R = 1ᵀ A1 A2 ... 1 with A = |W| ⊙ m and
    S_l = A_l ⊙ (1ᵀ A1 ... A_{l-1})ᵀ (A_{l+1} ... 1)ᵀ."""
    A = [np.abs(np.asarray(params[f"W{i}"], np.float64)) * np.asarray(mask[f"W{i}"])
         for i in range(len(params))]
    out = {}
    for i, a in enumerate(A):
        left = np.ones(A[0].shape[0])
        for b in A[:i]:
            left = left @ b
        right = np.ones(A[-1].shape[1])
        for b in reversed(A[i + 1:]):
            right = b @ right
        out[f"W{i}"] = a * np.outer(left, right)
    v = np.ones(A[0].shape[0])
    for a in A:
        v = v @ a
    return out, float(v.sum())


def synflow_jit(apply_fn, input_shape, **kw):
    return jax.jit(lambda p, m, s=None: scores.synflow_scores(
        apply_fn, p, m, input_shape, model_state=s, **kw))


@pytest.mark.parametrize("relu", [False, True])
def test_synflow_matches_closed_form_and_conserves_on_a_chain(relu):
    # ReLU changes nothing: with |W| and a ones input every pre-activation is >= 0.
    # tolerance: float32 products of 3 layers, 1e-5 relative.
    params = chain_params(0, (5, 4, 3, 2))
    mask = ones_mask(params)
    mask["W1"][0, 0] = mask["W1"][3, 2] = False
    got = synflow_jit(chain_apply(relu), (5,))(params, mask)
    want, R = chain_closed_form(params, mask)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.sum(got[k]), R, rtol=1e-5)  # conservation
    assert float(got["W1"][0, 0]) == 0.0


def test_synflow_conservation_with_biases_through_a_flax_mlp():
    """Neuron-wise conservation (Tanaka et al. Thm 1) with biases: the bias of layer l
    feeds the flow, so Σ S(W_{l+1}) = Σ S(W_l) + Σ S(b_l), and the last layer plus its
    bias carry R = Σ outputs."""
    module = nn.Sequential([nn.Dense(6), nn.relu, nn.Dense(5), nn.relu, nn.Dense(3)])
    r = np.random.default_rng(0)
    params = {f"layers_{i}": {"kernel": jnp.asarray(r.standard_normal((a, b)), jnp.float32),
                              "bias": jnp.asarray(r.standard_normal(b), jnp.float32)}
              for i, (a, b) in zip((0, 2, 4), ((4, 6), (6, 5), (5, 3)), strict=True)}
    apply_fn = lambda p, s, x: module.apply({"params": p}, x)  # noqa: E731
    s = synflow_jit(apply_fn, (4,))(params, ones_mask(params))
    tot = lambda k, leaf: float(np.sum(s[k][leaf]))  # noqa: E731
    np.testing.assert_allclose(tot("layers_2", "kernel"),
                               tot("layers_0", "kernel") + tot("layers_0", "bias"), rtol=1e-5)
    np.testing.assert_allclose(tot("layers_4", "kernel"),
                               tot("layers_2", "kernel") + tot("layers_2", "bias"), rtol=1e-5)
    a = {k: {n: np.abs(np.asarray(v, np.float64)) for n, v in d.items()}
         for k, d in params.items()}
    h = np.ones(4)
    for i, k in enumerate(("layers_0", "layers_2", "layers_4")):
        h = h @ a[k]["kernel"] + a[k]["bias"]
        h = np.maximum(h, 0) if i < 2 else h
    np.testing.assert_allclose(tot("layers_4", "kernel") + tot("layers_4", "bias"), h.sum(),
                               rtol=1e-5)


class _BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dense(4, name="d0")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.Dense(2, name="d1")(nn.relu(x))


def test_synflow_batchnorm_in_inference_mode_with_abs_statistics():
    """The running statistics are |.|-ed like the params (the reference code abs_'s
    the whole state_dict) and BatchNorm runs in inference mode; the truth is the BN
    formula written out in numpy with the chain rule by hand."""
    module = _BNNet()
    r = np.random.default_rng(1)
    f32 = lambda *shape: r.standard_normal(shape).astype(np.float32)  # noqa: E731
    params = {"d0": {"kernel": f32(3, 4), "bias": f32(4)},
              "bn": {"scale": f32(4), "bias": f32(4)},
              "d1": {"kernel": f32(4, 2), "bias": f32(2)}}
    # a large negative running mean on units 0 and 2: the signed mean would switch
    # those ReLUs on, |mean| switches them off
    mean = np.array([-20.0, 0.1, -20.0, -0.2], np.float32)
    var = (0.5 + r.uniform(size=4)).astype(np.float32)
    stats = {"batch_stats": {"bn": {"mean": mean, "var": var}}}
    apply_fn = lambda p, s, x: module.apply({"params": p, **s}, x, train=False)  # noqa: E731
    got = synflow_jit(apply_fn, (3,))(params, ones_mask(params), stats)

    a = jax.tree.map(lambda v: np.abs(v.astype(np.float64)), params)
    inv = 1 / np.sqrt(var + 1e-5)
    h = np.ones(3) @ a["d0"]["kernel"] + a["d0"]["bias"]
    z = (h - np.abs(mean)) * inv * a["bn"]["scale"] + a["bn"]["bias"]
    on = z > 0
    dR_dy = a["d1"]["kernel"].sum(1)             # R = Σ relu(z) W1 + b1
    dR_dz = on * dR_dy
    dR_dh = dR_dz * inv * a["bn"]["scale"]
    want = {
        "d0": {"kernel": a["d0"]["kernel"] * np.outer(np.ones(3), dR_dh),
               "bias": a["d0"]["bias"] * dR_dh},
        "bn": {"scale": a["bn"]["scale"] * dR_dz * (h - np.abs(mean)) * inv,
               "bias": a["bn"]["bias"] * dR_dz},
        "d1": {"kernel": a["d1"]["kernel"] * np.outer(np.maximum(z, 0), np.ones(2)),
               "bias": a["d1"]["bias"]},
    }
    assert not on[0] and not on[2]
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), got, want)


def test_synflow_float32_underflow_and_the_two_remedies():
    # 20 bias-free layers of width 4, |w| ~ 0.0008: R ~ (4 * 0.0008)^20 ~ 1e-50.
    params = chain_params(0, (4,) * 21, scale=1e-3)
    apply_fn = chain_apply(relu=True)
    s32 = synflow_jit(apply_fn, (4,))(params, ones_mask(params))
    assert all(float(np.max(v)) == 0.0 for v in s32.values())  # underflow in float32
    with pytest.raises(ValueError, match="dtype"):
        pai.synflow(apply_fn, params, input_shape=(4,), density=0.5, rounds=2)
    with pytest.raises(ValueError, match="enable_x64"):
        scores.synflow_scores(apply_fn, params, None, (4,), dtype=jnp.float64)
    want, R = chain_closed_form(params, ones_mask(params))
    assert 0 < R < 1e-40
    with jax.enable_x64(True):
        s64 = synflow_jit(apply_fn, (4,), dtype=jnp.float64)(params, ones_mask(params))
        for k in want:
            np.testing.assert_allclose(s64[k], want[k], rtol=1e-9)
    # rescaling: finite float32 scores proportional to the exact ones (bias-free ReLU
    # chain: every score times the same constant), so the same ranking
    sr = synflow_jit(apply_fn, (4,), rescale=True)(params, ones_mask(params))
    flat_r = np.concatenate([np.asarray(sr[k], np.float64).ravel() for k in want])
    flat_x = np.concatenate([want[k].ravel() for k in want])
    assert np.all(np.isfinite(flat_r)) and flat_r.min() > 0
    np.testing.assert_allclose(flat_r / flat_r.sum(), flat_x / flat_x.sum(), rtol=1e-3)
    # SynFlow pruning enters x64 itself when asked, and leaves it
    m64 = pai.synflow(apply_fn, params, input_shape=(4,), density=0.5, rounds=1,
                      dtype=jnp.float64)
    assert not jax.config.jax_enable_x64
    assert sum(int(np.sum(v)) for v in m64.values()) == 8 * 20
    flat_m = np.concatenate([np.asarray(m64[k]).ravel() for k in want])
    assert flat_x[flat_m].min() >= flat_x[~flat_m].max()  # the exact top half


def count(mask):
    return sum(int(np.sum(v)) for v in jax.tree.leaves(mask))


def test_synflow_schedule_counts_are_exact_per_round():
    params = chain_params(0, (30, 20, 10))
    n = 30 * 20 + 20 * 10
    for schedule, rho, rounds in [("exponential", 0.013, 7), ("linear", 0.3, 4)]:
        seen = []

        def record(k, d, m, seen=seen):
            seen.append((k, d, count(m)))

        mask = pai.synflow(chain_apply(True), params, input_shape=(30,), density=rho,
                           rounds=rounds, schedule=schedule, callback=record)
        if schedule == "exponential":
            want = [rho ** (k / rounds) for k in range(1, rounds + 1)]
        else:
            want = [1 - (1 - rho) * k / rounds for k in range(1, rounds + 1)]
        assert [k for k, _, _ in seen] == list(range(1, rounds + 1))
        np.testing.assert_allclose([d for _, d, _ in seen], want, rtol=1e-12)
        assert [c for _, _, c in seen] == [math.floor(d * n + 0.5) for d in want]
        assert count(mask) == round(rho * n) == seen[-1][2]


def test_synflow_traces_its_score_function_once_over_100_rounds():
    calls = []

    def apply_fn(p, s, x):
        calls.append(1)  # runs only while tracing
        return chain_apply(True)(p, s, x)

    params = chain_params(0, (8, 6, 4))
    seen = []
    mask = pai.synflow(apply_fn, params, input_shape=(8,), density=0.1, rounds=100,
                       callback=lambda k, d, m: seen.append(k))
    assert len(seen) == 100
    assert len(calls) == 1
    assert count(mask) == round(0.1 * (48 + 24))


def test_iterative_synflow_avoids_collapse_at_extreme_sparsity():
    """At 0.5 % density (21 of 4,200 weights) iterative SynFlow keeps the exact count and empties no layer
    (the paper's claim), and its mask is not the one-shot mask."""
    params = chain_params(0, (100, 30, 30, 10))
    one = pai.synflow(chain_apply(True), params, input_shape=(100,), density=0.005, rounds=1)
    it = pai.synflow(chain_apply(True), params, input_shape=(100,), density=0.005, rounds=30)
    total = 100 * 30 + 30 * 30 + 300
    assert count(it) == round(0.005 * total)
    assert pai.collapsed_layers(it) == []
    assert masks.overlap(one, it) < 1.0


def test_score_functions_reject_bad_input():
    params = tiny_params(0)
    loss_fn = scores.cross_entropy(tiny_logits)
    for fn in (scores.snip, scores.grasp):
        with pytest.raises(ValueError, match="batches"):
            fn(loss_fn, params, None, None)
        with pytest.raises(ValueError, match="batches"):
            fn(loss_fn, params, None, [])
        with pytest.raises(ValueError, match="batches"):
            fn(loss_fn, params, None, (np.ones((2, 3)), np.zeros(2, int)))  # bare (x, y)
    with pytest.raises(ValueError, match="input_shape"):
        scores.synflow_scores(lambda p, s, x: x, params, None, None)
    bad = ones_mask(params)
    bad["l1"]["kernel"] = np.ones((4, 3), bool)
    with pytest.raises(ValueError, match=r"mask\['l1'\]\['kernel'\]"):
        scores.snip(loss_fn, params, bad, tiny_batches(1))
