"""Tests for lotto_jax.masks against numpy and hand-worked values.

Three kinds of params trees are used throughout: Flax linen ``variables['params']``,
the ``State`` of ``flax.nnx.split`` and plain nested dicts/lists. Sharding of
``masks.init`` is checked on a 4-device mesh in ``tests/test_sparse.py``
(``test_multi_device``), which runs in a subprocess.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from lotto_jax import masks

# ----------------------------------------------------------------------------------
# params of three kinds


def linen_params():
    model = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(3), nn.relu, nn.Dense(2)])
    return model.init(jax.random.key(0), jnp.ones((1, 5)))["params"]


class _NNXMLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(5, 4, rngs=rngs)
        self.l2 = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x)))


def nnx_split():
    return nnx.split(_NNXMLP(nnx.Rngs(0)))


def plain_params():
    rng = np.random.default_rng(0)
    return {
        "blocks": [
            {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.zeros(4)},
            {
                "w": jnp.asarray(rng.normal(size=(4, 2, 2)), jnp.bfloat16),
                "b": jnp.zeros(2, jnp.bfloat16),
            },
        ],
        "scale": jnp.ones(()),
    }


PARAM_KINDS = {
    "linen": linen_params,
    "nnx": lambda: nnx_split()[1],
    "plain": plain_params,
}


def _paths(tree):
    return [
        jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def _random_mask(params, seed, p_keep=0.5):
    """Random boolean mask on ndim >= 2 leaves, all True elsewhere (numpy rng)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: (
            jnp.asarray(rng.random(np.shape(x)) < p_keep)
            if np.ndim(x) >= 2
            else jnp.ones(np.shape(x), bool)
        ),
        params,
    )


# ----------------------------------------------------------------------------------
# init


@pytest.mark.parametrize("kind", sorted(PARAM_KINDS))
def test_init_structure_dtype_values(kind):
    params = PARAM_KINDS[kind]()
    mask = masks.init(params)
    assert jax.tree.structure(mask) == jax.tree.structure(params)
    assert type(mask) is type(params)
    for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True):
        assert m.dtype == jnp.bool_
        assert m.shape == np.shape(p)
        assert bool(np.all(np.asarray(m)))
    masks.validate(params, mask)


@pytest.mark.parametrize("kind", sorted(PARAM_KINDS))
def test_default_predicate_kernels_prunable_biases_not(kind):
    params = PARAM_KINDS[kind]()
    flags = masks.is_prunable_tree(params)
    for path, flag in jax.tree_util.tree_flatten_with_path(flags)[0]:
        leaf_ndim = np.ndim(_get(params, path))
        assert flag is (leaf_ndim >= 2), jax.tree_util.keystr(path)
    # at least one of each kind in these trees
    assert any(jax.tree.leaves(flags)) and not all(jax.tree.leaves(flags))


def _get(tree, path):
    for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if p == path:
            return x
    raise KeyError(path)


def test_linen_paths_name_kernels():
    params = linen_params()
    names = {
        masks.path_str(p): masks.default_prunable(p, x)
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    assert names == {
        "layers_0/bias": False,
        "layers_0/kernel": True,
        "layers_2/bias": False,
        "layers_2/kernel": True,
        "layers_4/bias": False,
        "layers_4/kernel": True,
    }


def test_path_str_lists_and_nnx():
    params = plain_params()
    assert [
        masks.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    ] == ["blocks/0/b", "blocks/0/w", "blocks/1/b", "blocks/1/w", "scale"]
    state = nnx_split()[1]
    strs = [
        masks.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]
    ]
    assert "l1/kernel/value" in strs and "l2/bias/value" in strs


def test_init_no_prunable_leaf_raises():
    with pytest.raises(
        ValueError, match=r"params: the prunable predicate selects no leaf"
    ):
        masks.init({"b1": jnp.zeros(3), "b2": jnp.zeros(())})
    with pytest.raises(ValueError, match="prunable"):
        masks.init(linen_params(), prunable=lambda path, leaf: False)


