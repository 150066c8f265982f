"""Tests for lotto_jax.structured: neurons, channels and residual blocks.

Independent truths: weight masks built by hand with numpy from the unit masks
(which slices of which leaves a unit owns and feeds), numpy norms and sorts for the
unit scores and the selections (exact counts, ties to the first position), the
networks' own intermediate outputs (a removed unit outputs exactly 0, a removed
residual block is the identity path), a ResMLP with the block deleted, and integer
arithmetic for IMP's unit counts per round.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lotto_jax import data, masks, models, pai, structured, train
from lotto_jax._topology import topology


def flat(tree):
    return {masks.path_str(p): np.array(x)  # a writable copy
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_tree_equal(got, want: dict):
    got = flat(got)
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def unflat(like, d):
    """The dict ``{path: array}`` as a tree shaped like ``like``."""
    paths = [masks.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(like)[0]]
    return jax.tree.unflatten(jax.tree.structure(like), [jnp.asarray(d[k]) for k in paths])


def ones_like(params):
    return {k: np.ones(v.shape, bool) for k, v in flat(params).items()}


def random_variables(module, input_shape, seed=1):
    """Variables of ``module`` with every param drawn N(0, 1) by numpy (biases and norm
    offsets non-zero) and BatchNorm statistics mean 0, var 1: shapes from
    ``eval_shape``, so nothing is compiled."""
    shapes = jax.eval_shape(lambda: module.init(
        jax.random.key(0), jnp.zeros((1, *input_shape)), train=False))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        if masks.path_str(path).endswith("/var"):
            return jnp.ones(s.shape, s.dtype)
        if masks.path_str(path).endswith("/mean"):
            return jnp.zeros(s.shape, s.dtype)
        return jnp.asarray(rng.standard_normal(s.shape).astype(np.float32))

    return jax.tree_util.tree_map_with_path(draw, dict(shapes))


def random_params(module, input_shape, seed=1):
    return random_variables(module, input_shape, seed)["params"]


def masked(params, mask):
    """``masks.apply`` in numpy (no compile)."""
    m, p = flat(mask), flat(params)
    return unflat(params, {k: np.where(m[k], p[k], 0) for k in p})


@functools.cache
def applier(module, train=False):
    """``module.apply`` jitted, returning ``(outputs, intermediates)``."""
    def fn(variables, x):
        out, state = module.apply(variables, x, train=train, capture_intermediates=True,
                                  mutable=["intermediates", "batch_stats"])
        return out, state["intermediates"]

    return jax.jit(fn)


@functools.cache
def mlp():
    module = models.build("mlp", features=(3, 2), num_classes=2)
    params = random_params(module, (4,))
    return module, params, topology(module, params)


@functools.cache
def vgg():
    module = models.VGG(plan=(4, "M", 8))
    variables = random_variables(module, (8, 8, 3))
    params = variables["params"]
    return module, params, variables["batch_stats"], topology(module, params)


# ----------------------------------------------------------------------------------
# unit groups against hand-built masks


def test_mlp_expand_and_units_of_by_hand():
    _module, params, topo = mlp()
    u0, u1 = np.array([True, False, True]), np.array([False, True])
    want = ones_like(params)
    want["Dense_0/kernel"][:, ~u0] = False
    want["Dense_0/bias"] = u0.copy()
    want["Dense_1/kernel"][~u0, :] = False  # consumer of Dense_0
    want["Dense_1/kernel"][:, ~u1] = False
    want["Dense_1/bias"] = u1.copy()
    want["output/kernel"][~u1, :] = False  # consumer of Dense_1
    units = {"Dense_0": jnp.asarray(u0), "Dense_1": jnp.asarray(u1)}
    mask = structured.expand(units, masks.init(params), topo)
    assert_tree_equal(mask, want)
    got = structured.units_of(mask, topo)
    assert sorted(got) == ["Dense_0", "Dense_1"]
    np.testing.assert_array_equal(got["Dense_0"], u0)
    np.testing.assert_array_equal(got["Dense_1"], u1)
    # without consumers the next layer keeps reading the (zero) unit
    alone = flat(structured.expand(units, masks.init(params), topo, consumers=False))
    assert alone["Dense_1/kernel"][~u0, :][:, u1].all()
    assert not alone["Dense_0/bias"][1]


def test_removed_unit_outputs_exactly_zero():
    """Masking the kernel column alone would leave relu(b) != 0: the bias goes too."""
    module, params, topo = mlp()
    units = {"Dense_0": jnp.array([True, False, True])}
    x = jax.random.normal(jax.random.key(3), (5, 4))
    for consumers in (False, True):
        mask = structured.expand(units, masks.init(params), topo, consumers=consumers)
        _, inter = applier(module)({"params": masked(params, mask)}, x)
        h = np.asarray(inter["Dense_0"]["__call__"][0])
        np.testing.assert_array_equal(h[:, 1], 0.0)
        assert np.all(h[:, [0, 2]] != 0)
    # the column alone: the unit still outputs its bias
    col = flat(masks.init(params))
    col["Dense_0/kernel"][:, 1] = False
    p = flat(params)
    h_col = np.asarray(x) @ np.where(col["Dense_0/kernel"], p["Dense_0/kernel"], 0) \
        + p["Dense_0/bias"]
    assert np.all(h_col[:, 1] == p["Dense_0/bias"][1]) and p["Dense_0/bias"][1] != 0


def test_vgg_channels_with_batchnorm_by_hand():
    module, params, stats, topo = vgg()
    assert [g.name for g in topo.units] == ["Conv_0", "Conv_1"]
    u0 = np.array([True, False, True, False])
    u1 = np.arange(8) % 3 != 1
    want = ones_like(params)
    for conv, bn, u in (("Conv_0", "BatchNorm_0", u0), ("Conv_1", "BatchNorm_1", u1)):
        want[f"{conv}/kernel"][..., ~u] = False
        for leaf in (f"{conv}/bias", f"{bn}/scale", f"{bn}/bias"):
            want[leaf] = u.copy()
    want["Conv_1/kernel"][:, :, ~u0, :] = False  # input channels of Conv_1
    want["output/kernel"][~u1, :] = False  # after the global average pool
    units = {"Conv_0": jnp.asarray(u0), "Conv_1": jnp.asarray(u1)}
    mask = structured.expand(units, masks.init(params), topo)
    assert_tree_equal(mask, want)
    np.testing.assert_array_equal(structured.units_of(mask, topo)["Conv_1"], u1)
    # the normalised output of a removed channel is exactly 0, in both BN modes
    x = jax.random.normal(jax.random.key(4), (3, 8, 8, 3))
    variables = {"params": masked(params, mask), "batch_stats": stats}
    for training in (False, True):
        _, inter = applier(module, training)(variables, x)
        for bn, u in (("BatchNorm_0", u0), ("BatchNorm_1", u1)):
            y = np.asarray(inter[bn]["__call__"][0])
            np.testing.assert_array_equal(y[..., ~u], 0.0)
            assert np.all(np.abs(y[..., u]).sum(axis=(0, 1, 2)) > 0)


def test_conv_to_dense_consumer_follows_nhwc_flattening():
    module = models.build("lenet5")
    params = random_params(module, (28, 28, 1))
    topo = topology(module, params)
    c = params["Conv_1"]["kernel"].shape[-1]
    u = np.arange(c) != 3
    mask = flat(structured.expand({"Conv_1": jnp.asarray(u)}, masks.init(params), topo))
    rows = np.arange(params["Dense_0"]["kernel"].shape[0])
    np.testing.assert_array_equal(mask["Dense_0/kernel"].all(axis=1), rows % c != 3)
    assert not mask["Dense_0/kernel"][rows % c == 3].any()


def test_residual_block_units_and_tied_stream_by_hand():
    module = models.build("resmlp", blocks=2, width=8, hidden=6)
    params = random_params(module, (5,))
    topo = topology(module, params)
    u = np.array([True, False, True, True, False, True])
    want = ones_like(params)
    want["block_1/fc1/kernel"][:, ~u] = False
    want["block_1/fc1/bias"] = u.copy()
    want["block_1/fc2/kernel"][~u, :] = False
    assert_tree_equal(structured.expand({"block_1/fc1": jnp.asarray(u)},
                                        masks.init(params), topo), want)
    # MNIST-1D's residual stream: one tied group over both hidden layers
    module = models.build("mnist1d_mlp", hidden=5)
    params = random_params(module, (40,))
    topo = topology(module, params)
    u = np.array([True, True, False, True, False])
    want = ones_like(params)
    for layer in ("Dense_0", "Dense_1"):
        want[f"{layer}/kernel"][:, ~u] = False
        want[f"{layer}/bias"] = u.copy()
    want["Dense_1/kernel"][~u, :] = False
    want["output/kernel"][~u, :] = False
    mask = structured.expand({"Dense_0+Dense_1": jnp.asarray(u)}, masks.init(params), topo)
    assert_tree_equal(mask, want)
    # a unit lives while either layer keeps a kernel weight of it
    m = flat(mask)
    m["Dense_0/kernel"][:, 0] = False
    tree = unflat(params, m)
    np.testing.assert_array_equal(structured.units_of(tree, topo)["Dense_0+Dense_1"], u)


# ----------------------------------------------------------------------------------
# scores


def test_unit_scores_against_numpy():
    _module, params, _stats, topo = vgg()
    p = flat(params)
    mask = flat(masks.init(params))
    mask["Conv_1/kernel"][0, 0, 0, :] = False  # pruned entries count 0
    mtree = unflat(params, mask)
    got = {n: structured.unit_scores(params, mtree, topo, norm=n) for n in structured.NORMS}
    for conv, bn in (("Conv_0", "BatchNorm_0"), ("Conv_1", "BatchNorm_1")):
        k = np.where(mask[f"{conv}/kernel"], p[f"{conv}/kernel"], 0)
        k = k.reshape(-1, k.shape[-1])  # (inputs, units)
        np.testing.assert_allclose(got["l1"][conv], np.abs(k).sum(0), rtol=1e-6)
        np.testing.assert_allclose(got["l2"][conv], np.sqrt((k**2).sum(0)), rtol=1e-6)
        total = k.sum(0) + p[f"{conv}/bias"] + p[f"{bn}/scale"] + p[f"{bn}/bias"]
        np.testing.assert_allclose(got["sum"][conv], total, rtol=1e-5, atol=1e-6)
        assert got["l2"][conv].dtype == jnp.float32
    with pytest.raises(ValueError, match="norm: expected one of"):
        structured.unit_scores(params, params, topo, norm="linf")


def test_sign_flips_of_whole_units_change_nothing():
    _module, params, topo = mlp()
    p = flat(params)
    p["Dense_0/kernel"][:, [0, 2]] *= -1
    p["Dense_0/bias"][[0, 2]] *= -1
    p["Dense_1/kernel"][:, 1] *= -1
    flipped = unflat(params, p)
    for norm in ("l1", "l2"):
        for scope in ("layerwise", "global"):
            a = structured.by_fraction(params, masks.init(params), 0.2, topology=topo,
                                       scope=scope, norm=norm)
            b = structured.by_fraction(flipped, masks.init(params), 0.2, topology=topo,
                                       scope=scope, norm=norm)
            assert_tree_equal(b, flat(a))


# ----------------------------------------------------------------------------------
# selection: exact counts, ties by position, refusals


def _mlp_with_norms(n0, n1):
    """An MLP 1 -> len(n0) -> len(n1) -> 1 whose units' kernel norms are n0, n1."""
    module = models.build("mlp", features=(len(n0), len(n1)), num_classes=1)
    params = random_params(module, (1,))
    params = {**params, "Dense_0": {"kernel": jnp.asarray([n0], jnp.float32),
                                    "bias": jnp.zeros(len(n0))},
              "Dense_1": {"kernel": jnp.zeros((len(n0), len(n1))).at[0].set(jnp.asarray(n1)),
                          "bias": jnp.zeros(len(n1))}}
    return params, topology(module, params)


