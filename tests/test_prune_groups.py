"""Pruning groups: pooled layers against a numpy reference.

Independent truth: a numpy implementation of the counting rule written from the
docstring (round half up with exact rational arithmetic, lowest scores first, ties by
position in tree-flatten order, pruned weights never return), applied to the pooled
vector of each group.
"""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lotto_jax import imp, masks, prune

LAYER_SHAPES = {"Dense_0": ((6, 5), (5,)), "Dense_1": ((5, 4), (4,)), "output": ((4, 3), (3,))}


def _tree(rng, *, ints=False, big_bias=False):
    params, mask = {}, {}
    for layer, (k, b) in LAYER_SHAPES.items():
        draw = (lambda s: rng.integers(-3, 4, s).astype(np.float32)) if ints else (
            lambda s: rng.standard_normal(s).astype(np.float32))
        kernel, bias = draw(k), draw(b)
        if big_bias and layer == "Dense_1":  # larger than every weight of the layer
            bias = np.abs(bias) + np.abs(kernel).max() + 1
        params[layer] = {"bias": jnp.asarray(bias), "kernel": jnp.asarray(kernel)}
        mask[layer] = {"bias": jnp.asarray(rng.random(b) < 0.9),
                       "kernel": jnp.asarray(rng.random(k) < 0.8)}
    return params, mask


def _round_half_up(frac, n):
    return int(Fraction(str(frac)) * n + Fraction(1, 2))


def _np_keep(scores, kept, n_keep):
    """Keeps the n_keep best kept entries; pruned ones sort first, then by score, then
    by position (a stable sort), the lowest ranks are removed."""
    order = np.lexsort((np.arange(scores.size), scores, kept.astype(int)))
    out = np.zeros(scores.size, bool)
    out[order[scores.size - n_keep:]] = True
    return out & kept


def _np_prune(scores, mask, groups_of, rule):
    """``groups_of``: group -> list of (layer, leaf); ``rule(group, kept, size) ->
    n_keep``."""
    out = {layer: dict(v) for layer, v in mask.items()}
    for g, members in groups_of.items():
        s = np.concatenate([np.abs(np.asarray(scores[a][b])).ravel() for a, b in members])
        k = np.concatenate([np.asarray(mask[a][b]).ravel() for a, b in members])
        new = _np_keep(s, k, rule(g, int(k.sum()), k.size))
        offset = 0
        for a, b in members:
            shape = np.shape(mask[a][b])
            out[a][b] = new[offset: offset + int(np.prod(shape))].reshape(shape)
            offset += int(np.prod(shape))
    return out


def _layer_groups():
    return {layer: [(layer, "bias"), (layer, "kernel")] for layer in LAYER_SHAPES}


def _assert_equal(got, want):
    for layer in want:
        for leaf in want[layer]:
            np.testing.assert_array_equal(np.asarray(got[layer][leaf]), want[layer][leaf],
                                          err_msg=f"{layer}/{leaf}")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fraction", [0.2, 0.35, 0.5])
def test_by_fraction_layer_groups_match_numpy(seed, fraction):
    rng = np.random.default_rng(seed)
    params, mask = _tree(rng, ints=seed % 2 == 1, big_bias=seed == 2)  # ties when ints
    got = prune.by_fraction(jax.tree.map(jnp.abs, params), mask, fraction,
                            scope="layerwise", groups="layer", prunable=masks.all_leaves)
    want = _np_prune(params, mask, _layer_groups(),
                     lambda g, kept, size: kept - _round_half_up(fraction, kept))
    _assert_equal(got, want)


def test_big_bias_survives_every_round_when_pooled_but_not_per_leaf():
    params, mask = _tree(np.random.default_rng(7), big_bias=True)
    mask = jax.tree.map(jnp.ones_like, mask)
    s = jax.tree.map(jnp.abs, params)
    pooled = leaf = mask
    for _ in range(6):  # 0.8^6: 26 % of each group kept
        pooled = prune.by_fraction(s, pooled, 0.2, scope="layerwise", groups="layer",
                                   prunable=masks.all_leaves)
        leaf = prune.by_fraction(s, leaf, 0.2, scope="layerwise", groups="leaf",
                                 prunable=masks.all_leaves)
    assert bool(pooled["Dense_1"]["bias"].all())  # 4 biases outrank all 20 weights
    assert int(pooled["Dense_1"]["kernel"].sum()) + 4 == 24 - 18  # 24->19->15->12->10->8->6
    assert int(leaf["Dense_1"]["bias"].sum()) == 2  # per leaf: see the next test


