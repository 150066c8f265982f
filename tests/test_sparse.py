"""Tests for lotto_jax.sparse: masked optax transformations and the masked step.

The reference for ``sparse.masked(inner)`` is ``inner`` itself run on pre-masked
params with gradients masked by hand: for element-wise optimizers (and global-norm
clipping, which only sees the masked gradients) that keeps pruned coordinates at 0
and must give the same kept coordinates and the same moments.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lotto_jax import masks, sparse

SHAPES = {
    "Dense_0": {"kernel": (6, 5), "bias": (5,)},
    "Dense_1": {"kernel": (5, 3), "bias": (3,)},
}


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s), jnp.float32),
        SHAPES,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def _mask(params, seed, p_keep=0.5):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: (
            jnp.asarray(rng.random(p.shape) < p_keep)
            if p.ndim >= 2
            else jnp.ones(p.shape, bool)
        ),
        params,
    )


def _grads(params, step):
    key = jax.random.fold_in(jax.random.key(42), step)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef,
        [jax.random.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)],
    )


# (inner transformation, names of its param-shaped state leaves)
OPTIMIZERS = {
    "adam": (lambda: optax.adam(1e-2), ("mu", "nu")),
    "adamw": (lambda: optax.adamw(1e-2, weight_decay=0.1), ("mu", "nu")),
    "sgd_momentum_wd": (
        lambda: optax.chain(
            optax.add_decayed_weights(1e-2), optax.sgd(1e-2, momentum=0.9)
        ),
        ("trace",),
    ),
    "clip_wd_nesterov": (
        lambda: optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.add_decayed_weights(1e-3),
            optax.sgd(0.05, momentum=0.9, nesterov=True),
        ),
        ("trace",),
    ),
}


def _moments(state, names):
    """All param-shaped moment trees in ``state``: [(path, tree)]."""
    found = []
    for name in names:
        found += optax.tree_utils.tree_get_all_with_path(state, name)
    assert found, names
    return found


def _make_steps(inner):
    tx = sparse.masked(inner)

    @jax.jit
    def masked_step(params, state, grads, mask):
        updates, state = tx.update(grads, state, params, mask=mask)
        return optax.apply_updates(params, updates), state

    @jax.jit
    def ref_step(params, state, grads, mask):
        grads = jax.tree.map(lambda g, m: jnp.where(m, g, 0.0), grads, mask)
        updates, state = inner.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return tx, masked_step, ref_step


def _assert_zero_where_pruned(params, state, mask, names, where=""):
    for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0), f"params {where}"
    for path, tree in _moments(state, names):
        for x, m in zip(jax.tree.leaves(tree), jax.tree.leaves(mask), strict=True):
            assert np.all(np.asarray(x)[~np.asarray(m)] == 0.0), f"{path} {where}"


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_masked_matches_inner_on_kept_coordinates(name):
    make, names = OPTIMIZERS[name]
    inner = make()
    tx, masked_step, ref_step = _make_steps(inner)
    params = _params()
    mask = _mask(params, seed=1)
    state = tx.init(params)
    assert isinstance(state, sparse.MaskedState)
    ref_params = masks.apply(params, mask)  # the reference starts pre-masked
    ref_state = inner.init(ref_params)
    for step in range(60):
        grads = _grads(params, step)
        params, state = masked_step(params, state, grads, mask)
        ref_params, ref_state = ref_step(ref_params, ref_state, grads, mask)
        if step in (0, 59):
            _assert_zero_where_pruned(
                params, state.inner_state, mask, names, f"step {step}"
            )
    # kept weights and the whole state match the reference
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6),
        params,
        ref_params,
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6),
        state.inner_state,
        ref_state,
    )
    # and training moved the kept weights
    k0 = np.asarray(_params()["Dense_0"]["kernel"])
    m0 = np.asarray(mask["Dense_0"]["kernel"])
    assert not np.allclose(np.asarray(params["Dense_0"]["kernel"])[m0], k0[m0])


@pytest.mark.parametrize("name", ["adamw", "sgd_momentum_wd"])
def test_mask_change_mid_training(name):
    make, names = OPTIMIZERS[name]
    inner = make()
    tx, masked_step, ref_step = _make_steps(inner)
    params = _params(1)
    mask1 = _mask(params, seed=2, p_keep=0.8)
    # prune more: half of the survivors, and every bias stays kept
    extra = _mask(params, seed=3, p_keep=0.5)
    mask2 = masks.intersect(mask1, extra)
    state = tx.init(params)
    ref_params, ref_state = masks.apply(params, mask1), inner.init(params)
    for step in range(30):
        grads = _grads(params, step)
        params, state = masked_step(params, state, grads, mask1)
        ref_params, ref_state = ref_step(ref_params, ref_state, grads, mask1)
    newly = jax.tree.map(lambda a, b: np.asarray(a & ~b), mask1, mask2)
    assert sum(int(x.sum()) for x in jax.tree.leaves(newly)) > 5
    # before the switch the newly pruned weights and their moments are non-zero
    for p, n in zip(jax.tree.leaves(params), jax.tree.leaves(newly), strict=True):
        assert np.all(np.asarray(p)[n] != 0.0)
    for _, tree in _moments(state.inner_state, names):
        for x, n in zip(jax.tree.leaves(tree), jax.tree.leaves(newly), strict=True):
            assert np.all(np.asarray(x)[n] != 0.0)
    # one step with the new mask zeroes them all
    grads = _grads(params, 30)
    params, state = masked_step(params, state, grads, mask2)
    ref_params, ref_state = ref_step(ref_params, ref_state, grads, mask2)
    _assert_zero_where_pruned(params, state.inner_state, mask2, names, "after switch")
    for step in range(31, 50):
        grads = _grads(params, step)
        params, state = masked_step(params, state, grads, mask2)
        ref_params, ref_state = ref_step(ref_params, ref_state, grads, mask2)
    _assert_zero_where_pruned(params, state.inner_state, mask2, names, "end")
    # kept coordinates still follow the reference (element-wise optimizers)
    for p, r, m in zip(
        jax.tree.leaves(params),
        jax.tree.leaves(ref_params),
        jax.tree.leaves(mask2),
        strict=True,
    ):
        m = np.asarray(m)
        np.testing.assert_allclose(
            np.asarray(p)[m], np.asarray(r)[m], rtol=0, atol=1e-6
        )


def test_masked_requires_params_and_mask():
    params = _params()
    tx = sparse.masked(optax.sgd(0.1))
    state = tx.init(params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, state, None, mask=masks.init(params))
    with pytest.raises(ValueError, match="mask"):
        tx.update(params, state, params)


def test_masked_forwards_extra_args_and_chains():
    # optax.chain forwards the mask to the wrapped transformation as an extra arg
    params = {"w": jnp.array([[1.0, 2.0, 3.0]])}
    mask = {"w": jnp.array([[True, False, True]])}
    tx = optax.chain(sparse.masked(optax.sgd(0.5)), optax.scale(2.0))
    state = tx.init(params)
    updates, _ = tx.update({"w": jnp.ones((1, 3))}, state, params, mask=mask)
    # kept: -0.5 * 1 * 2 = -1; pruned: -param * 2 = -4 (scaled after the wrapper)
    np.testing.assert_array_equal(updates["w"], [[-1.0, -4.0, -1.0]])


# ----------------------------------------------------------------------------------
# make_step


def _regression(seed=0, n=64):
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32), "b": jnp.zeros(3)}
    mask = {"w": jnp.asarray(rng.random((8, 3)) < 0.5), "b": jnp.ones(3, bool)}
    w_true = np.where(np.asarray(mask["w"]), rng.normal(size=(8, 3)), 0.0)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    y = (x @ w_true + 0.5).astype(np.float32)
    return params, mask, (jnp.asarray(x), jnp.asarray(y))


def _mse(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"][None, :] - y) ** 2)


def test_make_step_traces_once_across_masks():
    traces = []

    def loss_fn(params, batch):
        traces.append(1)
        return _mse(params, batch)

    params, mask, batch = _regression()
    step = sparse.make_step(loss_fn, optax.adam(1e-2))
    state = step.init(params)
    rng = np.random.default_rng(5)
    mask_list = [mask] + [
        {"w": jnp.asarray(rng.random((8, 3)) < p), "b": jnp.ones(3, bool)}
        for p in (0.3, 0.7)
    ]
    for m in mask_list * 2:
        params, state, _ = step(params, state, m, batch)
        jax.block_until_ready(params)
        np.testing.assert_array_equal(np.asarray(params["w"])[~np.asarray(m["w"])], 0.0)
    assert len(traces) == 1
    assert step.jitted._cache_size() == 1


def test_make_step_matches_hand_sgd_step():
    params, mask, (x, y) = _regression(1, n=16)
    step = sparse.make_step(_mse, optax.sgd(0.1), donate=False)
    new, _, metrics = step(params, step.init(params), mask, (x, y))
    w, b, m = (
        np.asarray(params["w"], np.float64),
        np.asarray(params["b"], np.float64),
        np.asarray(mask["w"]),
    )
    xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
    r = xs @ (w * m) + b - ys
    loss = np.mean(r**2)
    gw = 2 * xs.T @ r / r.size * m  # gradient through the masked forward pass
    gb = 2 * r.sum(0) / r.size
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(
        new["w"], np.where(m, w - 0.1 * gw, 0.0), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(new["b"], b - 0.1 * gb, rtol=1e-5, atol=1e-6)


def test_make_step_loss_decreases_and_aux():
    params, mask, batch = _regression(2)

    def loss_fn(p, b):
        loss = _mse(p, b)
        return loss, {"rmse": jnp.sqrt(loss)}

    step = sparse.make_step(loss_fn, optax.adam(5e-2), has_aux=True)
    state = step.init(params)
    losses = []
    for _ in range(150):
        params, state, metrics = step(params, state, mask, batch)
        losses.append(float(metrics["loss"]))
        np.testing.assert_allclose(metrics["rmse"], np.sqrt(metrics["loss"]), rtol=1e-6)
    assert losses[-1] < 0.01 * losses[0]
    np.testing.assert_array_equal(np.asarray(params["w"])[~np.asarray(mask["w"])], 0.0)


@pytest.mark.parametrize("jit", [True, False])
def test_make_step_two_sgd_momentum_steps_hand_worked(jit):
    """Two steps of SGD (lr 0.1, momentum 0.5: ``b = g + 0.5 b; w -= 0.1 b``) on
    ``L = 1/2 sum a (w ⊙ m - t)^2`` with ``a = [1, 1, .5, 2]``, ``t = [0, 1, 1, 0]``,
    ``w0 = [1, -2, 3, .5]`` and entry 1 pruned. Worked by hand:

    step 1: loss 1/2 (1 + 1 + 2 + .5) = 2.25; g = a (w - t) on kept = [1, 0, 1, 1];
            b = [1, 0, 1, 1]; w1 = [.9, 0, 2.9, .4]
    step 2: loss 1/2 (.81 + 1 + 1.805 + .32) = 1.9675; g = [.9, 0, .95, .8];
            b = g + .5 b = [1.4, 0, 1.45, 1.3]; w2 = [.76, 0, 2.755, .27]

    The pruned entry's target stays in the loss (its masked weight is 0) but gets no
    gradient; it is exactly 0 after each step, and so is its momentum. Tolerance:
    float32 rounding, rtol 1e-6."""
    a = jnp.array([1.0, 1.0, 0.5, 2.0])
    t = jnp.array([0.0, 1.0, 1.0, 0.0])

    def loss(p, batch):
        del batch
        return 0.5 * jnp.sum(a * (p["w"] - t) ** 2)

    step = sparse.make_step(loss, optax.sgd(0.1, momentum=0.5), donate=False, jit=jit)
    params = {"w": jnp.array([1.0, -2.0, 3.0, 0.5])}
    mask = {"w": jnp.array([True, False, True, True])}
    state = step.init(params)
    want = [
        (2.25, [1.0, 0.0, 1.0, 1.0], [0.9, 0.0, 2.9, 0.4]),
        (1.9675, [1.4, 0.0, 1.45, 1.3], [0.76, 0.0, 2.755, 0.27]),
    ]
    for want_loss, want_trace, want_w in want:
        params, state, metrics = step(params, state, mask, None)
        assert float(metrics["loss"]) == pytest.approx(want_loss, rel=1e-6)
        (trace,) = [x for x in jax.tree.leaves(state) if np.shape(x) == (4,)]
        np.testing.assert_allclose(trace, want_trace, rtol=1e-6)
        np.testing.assert_allclose(params["w"], want_w, rtol=1e-6)
        assert float(params["w"][1]) == 0.0 and float(trace[1]) == 0.0  # exactly


# ----------------------------------------------------------------------------------
# several devices: a subprocess with 4 CPU devices

_MULTI_DEVICE = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from lotto_jax import masks, sparse

    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    repl, batch_sh = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    rng = np.random.default_rng(0)
    params = {"k1": rng.normal(size=(8, 16)), "b1": np.zeros(16),
              "k2": rng.normal(size=(16, 2)), "b2": np.zeros(2)}
    params = {k: np.asarray(v, np.float32) for k, v in params.items()}
    mask = {k: (rng.random(v.shape) < 0.5) if v.ndim == 2 else np.ones(v.shape, bool)
            for k, v in params.items()}
    x = rng.normal(size=(32, 8)).astype(np.float32)
    y = rng.normal(size=(32, 2)).astype(np.float32)

    def loss_fn(p, batch):
        bx, by = batch
        h = jnp.tanh(bx @ p["k1"] + p["b1"])
        return jnp.mean((h @ p["k2"] + p["b2"] - by) ** 2)

    def run(put_params, put_batch):
        step = sparse.make_step(loss_fn, optax.adam(1e-2))
        p = jax.tree.map(put_params, params)
        m = jax.tree.map(put_params, mask)
        state = step.init(p)
        batch = (put_batch(x), put_batch(y))
        for _ in range(5):
            p, state, metrics = step(p, state, m, batch)
        return jax.device_get(p), p

    dev0 = jax.devices()[0]
    single, _ = run(lambda a: jax.device_put(a, dev0), lambda a: jax.device_put(a, dev0))
    multi, live = run(lambda a: jax.device_put(a, repl), lambda a: jax.device_put(a, batch_sh))
    for k in params:
        np.testing.assert_allclose(multi[k], single[k], rtol=0, atol=1e-5, err_msg=k)
        assert np.all(multi[k][~mask[k]] == 0.0), k
        assert live[k].sharding.is_fully_replicated, (k, live[k].sharding)
    assert not np.allclose(single["k1"], params["k1"])

    # masks.init keeps each param's sharding: replicated and sharded over devices
    sharded = {
        "rows": jax.device_put(params["k1"], NamedSharding(mesh, P("data", None))),
        "cols": jax.device_put(params["k2"].T, NamedSharding(mesh, P(None, "data"))),
        "bias": jax.device_put(params["b1"], NamedSharding(mesh, P("data"))),
        "repl": jax.device_put(params["k2"], repl),
    }
    mask_s = masks.init(sharded)
    for k, v in sharded.items():
        assert mask_s[k].sharding == v.sharding, (k, mask_s[k].sharding, v.sharding)
        assert mask_s[k].dtype == np.bool_ and bool(mask_s[k].all())
    assert len(mask_s["rows"].sharding.device_set) == 4
    # and masks.apply keeps it too
    applied = masks.apply(sharded, mask_s)
    assert applied["rows"].sharding.is_equivalent_to(sharded["rows"].sharding, 2)
    print("MULTI_DEVICE_OK")
""")