def _numpy_keep(scores, kept, n_remove):
    """Remove the n_remove lowest kept scores, the first position first (stable sort)."""
    order = [i for i in np.argsort(scores, kind="stable") if kept[i]]
    out = kept.copy()
    out[order[:n_remove]] = False
    return out


def test_by_fraction_exact_counts_and_ties():
    n0 = [2.0] * 10  # all tied: 0.25 * 10 = 2.5 -> 3 removed, the first three
    n1 = [5.0, 1.0, 4.0, 1.0, 3.0]  # 1.25 -> 1 removed: the first of the two 1.0s
    params, topo = _mlp_with_norms(n0, n1)
    mask = structured.by_fraction(params, masks.init(params), 0.25, topology=topo)
    got = structured.units_of(mask, topo)
    np.testing.assert_array_equal(got["Dense_0"], np.arange(10) >= 3)
    np.testing.assert_array_equal(got["Dense_1"], [True, False, True, True, True])
    # a second round removes from the survivors only: round(0.25 * 7) = 2
    again = structured.units_of(
        structured.by_fraction(params, mask, 0.25, topology=topo), topo)
    np.testing.assert_array_equal(again["Dense_0"], np.arange(10) >= 5)
    # global: one ranking over both groups (sorted names), numpy's stable sort
    rng = np.random.default_rng(0)
    n0, n1 = rng.choice([1.0, 2.0, 3.0], 10), rng.choice([1.0, 2.0, 3.0], 5)
    params, topo = _mlp_with_norms(list(n0), list(n1))
    got = structured.units_of(structured.by_fraction(
        params, masks.init(params), 0.3, topology=topo, scope="global"), topo)
    # 0.3 * 15 = 4.5 -> 5 removed (half up)
    want = _numpy_keep(np.concatenate([n0, n1]), np.ones(15, bool), 5)
    np.testing.assert_array_equal(np.concatenate([got["Dense_0"], got["Dense_1"]]), want)