def test_init_all_leaves_predicate_on_biases_only():
    mask = masks.init({"b": jnp.zeros(3)}, prunable=masks.all_leaves)
    assert mask["b"].dtype == jnp.bool_ and bool(mask["b"].all())


# ----------------------------------------------------------------------------------
# nnx State end to end


def test_nnx_state_init_apply_validate_density_shuffle():
    graphdef, state = nnx_split()
    mask = masks.init(state)
    assert isinstance(mask, nnx.State)
    # prune the first row and column 1 of l1's kernel (shape (5, 4))
    k = np.ones((5, 4), bool)
    k[0, :] = False
    k[:, 1] = False
    mask = jax.tree_util.tree_map_with_path(
        lambda p, m: jnp.asarray(k) if masks.path_str(p) == "l1/kernel/value" else m,
        mask,
    )
    masks.validate(state, mask)
    assert masks.density(mask) == pytest.approx((12 + 8) / (20 + 8))
    assert masks.density(mask, prunable_only=False) == pytest.approx(
        (12 + 8 + 4 + 2) / 34
    )

    pruned = masks.apply(state, mask)
    assert isinstance(pruned, nnx.State)
    kernel = np.asarray(state["l1"]["kernel"].get_value())
    got = np.asarray(pruned["l1"]["kernel"].get_value())
    np.testing.assert_array_equal(got, np.where(k, kernel, 0.0))
    # the merged model computes with the masked kernel
    model = nnx.merge(graphdef, pruned)
    x = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    p = {
        n: {q: np.asarray(state[n][q].get_value()) for q in ("kernel", "bias")}
        for n in ("l1", "l2")
    }
    h = np.maximum(x @ (p["l1"]["kernel"] * k) + p["l1"]["bias"], 0)
    np.testing.assert_allclose(
        model(jnp.asarray(x)),
        h @ p["l2"]["kernel"] + p["l2"]["bias"],
        rtol=1e-5,
        atol=1e-6,
    )

    shuffled = masks.shuffle(mask, jax.random.key(3))
    assert isinstance(shuffled, nnx.State)
    masks.validate(state, shuffled)
    for row_a, row_b in zip(masks.summary(mask), masks.summary(shuffled), strict=True):
        assert (row_a.path, row_a.kept, row_a.total) == (
            row_b.path,
            row_b.kept,
            row_b.total,
        )

    with pytest.raises(ValueError, match=re.escape("mask['l1']['kernel']")):
        bad = jax.tree_util.tree_map_with_path(
            lambda p, m: (
                jnp.ones((4, 5), bool) if masks.path_str(p) == "l1/kernel/value" else m
            ),
            mask,
        )
        masks.validate(state, bad)


# ----------------------------------------------------------------------------------
# apply


@pytest.mark.parametrize("kind", sorted(PARAM_KINDS))
def test_apply_zeroes_exactly_pruned_entries(kind):
    params = PARAM_KINDS[kind]()
    mask = _random_mask(params, seed=1)
    out = masks.apply(params, mask)
    assert jax.tree.structure(out) == jax.tree.structure(params)
    for p, m, o in zip(
        jax.tree.leaves(params),
        jax.tree.leaves(mask),
        jax.tree.leaves(out),
        strict=True,
    ):
        assert o.dtype == p.dtype and o.shape == p.shape
        ref = np.where(np.asarray(m), np.asarray(p, np.float32), 0.0)
        np.testing.assert_array_equal(np.asarray(o, np.float32), ref)