def test_multi_device():
    env = dict(os.environ)
    # LLVM at -O0 without its expensive passes: the script is nearly all compilation,
    # and its checks (shardings, one device vs four under the same flags) are HLO-level
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
        " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", _MULTI_DEVICE],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MULTI_DEVICE_OK" in proc.stdout


def test_scale_by_tree_multiplies_each_update_and_is_set_between_steps():
    """A hand SGD step: update = -lr * g * scale; scale 1 is the identity bit for
    bit; with_scale finds the state inside a chain and refuses bad input."""
    params = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}
    grads = {"w": jnp.array([0.3, 0.7, -1.1]), "b": jnp.array(2.0)}
    tx = optax.chain(sparse.scale_by_tree(), optax.sgd(0.1))
    st = tx.init(params)
    plain, _ = optax.sgd(0.1).update(grads, optax.sgd(0.1).init(params))
    ones, _ = tx.update(grads, st)
    for a, b in zip(jax.tree.leaves(ones), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(a, b)
    st = sparse.with_scale(st, {"w": jnp.array([1.0, 0.003, 0.0]), "b": jnp.array(0.5)})
    up, st2 = tx.update(grads, st)
    np.testing.assert_allclose(up["w"], -0.1 * np.array([0.3, 0.7 * 0.003, 0.0]), rtol=1e-6)
    np.testing.assert_allclose(up["b"], -0.1 * 2.0 * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(st2[0].scale["w"], np.float32([1.0, 0.003, 0.0]))
    with pytest.raises(ValueError, match="opt_state: holds no ScaleState"):
        sparse.with_scale(optax.sgd(0.1).init(params), params)
    with pytest.raises(ValueError, match="scale: expected a pytree shaped like the params"):
        sparse.with_scale(st, {"w": jnp.ones(2), "b": jnp.array(1.0)})


def test_a_fit_callback_may_replace_the_state():
    """fit continues from the state a callback returns: a zero gradient scale set at
    step 10 freezes the kernel from there, the bias keeps training; a trainer with
    the scale left at 1 trains as the plain trainer (to float rounding: XLA fuses
    the two programs differently)."""
    from lotto_jax import data, models, train

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    ds = data.Dataset(name="toy", train=data.Split(x, y), validation=None,
                      test=data.Split(x[:16], y[:16]), input_shape=(5,), num_classes=2,
                      normalization={"mean": [0.0], "std": [1.0]})
    model = models.build("mlp", features=(), num_classes=2)
    params = models.init(model, jax.random.key(0), (5,))["params"]
    cfg = train.TrainConfig(steps=30, batch_size=16, eval_every=10, lr=0.1, optimizer="sgd",
                            momentum=0.0)  # plain SGD: no momentum carries old gradients
    plain = train.make_trainer(train.classifier(model), cfg, num_train=64)
    scaled = train.make_trainer(train.classifier(model), cfg, num_train=64,
                                grad_transform=sparse.scale_by_tree())
    key = jax.random.key(1)
    a, _ = train.fit(plain, plain.init(params), masks.init(params), ds, data_key=key)
    b, _ = train.fit(scaled, scaled.init(params), masks.init(params), ds, data_key=key)
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)  # another fusion: ulps
    seen = {}

    def freeze_kernel(st, rec):
        seen[int(rec.step)] = jax.tree.map(np.asarray, st.params)
        if int(rec.step) == 10:
            scale = {"output": {"kernel": jnp.zeros((5, 2)), "bias": jnp.ones(2)}}
            return st.replace(opt_state=sparse.with_scale(st.opt_state, scale))
        return None

    c, _ = train.fit(scaled, scaled.init(params), masks.init(params), ds, data_key=key,
                     callback=freeze_kernel)
    np.testing.assert_array_equal(c.params["output"]["kernel"], seen[10]["output"]["kernel"])
    assert not np.array_equal(c.params["output"]["bias"], seen[10]["output"]["bias"])
    assert not np.array_equal(seen[10]["output"]["kernel"], seen[0]["output"]["kernel"])