def test_to_density_counts_units():
    n0 = [3.0, 1.0, 2.0, 4.0, 0.5, 6.0, 7.0, 0.1, 9.0, 8.0]
    params, topo = _mlp_with_norms(n0, [1.0, 2.0, 3.0, 2.0, 5.0])
    got = structured.units_of(structured.to_density(
        params, masks.init(params), 0.5, topology=topo), topo)
    np.testing.assert_array_equal(got["Dense_0"], np.asarray(n0) > 3.5)  # 5 of 10
    # 2.5 -> 3 kept: 5.0, 3.0 and the second 2.0 (the first of a tie goes first)
    np.testing.assert_array_equal(got["Dense_1"], [False, False, True, True, True])


def test_emptying_a_layer_is_refused():
    params, topo = _mlp_with_norms([1.0] * 10, [9.0] * 5)
    with pytest.raises(ValueError, match="every unit of group 'Dense_0'"):
        structured.by_fraction(params, masks.init(params), 0.96, topology=topo)
    with pytest.raises(ValueError, match="every unit of group 'Dense_0'"):
        structured.by_fraction(params, masks.init(params), 0.7, topology=topo,
                               scope="global")  # 10.5 -> 11 of 15: all ten 1.0s
    with pytest.raises(ValueError, match="every unit of group 'Dense_1'"):
        structured.to_density(params, masks.init(params), 0.05, topology=topo)
    with pytest.raises(ValueError, match="unit_mask: unknown unit group 'nope'"):
        structured.expand({"nope": jnp.ones(2, bool)}, masks.init(params), topo)