def test_apply_dtypes_bf16_and_f32():
    params = {"a": jnp.full((2, 3), 1.5, jnp.bfloat16), "b": jnp.full((3, 2), -2.0)}
    mask = {
        "a": jnp.array([[True, False, True], [False, False, True]]),
        "b": jnp.array([[False, True], [True, True], [False, False]]),
    }
    out = masks.apply(params, mask)
    assert out["a"].dtype == jnp.bfloat16 and out["b"].dtype == jnp.float32
    np.testing.assert_array_equal(
        np.asarray(out["a"], np.float32), [[1.5, 0, 1.5], [0, 0, 1.5]]
    )
    np.testing.assert_array_equal(out["b"], [[0, -2], [-2, -2], [0, 0]])
    # pure: the input is untouched
    assert bool(jnp.all(params["a"] == 1.5))


# ----------------------------------------------------------------------------------
# density and summary


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), p_keep=st.sampled_from([0.0, 0.3, 0.7, 1.0]))
def test_density_matches_numpy(seed, p_keep):
    rng = np.random.default_rng(seed)
    mask = {
        "k1": rng.random((4, 6)) < p_keep,
        "b1": rng.random(6) < 0.5,
        "k2": rng.random((6, 2, 3)) < p_keep,
        "s": np.bool_(rng.random() < 0.5),
    }
    mask = jax.tree.map(jnp.asarray, mask)
    k_kept = int(np.sum(np.asarray(mask["k1"]))) + int(np.sum(np.asarray(mask["k2"])))
    assert masks.density(mask) == k_kept / 60
    all_kept = k_kept + int(np.sum(np.asarray(mask["b1"]))) + int(bool(mask["s"]))
    assert masks.density(mask, prunable_only=False) == all_kept / 67
    biases = masks.density(mask, prunable=lambda p, x: np.ndim(x) == 1)
    assert biases == int(np.sum(np.asarray(mask["b1"]))) / 6


def test_density_nothing_to_count_raises():
    with pytest.raises(ValueError, match="mask: no prunable leaves"):
        masks.density({"b": jnp.ones(3, bool)})


def test_summary_rows_and_table():
    mask = {
        "Dense_0": {
            "kernel": jnp.asarray(np.arange(12).reshape(3, 4) < 5),
            "bias": jnp.array([True, False, True, True]),
        },
        "Dense_1": {"kernel": jnp.zeros((4, 2), bool), "bias": jnp.ones(2, bool)},
    }
    rows = masks.summary(mask)
    got = [(r.path, r.shape, r.kept, r.total, r.prunable) for r in rows]
    assert got == [
        ("Dense_0/bias", (4,), 3, 4, False),
        ("Dense_0/kernel", (3, 4), 5, 12, True),
        ("Dense_1/bias", (2,), 2, 2, False),
        ("Dense_1/kernel", (4, 2), 0, 8, True),
    ]
    assert [r.density for r in rows] == [0.75, 5 / 12, 1.0, 0.0]
    table = str(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["layer", "shape", "kept", "total", "density"]
    body = [line.split() for line in lines]
    assert ["Dense_0/bias", "(not", "pruned)", "4", "3", "4", "75.00%"] in body
    assert ["Dense_0/kernel", "3x4", "5", "12", "41.67%"] in body
    assert ["Dense_1/kernel", "4x2", "0", "8", "0.00%"] in body
    # total over prunable rows only: 5 / 20
    assert body[-1] == ["prunable", "total", "5", "20", "25.00%"]
    assert len(lines) == 2 + 4 + 2
    # a table: every line has the same width and the numbers are right-aligned
    assert len({len(line) for line in lines}) == 1
    assert len({line.rindex("%") for line in lines if "%" in line}) == 1


def test_summary_scalar_leaf():
    rows = masks.summary({"s": jnp.array(True), "w": jnp.ones((1, 1), bool)})
    assert rows[0].shape == () and rows[0].total == 1
    assert "scalar" in str(rows)


# ----------------------------------------------------------------------------------
# validate


def test_validate_missing_and_extra_paths():
    params = linen_params()
    mask = masks.init(params)
    missing = {k: v for k, v in mask.items() if k != "layers_2"}
    with pytest.raises(ValueError, match=r"missing leaves .*\['layers_2'\]\['bias'\]"):
        masks.validate(params, missing)
    extra = {**mask, "extra": {"kernel": jnp.ones((2, 2), bool)}}
    with pytest.raises(
        ValueError, match=r"unexpected leaves .*\['extra'\]\['kernel'\]"
    ):
        masks.validate(params, extra)
    with pytest.raises(ValueError, match=r"^my_mask: tree structure"):
        masks.validate(params, missing, name="my_mask")


def test_validate_shape_mismatch_names_key_path():
    params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
    mask = {"Dense_0": {"kernel": jnp.ones((2, 3), bool), "bias": jnp.ones(2, bool)}}
    with pytest.raises(
        ValueError,
        match=re.escape(
            "mask['Dense_0']['kernel']: shape (2, 3) != param shape (3, 2)"
        ),
    ):
        masks.validate(params, mask)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int32, jnp.uint8])