def test_per_leaf_bias_counts_by_hand():
    # 4 biases, 20 % per round, round half up: 4 - round(0.8)=3, 3 - round(0.6)=2,
    # 2 - round(0.4)=2, ... stays at 2.
    params, mask = _tree(np.random.default_rng(7), big_bias=True)
    leaf = jax.tree.map(jnp.ones_like, mask)
    s = jax.tree.map(jnp.abs, params)
    counts = []
    for _ in range(4):
        leaf = prune.by_fraction(s, leaf, 0.2, scope="layerwise", groups="leaf",
                                 prunable=masks.all_leaves)
        counts.append(int(leaf["Dense_1"]["bias"].sum()))
    assert counts == [3, 2, 2, 2]


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
@pytest.mark.parametrize("density", [0.5, 0.13, 0.02])
def test_to_density_layer_groups_match_numpy(distribution, density):
    params, mask = _tree(np.random.default_rng(3), big_bias=True)
    mask = jax.tree.map(jnp.ones_like, mask)
    got = prune.to_density(jax.tree.map(jnp.abs, params), mask, density, scope="layerwise",
                           distribution=distribution, groups="layer",
                           prunable=masks.all_leaves)
    if distribution == "uniform":
        dens = dict.fromkeys(LAYER_SHAPES, density)
    else:  # ERK by hand: raw = (n_in + n_out) / (n_in n_out) of the kernel; budget
        # over kernel + bias; dense layers re-solved (the shapes here saturate none
        # at 0.5, some at higher densities)
        sizes = {g: np.prod(k) + np.prod(b) for g, (k, b) in LAYER_SHAPES.items()}
        raw = {g: sum(k) / np.prod(k) for g, (k, _) in LAYER_SHAPES.items()}
        dense = set()
        while True:
            eps = (density * sum(sizes.values()) - sum(sizes[g] for g in dense)) / sum(
                raw[g] * sizes[g] for g in sizes if g not in dense)
            over = [g for g in sizes if g not in dense and eps * raw[g] > 1]
            if not over:
                break
            dense.add(max(over, key=raw.get))
        dens = {g: 1.0 if g in dense else eps * raw[g] for g in sizes}
    for g, d in dens.items():
        kept = sum(int(got[g][leaf].sum()) for leaf in ("bias", "kernel"))
        size = sum(int(np.prod(s)) for s in LAYER_SHAPES[g])
        assert kept == min(size, int(np.floor(d * size + 0.5))), g
    want = _np_prune(params, mask, _layer_groups(),
                     lambda g, kept, size: min(kept, int(np.floor(dens[g] * size + 0.5))))
    _assert_equal(got, want)


def test_function_groups_and_layer_fractions_match_group_names():
    params, mask = _tree(np.random.default_rng(5))

    def hidden_vs_output(path):
        return "output" if masks.path_str(path).startswith("output") else "hidden"

    got = prune.by_fraction(jax.tree.map(jnp.abs, params), mask, 0.5, scope="layerwise",
                            groups=hidden_vs_output, layer_fractions={"^out": 0.1},
                            prunable=masks.all_leaves)
    groups = {"hidden": [(a, b) for a in ("Dense_0", "Dense_1") for b in ("bias", "kernel")],
              "output": [("output", "bias"), ("output", "kernel")]}
    frac = {"hidden": 0.5, "output": 0.1}
    for g, members in groups.items():
        want = _np_prune(params, mask, {g: members},
                         lambda g, kept, size: kept - _round_half_up(frac[g], kept))
        for a, b in members:
            np.testing.assert_array_equal(np.asarray(got[a][b]), want[a][b])


def test_global_scope_ignores_groups_except_for_names():
    params, mask = _tree(np.random.default_rng(9))
    s = jax.tree.map(jnp.abs, params)
    a = prune.by_fraction(s, mask, 0.3, scope="global", groups="layer", prunable=masks.all_leaves)
    b = prune.by_fraction(s, mask, 0.3, scope="global", groups="leaf", prunable=masks.all_leaves)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool((x == y).all()), a, b))


def test_group_names_linen_and_nnx_paths():
    from flax import nnx

    from lotto_jax import models

    state = nnx.split(models.LeNet300NNX(rngs=nnx.Rngs(0)))[1]
    names = masks.group_leaves(state, "layer", prunable=masks.all_leaves)
    assert names == {
        "Dense_0": ["Dense_0/bias/value", "Dense_0/kernel/value"],
        "Dense_1": ["Dense_1/bias/value", "Dense_1/kernel/value"],
        "output": ["output/bias/value", "output/kernel/value"],
    }


def test_random_and_shuffle_controls_keep_pooled_group_counts():
    _, mask = _tree(np.random.default_rng(11))
    for fn in (lambda m, k: imp.random_mask(m, k, prunable=masks.all_leaves, groups="layer"),
               lambda m, k: masks.shuffle(m, k, prunable=masks.all_leaves, groups="layer")):
        biases_moved = False
        for i in range(20):
            new = fn(mask, jax.random.key(i))
            for g in LAYER_SHAPES:
                assert int(new[g]["bias"].sum() + new[g]["kernel"].sum()) == int(
                    mask[g]["bias"].sum() + mask[g]["kernel"].sum())
            biases_moved |= any(int(new[g]["bias"].sum()) != int(mask[g]["bias"].sum())
                                for g in LAYER_SHAPES)
        assert biases_moved  # pooled: the count moves between kernel and bias


def test_bad_groups_are_named():
    params, mask = _tree(np.random.default_rng(0))
    s = jax.tree.map(jnp.abs, params)
    with pytest.raises(ValueError, match=r"groups: expected 'leaf', 'layer' or a function"):
        prune.by_fraction(s, mask, 0.2, scope="layerwise", groups="neuron")
    with pytest.raises(ValueError, match=r"groups: .*returned None for leaf 'Dense_0/kernel'"):
        prune.by_fraction(s, mask, 0.2, scope="layerwise", groups=lambda p: None)
    with pytest.raises(ValueError, match=r"pattern '\^output/' matches no pruning group"):
        prune.by_fraction(s, mask, 0.2, scope="layerwise", groups="layer",
                          layer_fractions={"^output/": 0.1})