def test_jit_and_vmap_match_eager():
    _module, params, topo = mlp()
    stacked = jax.tree.map(lambda *x: jnp.stack(x), params, random_params(mlp()[0], (4,), 7))
    mask = masks.init(params)
    fn = jax.jit(lambda s, m: structured.by_fraction(s, m, 0.4, topology=topo))
    batched = jax.vmap(fn, in_axes=(0, None))(stacked, mask)
    for i in range(2):
        one = jax.tree.map(lambda x, i=i: x[i], stacked)
        eager = structured.by_fraction(one, mask, 0.4, topology=topo)
        assert_tree_equal(jax.tree.map(lambda x, i=i: x[i], batched), flat(eager))


# ----------------------------------------------------------------------------------
# layers (residual blocks)


def test_removed_resmlp_block_equals_the_deleted_block():
    model = models.build("resmlp", blocks=3, width=8, hidden=6)
    params = random_params(model, (5,))
    topo = topology(model, params)
    assert [b.name for b in topo.blocks] == ["block_0", "block_1", "block_2"]
    x = jax.random.normal(jax.random.key(1), (4, 5))
    short = models.build("resmlp", blocks=2, width=8, hidden=6)
    deleted = {k: v for k, v in params.items() if k != "block_1"}
    deleted["block_1"] = deleted.pop("block_2")
    want = np.asarray(applier(short)({"params": deleted}, x)[0])
    mask = structured.remove_blocks(masks.init(params), topo, ["block_1"])
    np.testing.assert_array_equal(applier(model)({"params": masked(params, mask)}, x)[0],
                                  want)
    # pruning by score removes the lowest-scoring block; equal scores: the first
    scores = jax.tree.map(jnp.ones_like, params)
    scores = {**scores, "block_1": jax.tree.map(lambda s: s * 0.5, scores["block_1"])}
    by_score = structured.prune_blocks(scores, masks.init(params), topo, count=1)
    assert_tree_equal(by_score, flat(mask))
    tied = structured.prune_blocks(jax.tree.map(jnp.ones_like, params), masks.init(params),
                                   topo, fraction=0.5)  # round(1.5) = 2: blocks 0, 1
    assert {k: bool(v) for k, v in structured.kept_blocks(tied, topo).items()} == \
        {"block_0": False, "block_1": False, "block_2": True}
    with pytest.raises(ValueError, match="names: unknown block 'block_7'"):
        structured.remove_blocks(mask, topo, ["block_7"])
    _, mlp_params, mlp_topo = mlp()
    with pytest.raises(ValueError, match="no removable residual blocks"):
        structured.remove_blocks(masks.init(mlp_params), mlp_topo, ["block_0"])