def test_validate_non_boolean(dtype):
    params = {"Dense_0": {"kernel": jnp.ones((3, 2))}}
    mask = {"Dense_0": {"kernel": jnp.ones((3, 2), dtype)}}
    with pytest.raises(ValueError, match=r"mask\['Dense_0'\]\['kernel'\]: .*boolean"):
        masks.validate(params, mask)


def test_validate_accepts_numpy_bool_masks():
    masks.validate({"w": jnp.ones((2, 2))}, {"w": np.ones((2, 2), bool)})


# ----------------------------------------------------------------------------------
# intersect / union / overlap


A = {"w": jnp.array([[True, True, False, False, True]]), "b": jnp.array([True, False])}
B = {"w": jnp.array([[True, False, True, False, True]]), "b": jnp.array([False, True])}
C = {"w": jnp.array([[True, True, True, False, False]]), "b": jnp.array([True, True])}


def test_intersect_union_hand_worked():
    i = masks.intersect(A, B)
    u = masks.union(A, B)
    assert i["w"].tolist() == [[True, False, False, False, True]]
    assert u["w"].tolist() == [[True, True, True, False, True]]
    assert i["b"].tolist() == [False, False] and u["b"].tolist() == [True, True]
    i3 = masks.intersect(A, B, C)
    u3 = masks.union(A, B, C)
    assert i3["w"].tolist() == [[True, False, False, False, False]]
    assert u3["w"].tolist() == [[True, True, True, False, True]]
    assert i3["w"].dtype == jnp.bool_ and u3["b"].dtype == jnp.bool_
    # a single mask is returned as is
    assert masks.intersect(A)["w"].tolist() == A["w"].tolist()


def test_intersect_union_errors():
    with pytest.raises(ValueError, match="intersect"):
        masks.intersect()
    with pytest.raises(ValueError, match="union"):
        masks.union()
    with pytest.raises(ValueError, match=r"masks\[1\]\['w'\]"):
        masks.intersect(A, {"w": jnp.ones((1, 4), bool), "b": B["b"]})
    with pytest.raises(ValueError, match=r"masks\[2\]: tree"):
        masks.union(A, B, {"w": B["w"]})


def test_overlap_hand_worked():
    # prunable "w" only: |A∧B| = 2, |A∨B| = 4, |A| = 3; the biases must not count
    assert masks.overlap(A, B) == 2 / 4
    assert masks.overlap(A, B, metric="shared") == 2 / 3
    assert masks.overlap(B, C, metric="shared") == 2 / 3
    assert masks.overlap(A, A) == 1.0
    # all leaves counted: w: both 2, either 4; b: both 0, either 2
    assert masks.overlap(A, B, prunable=masks.all_leaves) == 2 / 6
    # disjoint and empty masks
    empty = {"w": jnp.zeros((1, 5), bool), "b": A["b"]}
    assert masks.overlap(A, empty) == 0.0
    assert masks.overlap(empty, empty) == 1.0
    assert masks.overlap(empty, A, metric="shared") == 1.0