def test_resnet_identity_block_removed_leaves_the_identity_path():
    module = models.CifarResNet(depth=8, width=4)
    variables = random_variables(module, (8, 8, 3))
    params = variables["params"]
    topo = topology(module, params)
    assert [b.name for b in topo.blocks] == ["block0_0"]
    assert {"block0_0/bn2/scale", "block0_0/bn2/bias"} <= set(topo.blocks[0].leaves)
    mask = structured.remove_blocks(masks.init(params), topo, ["block0_0"])
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))
    v = {"params": masked(params, mask), "batch_stats": variables["batch_stats"]}
    for training in (False, True):
        _, inter = applier(module, training)(v, x)
        stem = np.maximum(np.asarray(inter["bn"]["__call__"][0]), 0)
        out = np.asarray(inter["block0_0"]["__call__"][0])
        np.testing.assert_array_equal(out, stem)


# ----------------------------------------------------------------------------------
# dispatch, PaI and IMP


def test_parse_and_topology_for():
    assert structured.parse("2:4") == structured.Structure("nm", 2, 4)
    for bad in ("x", "4:2", "0:4", "Neuron"):
        with pytest.raises(ValueError, match="structure: expected 'weight', 'neuron'"):
            structured.parse(bad)
    module, params, _ = mlp()
    assert structured.topology_for("weight", module, params) is None
    with pytest.raises(ValueError, match="'channel' prunes conv channels; MLP"):
        structured.topology_for("channel", module, params)
    with pytest.raises(ValueError, match="'layer' removes residual blocks; MLP"):
        structured.topology_for("layer", module, params)
    vmod, vparams, _, vtopo = vgg()
    assert structured.topology_for("channel", vmod, vparams) == vtopo


def test_pai_sums_scores_per_unit_and_per_block():
    _, params, topo = mlp()
    mask = pai.prune_at_init("magnitude", params=params, density=0.5, scope="layerwise",
                             structure="neuron", topology=topo)
    p = flat(params)
    got = structured.units_of(mask, topo)
    for layer, size in (("Dense_0", 3), ("Dense_1", 2)):  # keep round(1.5)=2, 1
        s = np.abs(p[f"{layer}/kernel"]).sum(0) + np.abs(p[f"{layer}/bias"])
        want = _numpy_keep(s, np.ones(size, bool), 1)
        np.testing.assert_array_equal(got[layer], want)
    with pytest.raises(ValueError, match="prevent_collapse: applies to structure 'weight'"):
        pai.prune_at_init("magnitude", params=params, density=0.5, structure="neuron",
                          topology=topo, prevent_collapse=True)
    model = models.build("resmlp", blocks=3, width=8, hidden=6)
    params = random_params(model, (5,))
    topo = topology(model, params)
    mask = pai.prune_at_init("magnitude", params=params, density=0.5, structure="layer",
                             topology=topo)
    sums = [sum(np.abs(x).sum() for x in jax.tree.leaves(params[f"block_{i}"]))
            for i in range(3)]
    want = {f"block_{i}": i != int(np.argmin(sums)) for i in range(3)}  # keep round(1.5)=2
    assert {k: bool(v) for k, v in structured.kept_blocks(mask, topo).items()} == want
    # lotto pai's table: a removed block is not a collapsed layer; an emptied kernel is
    from lotto_jax.runs.pai import _collapsed

    m = flat(structured.remove_blocks(masks.init(params), topo, ["block_1"]))
    m["block_0/fc2/kernel"][:] = False
    m = unflat(params, m)
    assert "block_1/fc1/kernel" in pai.collapsed_layers(m)
    assert _collapsed(m, topo) == ["block_0/fc2/kernel"]


def test_nm_dispatch_keeps_n_of_every_m_inputs():
    rng = np.random.default_rng(3)
    params = {"a": {"kernel": jnp.asarray(rng.standard_normal((8, 3)), jnp.float32),
                    "bias": jnp.zeros(3)},
              "b": {"kernel": jnp.asarray(rng.standard_normal((4, 2)), jnp.float32)}}
    s = jax.tree.map(jnp.abs, params)
    for mask in (structured.prune_density("2:4", s, masks.init(params), 0.5),
                 structured.prune_fraction("2:4", s, masks.init(params), 0.5)):
        m, a = flat(mask), flat(s)
        assert m["a/bias"].all()
        for leaf in ("a/kernel", "b/kernel"):
            groups = np.abs(a[leaf]).reshape(-1, 4, a[leaf].shape[1])  # (groups, 4, out)
            top2 = np.argsort(-groups, axis=1, kind="stable")[:, :2, :]
            want = np.zeros(groups.shape, bool)
            np.put_along_axis(want, top2, True, axis=1)
            np.testing.assert_array_equal(m[leaf], want.reshape(a[leaf].shape), err_msg=leaf)