def test_overlap_errors():
    with pytest.raises(ValueError, match="metric"):
        masks.overlap(A, B, metric="dice")
    with pytest.raises(ValueError, match=r"b\['w'\]: shape"):
        masks.overlap(A, {"w": jnp.ones((5, 1), bool), "b": B["b"]})


# ----------------------------------------------------------------------------------
# shuffle


def _shuffle_mask():
    rng = np.random.default_rng(0)
    return {
        "big": jnp.asarray(rng.random((16, 16)) < 0.4),
        "conv": jnp.asarray(rng.random((3, 3, 2, 4)) < 0.2),
        "bias": jnp.asarray([True, False, True, False, False]),
    }


def _counts(mask):
    return {k: int(np.sum(np.asarray(v))) for k, v in mask.items()}


def test_shuffle_keeps_counts_leaves_unprunable_and_differs():
    mask = _shuffle_mask()
    out = masks.shuffle(mask, jax.random.key(0))
    assert _counts(out) == _counts(mask)
    assert all(
        out[k].dtype == jnp.bool_ and out[k].shape == mask[k].shape for k in mask
    )
    np.testing.assert_array_equal(out["bias"], mask["bias"])
    assert not np.array_equal(np.asarray(out["big"]), np.asarray(mask["big"]))


def test_shuffle_deterministic_per_key():
    mask = _shuffle_mask()
    a = masks.shuffle(mask, jax.random.key(7))
    b = masks.shuffle(mask, jax.random.key(7))
    c = masks.shuffle(mask, jax.random.key(8))
    for k in mask:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(np.asarray(a["big"]), np.asarray(c["big"]))
    # raw uint32 keys work too
    d = masks.shuffle(mask, jax.random.PRNGKey(7))
    assert _counts(d) == _counts(mask)


def test_shuffle_jit_and_vmap_over_keys():
    mask = _shuffle_mask()
    key = jax.random.key(5)
    eager = masks.shuffle(mask, key)
    jitted = jax.jit(masks.shuffle)(mask, key)
    for k in mask:
        np.testing.assert_array_equal(eager[k], jitted[k])

    keys = jax.random.split(jax.random.key(1), 4)
    batched = jax.jit(jax.vmap(masks.shuffle, in_axes=(None, 0)))(mask, keys)
    for i in range(4):
        single = jax.jit(masks.shuffle)(mask, keys[i])
        for k in mask:
            np.testing.assert_array_equal(batched[k][i], single[k])
    np.testing.assert_array_equal(
        batched["bias"], np.broadcast_to(mask["bias"], (4, 5))
    )


def test_shuffle_is_uniform_over_positions():
    # 4 of 16 kept: each position kept with probability 1/4 over many keys
    mask = {"w": jnp.asarray(np.arange(16).reshape(4, 4) < 4)}
    keys = jax.random.split(jax.random.key(0), 800)
    out = jax.jit(jax.vmap(masks.shuffle, in_axes=(None, 0)))(mask, keys)["w"]
    assert bool(jnp.all(out.sum(axis=(1, 2)) == 4))
    freq = np.asarray(out.mean(axis=0))
    # std of each frequency is sqrt(0.25 * 0.75 / 800) ~ 0.015; 6 sigma
    np.testing.assert_allclose(freq, 0.25, atol=0.09)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), key=st.integers(0, 2**31 - 1))
def test_shuffle_counts_property(seed, key):
    rng = np.random.default_rng(seed)
    mask = {
        "a": jnp.asarray(rng.random((6, 5)) < rng.random()),
        "b": jnp.asarray(rng.random((2, 3, 4)) < rng.random()),
        "c": jnp.asarray(rng.random(7) < 0.5),
    }
    out = masks.shuffle(mask, jax.random.key(key))
    assert _counts(out) == _counts(mask)
    np.testing.assert_array_equal(out["c"], mask["c"])