def test_imp_neuron_rounds_are_whole_units(tmp_path):
    import _imp_run as tiny

    from lotto_jax.runs import imp as imp_run

    # a learnable synthetic set in place of MNIST-1D (whose generation costs ~6 s)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((768, 40)).astype(np.float32)
    y = np.argmax(x @ rng.standard_normal((40, 10)), axis=1).astype(np.int32)
    split = [data.Split(x[i:j], y[i:j]) for i, j in ((0, 512), (512, 640), (640, 768))]
    dataset = data.Dataset("synthetic", *split, input_shape=(40,), num_classes=10,
                           normalization={"mean": [0.0], "std": [1.0]})
    # tests/_imp_run.py's problem (MLP 40-32-10, 30 steps of Adam); θ0 drawn by numpy
    # (models.init would compile)
    module = models.build("mlp", features=(32,))
    params0 = jax.tree.map(lambda x: x / 4, random_params(module, (40,)))
    config = train.TrainConfig(steps=tiny.STEPS, eval_every=tiny.EVAL_EVERY, batch_size=32,
                               optimizer="adam", lr=1e-2, schedule="cosine")
    trainer = train.make_trainer(train.classifier(module), config, num_train=512)
    topo = topology(module, params0)
    result = imp_run.run_imp(
        trainer, params0, {}, dataset, rounds=2, fraction=0.2, scope="layerwise",
        controls=(), data_key=jax.random.key(1), key=jax.random.key(2),
        store=str(tmp_path / "run"), progress=False,
        structure="neuron", topology=topo,
    )
    full = masks.init(params0)
    counts = [32, 26, 21]  # 32 - round(6.4), 26 - round(5.2)
    for r, rr in enumerate(result.rounds):
        units = structured.units_of(rr.mask, topo)["Dense_0"]
        assert int(units.sum()) == counts[r]
        assert_tree_equal(rr.mask, flat(structured.expand({"Dense_0": units}, full, topo)))
    # round 2 removed the kept units of round 1 with the smallest L2 norms of θT
    import orbax.checkpoint as ocp

    final = ocp.StandardCheckpointer().restore(str(tmp_path / "run/round_001/final"))
    k = np.asarray(final["params"]["Dense_0"]["kernel"])
    kept1 = np.asarray(structured.units_of(result.rounds[1].mask, topo)["Dense_0"])
    want = _numpy_keep(np.sqrt((k**2).sum(0)), kept1, 5)
    np.testing.assert_array_equal(structured.units_of(result.rounds[2].mask, topo)["Dense_0"], want)
    with pytest.raises(ValueError, match="only 'reinit' applies"):
        imp_run.run_imp(trainer, params0, {}, dataset, rounds=1, controls=("shuffle",),
                        data_key=jax.random.key(1), key=jax.random.key(2),
                        structure="neuron", topology=topo)
    # the jitted step cannot refuse to empty a layer: the loop checks the new mask
    with pytest.raises(ValueError, match=r"left \['Dense_0'\] without any unit"):
        imp_run.run_imp(trainer, params0, {}, dataset, rounds=1, fraction=0.99,
                        data_key=jax.random.key(1), key=jax.random.key(2), progress=False,
                        structure="neuron", topology=topo)


def test_imp_config_structure_flag(tmp_path, capsys):
    from lotto_jax.runs import cli, common
    from lotto_jax.runs.imp import ImpConfig
    from lotto_jax.runs.pai import PaiConfig

    assert common.config_to_dict(ImpConfig(structure="neuron"))["structure"] == "neuron"
    assert cli.main(["imp", "--structure", "x", "--out", str(tmp_path / "a")]) == 2
    assert "expected 'weight', 'neuron', 'channel', 'layer' or 'N:M' like '2:4', got " \
        "'x'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="only 'reinit' applies"):
        ImpConfig(structure="layer", controls=("random",))
    with pytest.raises(ValueError, match="controls: 'shuffle' draws an unstructured"):
        PaiConfig(structure="neuron", controls=("shuffle",))


def test_readme_example_runs(monkeypatch):
    import os
    import re

    # random weights of the right shapes in place of the compiled initialiser
    monkeypatch.setattr(models, "init", lambda m, key, shape: random_variables(m, shape))

    with open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md")) as f:
        text = f.read()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S)
                if "structured.topology_for" in b]
    ns = {"jax": jax}
    exec(block, ns)
    assert sorted(ns["units"]) == [f"block_{i}/fc1" for i in range(3)]
    assert all(int(u.sum()) == 3 for u in ns["units"].values())
    kept = structured.kept_blocks(ns["mask"], ns["topo"])
    assert {k: bool(v) for k, v in kept.items()} == {
        "block_0": True, "block_1": False, "block_2": True}
