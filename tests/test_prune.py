"""Tests for lotto_jax.prune against numpy references written here.

The references flatten the prunable leaves in tree order (row-major inside a leaf),
sort the still-kept weights with a *stable* argsort by score (so ties go by
position), and remove the first ``floor(fraction * n + 0.5)`` of them, computed with
``fractions.Fraction`` on the fraction as written in decimal: 0.35 of 90 is 31.5 and
rounds to 32 (float64 would say 31.499999999999996 -> 31; the library promises the
decimal answer, see ``prune._removed_count``).
"""

import math
import re
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lotto_jax import masks, prune

# ----------------------------------------------------------------------------------
# numpy references


def np_remove_lowest(scores, kept, n_remove):
    """Flat numpy: removes the ``n_remove`` lowest-scoring kept weights (stable)."""
    scores = np.asarray(scores, np.float64)
    kept = np.asarray(kept, bool).copy()
    cand = np.flatnonzero(kept)
    order = cand[np.argsort(scores[cand], kind="stable")]
    kept[order[:n_remove]] = False
    return kept


def round_half_up(fraction, n):
    """floor(fraction * n + 1/2), exactly, for ``fraction`` as written in decimal."""
    return math.floor(Fraction(str(float(fraction))) * int(n) + Fraction(1, 2))


def _groups(names, scope, layer_fractions=None, fraction=None):
    """[(member names, fraction)] in the order the library forms groups."""
    per_layer = {}
    for pattern, frac in (layer_fractions or {}).items():
        for name in names:
            if re.search(pattern, name) and name not in per_layer:
                per_layer[name] = frac
    rest = [n for n in names if n not in per_layer]
    groups = [([n], f) for n, f in per_layer.items()]
    if rest:
        groups += (
            [(rest, fraction)] if scope == "global" else [([n], fraction) for n in rest]
        )
    return groups


def np_by_fraction(scores, mask, fraction, scope="global", layer_fractions=None):
    """numpy by_fraction on flat dicts ``{name: array}`` of prunable leaves only."""
    names = list(scores)  # insertion order == tree order in the tests below
    out = {n: np.asarray(mask[n], bool).copy() for n in names}
    for members, frac in _groups(names, scope, layer_fractions, fraction):
        s = np.concatenate(
            [np.ravel(np.asarray(scores[n], np.float64)) for n in members]
        )
        k = np.concatenate([np.ravel(out[n]) for n in members])
        new = np_remove_lowest(s, k, round_half_up(frac, k.sum()))
        offset = 0
        for n in members:
            size = out[n].size
            out[n] = new[offset : offset + size].reshape(out[n].shape)
            offset += size
    return out


def np_to_density(scores, mask, targets):
    """``targets``: [(member names, n_keep target)]; keeps min(kept, target) best."""
    out = {n: np.asarray(mask[n], bool).copy() for n in scores}
    for members, target in targets:
        s = np.concatenate(
            [np.ravel(np.asarray(scores[n], np.float64)) for n in members]
        )
        k = np.concatenate([np.ravel(out[n]) for n in members])
        new = np_remove_lowest(s, k, max(int(k.sum()) - target, 0))
        offset = 0
        for n in members:
            out[n] = new[offset : offset + out[n].size].reshape(out[n].shape)
            offset += out[n].size
    return out


# ----------------------------------------------------------------------------------
# tree helpers: flat names "a", "b", "c" are kernels; "bias" is not prunable

# leaf sizes 20, 15, 12 in every layout, so eager ops compile once per size
SHAPES = [
    {"a": (4, 5), "b": (5, 3), "c": (2, 2, 3)},
    {"a": (1, 20), "b": (15, 1), "c": (3, 1, 4)},
]


def _tree(flat, bias):
    return {**{k: jnp.asarray(v) for k, v in flat.items()}, "bias": jnp.asarray(bias)}


def _flat_np(tree, names):
    return {n: np.asarray(tree[n]) for n in names}


@st.composite
def problems(draw):
    shapes = draw(st.sampled_from(SHAPES))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["ties", "normal", "int"]))
    p_keep = draw(st.sampled_from([1.0, 0.8, 0.4]))
    rng = np.random.default_rng(seed)
    scores, mask = {}, {}
    for name, shape in shapes.items():
        if kind == "ties":  # integer-valued floats: lots of ties
            s = rng.integers(0, 3, shape).astype(np.float32)
        elif kind == "int":
            s = rng.integers(-2, 2, shape).astype(np.int32)
        else:
            s = rng.normal(size=shape).astype(np.float32)
        scores[name] = s
        mask[name] = rng.random(shape) < p_keep
    # pruned weights get wild scores: they must never come back
    for name in scores:
        if scores[name].dtype == np.float32:
            scores[name] = np.where(mask[name], scores[name], np.float32(1e30))
    return scores, mask


# fractions: dyadic ones are exact in float32 and float64 (true halves happen, so
# "round half up" is exercised); arbitrary floats are filtered so that fraction * n
# is not within 1e-9 of a half-integer, where float64 itself is ambiguous
fractions = st.one_of(
    st.integers(0, 63).map(lambda k: k / 64),
    st.floats(0.0, 0.999, allow_nan=False, allow_infinity=False),
)


def _group_sizes(mask, scope):
    kept = {n: int(np.sum(m)) for n, m in mask.items()}
    return [sum(kept.values())] if scope == "global" else list(kept.values())


def _unambiguous(fraction, sizes):
    return all(
        abs((fraction * n) % 1.0 - 0.5) > 1e-9 or fraction * 64 == int(fraction * 64)
        for n in sizes
    )


# ----------------------------------------------------------------------------------
# by_fraction: properties against numpy


@settings(max_examples=40, deadline=None)
@given(
    problem=problems(),
    fraction=fractions,
    scope=st.sampled_from(["global", "layerwise"]),
)
def test_by_fraction_matches_numpy(problem, fraction, scope):
    scores, mask = problem
    assume(_unambiguous(fraction, _group_sizes(mask, scope)))
    bias = np.array([True, False, True])
    got = prune.by_fraction(
        _tree(scores, np.zeros(3, np.float32)), _tree(mask, bias), fraction, scope=scope
    )
    ref = np_by_fraction(scores, mask, fraction, scope=scope)
    for n in scores:
        assert got[n].dtype == jnp.bool_
        np.testing.assert_array_equal(np.asarray(got[n]), ref[n], err_msg=n)
        # subset of the old mask: never revives
        assert not np.any(np.asarray(got[n]) & ~mask[n])
    np.testing.assert_array_equal(got["bias"], bias)  # unprunable: untouched
    # exact removed count per group
    names = list(scores)
    groups = [names] if scope == "global" else [[n] for n in names]
    for members in groups:
        before = sum(int(mask[n].sum()) for n in members)
        after = sum(int(np.asarray(got[n]).sum()) for n in members)
        assert before - after == round_half_up(fraction, before)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    rounds=st.integers(1, 6),
    fraction=st.sampled_from([0.2, 0.1, 0.5, 0.3]),
)
def test_by_fraction_rounds_density_arithmetic(seed, rounds, fraction):
    rng = np.random.default_rng(seed)
    shapes = {"a": (10, 8), "b": (8, 6), "c": (6, 4)}  # 152 weights
    mask = {n: jnp.ones(s, bool) for n, s in shapes.items()}
    total = 152
    kept = total
    for r in range(rounds):
        scores = {
            n: jnp.asarray(rng.normal(size=s), jnp.float32) for n, s in shapes.items()
        }
        new = prune.by_fraction(scores, mask, fraction)
        for n in shapes:  # new mask ⊆ old mask
            assert not bool(jnp.any(new[n] & ~mask[n]))
        kept = kept - round_half_up(fraction, kept)
        assert sum(int(new[n].sum()) for n in shapes) == kept, r
        mask = new
    d = masks.density(mask)
    assert d == kept / total
    # |kept_n - N (1-p)^n| <= 0.5 * sum_k (1-p)^k  (one rounding per round)
    bound = 0.5 * sum((1 - fraction) ** k for k in range(rounds)) / total
    assert abs(d - (1 - fraction) ** rounds) <= bound + 1e-12


_jit_by_fraction = jax.jit(
    prune.by_fraction, static_argnums=(2,), static_argnames=("scope",)
)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    fraction=st.sampled_from([0.2, 0.35]),
    scope=st.sampled_from(["global", "layerwise"]),
    ties=st.booleans(),
)
def test_by_fraction_identical_under_jit(seed, fraction, scope, ties):
    rng = np.random.default_rng(seed)
    shapes = {"a": (9, 10), "b": (10, 4)}
    scores = {
        n: (rng.integers(0, 3, s) if ties else rng.normal(size=s)).astype(np.float32)
        for n, s in shapes.items()
    }
    mask = {n: jnp.asarray(rng.random(s) < 0.7) for n, s in shapes.items()}
    eager = prune.by_fraction(scores, mask, fraction, scope=scope)
    jitted = _jit_by_fraction(scores, mask, fraction, scope=scope)
    for n in shapes:
        np.testing.assert_array_equal(eager[n], jitted[n])


def test_by_fraction_with_concrete_scores_and_a_traced_fraction():
    """Scores and mask closed over (concrete), the fraction traced: the finite check
    runs in numpy (it used to stage jnp ops and fail with a TracerBoolConversionError)
    and the masks equal the eager ones; a NaN on a kept weight is still refused."""
    rng = np.random.default_rng(7)
    scores = {"a": rng.normal(size=(6, 5)), "b": rng.normal(size=(5, 3))}
    mask = masks.init(scores)
    fn = jax.jit(lambda f: prune.by_fraction(scores, mask, f, scope="global"))
    for f in (0.1, 0.5, 0.9):
        got, want = fn(jnp.float32(f)), prune.by_fraction(scores, mask, f, scope="global")
        for n in scores:
            np.testing.assert_array_equal(got[n], want[n])
    bad = {**scores, "a": np.where(np.eye(6, 5, dtype=bool), np.nan, scores["a"])}
    with pytest.raises(ValueError, match=r"scores\['a'\]: 5 kept weights have NaN"):
        jax.jit(lambda f: prune.by_fraction(bad, mask, f))(jnp.float32(0.5))


def test_by_fraction_under_vmap_over_replicates():
    rng = np.random.default_rng(0)
    scores = {"a": jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)}
    mask = {"a": jnp.asarray(rng.random((3, 4, 5)) < 0.8)}
    out = jax.vmap(lambda s, m: prune.by_fraction(s, m, 0.25))(scores, mask)
    for i in range(3):
        single = prune.by_fraction({"a": scores["a"][i]}, {"a": mask["a"][i]}, 0.25)
        np.testing.assert_array_equal(out["a"][i], single["a"])


def test_by_fraction_hand_worked_ties_by_position():
    # 6 kept weights all tied: 0.5 * 6 = 3 removed, the first three in row-major order
    scores = {"w": jnp.ones((2, 4))}
    mask = {"w": jnp.array([[True, False, True, True], [True, True, False, True]])}
    out = prune.by_fraction(scores, mask, 0.5)
    assert out["w"].tolist() == [
        [False, False, False, False],
        [True, True, False, True],
    ]
    # partial ties: 1.0 goes first, then 2.0, then the 3.0s in row-major order
    scores = {"w": jnp.array([[3.0, 1.0, 2.0, 3.0], [1.0, 5.0, 0.0, 3.0]])}
    out = prune.by_fraction(scores, mask, 0.75)  # 0.75 * 6 = 4.5 -> 5 removed
    assert out["w"].tolist() == [
        [False, False, False, False],
        [False, True, False, False],
    ]
    # global ties across leaves: tree order ("a" before "b")
    scores = {"a": jnp.zeros((1, 2)), "b": jnp.zeros((1, 2))}
    mask = {"a": jnp.ones((1, 2), bool), "b": jnp.ones((1, 2), bool)}
    out = prune.by_fraction(scores, mask, 0.75)  # round(3.0) = 3 removed
    assert out["a"].tolist() == [[False, False]] and out["b"].tolist() == [
        [False, True]
    ]


def test_by_fraction_round_half_up_hand_worked():
    s = {"w": jnp.arange(10.0).reshape(2, 5)}
    ones = {"w": jnp.ones((2, 5), bool)}
    # 0.25 * 10 = 2.5 -> 3 removed; 0.05 * 10 = 0.5 -> 1; 0.04 * 10 = 0.4 -> 0
    assert int(prune.by_fraction(s, ones, 0.25)["w"].sum()) == 7
    assert int(prune.by_fraction(s, ones, 0.05)["w"].sum()) == 9
    assert int(prune.by_fraction(s, ones, 0.04)["w"].sum()) == 10
    assert int(prune.by_fraction(s, ones, 0.0)["w"].sum()) == 10


@pytest.mark.parametrize(
    ("fraction", "n", "removed"),
    [
        (0.35, 90, 32),  # 31.5; float64 says 31.499999999999996 -> 31
        (0.065, 900, 59),  # 58.5; float32 said 58
        (0.009, 1500, 14),  # 13.5; float32 and float64 said 13
        (0.3, 25, 8),  # 7.5
        (0.2, 1001, 200),  # 200.2
    ],
)
def test_by_fraction_count_of_decimal_fraction(fraction, n, removed):
    # one leaf of 1500 weights, the first n kept (one shape: compiled once)
    s = {"w": jnp.arange(1500.0).reshape(1, 1500)}
    mask = {"w": jnp.arange(1500).reshape(1, 1500) < n}
    out = prune.by_fraction(s, mask, fraction)
    assert n - int(out["w"].sum()) == removed
    jitted = _jit_by_fraction(s, mask, fraction)
    np.testing.assert_array_equal(out["w"], jitted["w"])
    # to_density counts the same way: keep round(density * total)
    s = {"w": jnp.arange(float(n)).reshape(1, n)}
    kept = prune.to_density(s, {"w": jnp.ones((1, n), bool)}, fraction)
    assert int(kept["w"].sum()) == removed


def test_removed_count_exact_for_large_groups():
    # the count of by_fraction on groups far too big to build in a test: float32
    # was off by one from ~10M weights (0.2 of 11,259,422 gave 2,251,885)
    n = np.array([11_259_422, 2**24 + 1, 2**31 - 1, 123_456_789, 3, 0], np.int32)
    for frac in (0.2, 0.1, 0.35, 0.999, 0.123456, 0.0):
        got = np.asarray(jax.jit(lambda k, f=frac: prune._removed_count(f, k))(n))
        assert got.tolist() == [round_half_up(frac, k) for k in n], frac
    assert int(prune._removed_count(0.2, jnp.int32(11_259_422))) == 2_251_884


def test_pruned_weights_never_win_and_nan_on_pruned_is_fine():
    scores = {"w": jnp.array([[1e30, np.nan, 0.1, 0.2, 0.3, np.inf, -np.inf, 0.4]])}
    mask = {"w": jnp.array([[False, False, True, True, True, False, False, True]])}
    out = prune.by_fraction(scores, mask, 0.5)  # 4 kept -> 2 removed: 0.1, 0.2
    assert out["w"].tolist() == [[False] * 4 + [True, False, False, True]]
    out = prune.to_density(scores, mask, 0.125)  # round(0.125 * 8) = 1 kept: 0.4
    assert out["w"].tolist() == [[False] * 7 + [True]]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_on_kept_weights_raise(bad):
    scores = {"Dense_0": {"kernel": jnp.array([[0.1, bad], [0.3, 0.4]])}}
    mask = {"Dense_0": {"kernel": jnp.ones((2, 2), bool)}}
    with pytest.raises(
        ValueError, match=re.escape("scores['Dense_0']['kernel']: 1 kept")
    ):
        prune.by_fraction(scores, mask, 0.5)
    with pytest.raises(ValueError, match=re.escape("scores['Dense_0']['kernel']")):
        prune.to_density(scores, mask, 0.5)


def test_unprunable_nan_scores_ignored_and_bf16_scores():
    scores = {
        "k": jnp.array([[3.0, 1.0], [2.0, 4.0]], jnp.bfloat16),
        "b": jnp.array([np.nan, 1.0]),
    }
    mask = {"k": jnp.ones((2, 2), bool), "b": jnp.array([True, False])}
    out = prune.by_fraction(scores, mask, 0.5)
    assert out["k"].tolist() == [[True, False], [False, True]]
    assert out["b"].tolist() == [True, False]


# ----------------------------------------------------------------------------------
# layer_fractions: Frankle & Carbin's output layer at half rate


def _lenet_like():
    rng = np.random.default_rng(3)
    shapes = {"Dense_0": (20, 10), "Dense_1": (10, 10), "output": (10, 3)}
    scores = {
        n: {
            "kernel": jnp.asarray(rng.normal(size=s), jnp.float32),
            "bias": jnp.zeros(s[1]),
        }
        for n, s in shapes.items()
    }
    return scores, masks.init(scores)


def test_layer_fractions_output_half_rate_hand_counts():
    scores, mask = _lenet_like()
    lf = {"output": 0.1}
    m1 = prune.by_fraction(scores, mask, 0.2, layer_fractions=lf)
    kept = {n: int(m1[n]["kernel"].sum()) for n in m1}
    # hidden (global over 300): 300 - round(60) = 240; output: 30 - round(3.0) = 27
    assert kept["Dense_0"] + kept["Dense_1"] == 240 and kept["output"] == 27
    # the 3 removed output weights are its 3 lowest scores
    out_s = np.asarray(scores["output"]["kernel"]).ravel()
    removed = np.flatnonzero(~np.asarray(m1["output"]["kernel"]).ravel())
    assert sorted(removed) == sorted(np.argsort(out_s)[:3])
    m2 = prune.by_fraction(scores, m1, 0.2, layer_fractions=lf)
    kept = {n: int(m2[n]["kernel"].sum()) for n in m2}
    # hidden: 240 - 48 = 192; output: 27 - round(2.7) = 24
    assert kept["Dense_0"] + kept["Dense_1"] == 192 and kept["output"] == 24
    for n in m2:
        assert bool(m2[n]["bias"].all())
    # layerwise: every hidden layer at 0.2 on its own
    ml = prune.by_fraction(scores, mask, 0.2, scope="layerwise", layer_fractions=lf)
    assert [int(ml[n]["kernel"].sum()) for n in ("Dense_0", "Dense_1", "output")] == [
        160,
        80,
        27,
    ]


def test_layer_fractions_against_numpy_and_first_pattern_wins():
    scores, mask = _lenet_like()
    lf = {"output": 0.1, "Dense_1|output": 0.5}  # output matches both: 0.1 wins
    got = prune.by_fraction(scores, mask, 0.2, layer_fractions=lf)
    flat_s = {n: np.asarray(scores[n]["kernel"]) for n in scores}
    flat_m = {n: np.asarray(mask[n]["kernel"]) for n in scores}
    ref = np_by_fraction(
        flat_s, flat_m, 0.2, layer_fractions={"output": 0.1, "Dense_1": 0.5}
    )
    for n in scores:
        np.testing.assert_array_equal(got[n]["kernel"], ref[n], err_msg=n)
    assert int(got["Dense_1"]["kernel"].sum()) == 50
    assert int(got["output"]["kernel"].sum()) == 27
    assert int(got["Dense_0"]["kernel"].sum()) == 160


def test_layer_fractions_pattern_matching_nothing_raises():
    scores, mask = _lenet_like()
    with pytest.raises(ValueError, match=r"layer_fractions: pattern 'head' matches no"):
        prune.by_fraction(scores, mask, 0.2, layer_fractions={"head": 0.1})
    # biases are not prunable, so a bias-only pattern matches nothing prunable either
    with pytest.raises(ValueError, match=r"pattern 'output/bias'"):
        prune.by_fraction(scores, mask, 0.2, layer_fractions={"output/bias": 0.1})
    with pytest.raises(ValueError, match=r"layer_fractions\['output'\]"):
        prune.by_fraction(scores, mask, 0.2, layer_fractions={"output": 1.0})


# ----------------------------------------------------------------------------------
# to_density


@settings(max_examples=40, deadline=None)
@given(
    problem=problems(),
    density=st.sampled_from([1.0, 0.75, 0.5, 0.3, 0.1, 0.02]),
    scope=st.sampled_from(["global", "layerwise"]),
)
def test_to_density_uniform_matches_numpy(problem, density, scope):
    scores, mask = problem
    names = list(scores)
    if scope == "global":
        total = sum(mask[n].size for n in names)
        targets = [(names, round_half_up(density, total))]
    else:
        targets = [([n], round_half_up(density, mask[n].size)) for n in names]
    got = prune.to_density(
        scores, {k: jnp.asarray(v) for k, v in mask.items()}, density, scope=scope
    )
    ref = np_to_density(scores, mask, targets)
    for n in names:
        np.testing.assert_array_equal(np.asarray(got[n]), ref[n], err_msg=n)
        assert not np.any(np.asarray(got[n]) & ~mask[n])


def test_to_density_hand_worked():
    scores = {"a": jnp.array([[4.0, 3.0, 0.5]]), "b": jnp.array([[2.0, 1.0, 5.0]])}
    mask = {"a": jnp.ones((1, 3), bool), "b": jnp.array([[True, True, False]])}
    # global: round(0.5 * 6) = 3 kept of the 5 kept: 4, 3, 2
    g = prune.to_density(scores, mask, 0.5)
    assert g["a"].tolist() == [[True, True, False]] and g["b"].tolist() == [
        [True, False, False]
    ]
    # layerwise: round(0.5 * 3) = 2 per layer; "b" keeps only 2 already
    lw = prune.to_density(scores, mask, 0.5, scope="layerwise")
    assert (
        lw["a"].tolist() == [[True, True, False]]
        and lw["b"].tolist() == mask["b"].tolist()
    )
    full = prune.to_density(scores, mask, 1.0)
    assert full["b"].tolist() == mask["b"].tolist()


# ----------------------------------------------------------------------------------
# ERK


def test_erk_densities_docstring_case_by_hand():
    d = prune.erk_densities({"a": (100, 100), "b": (100, 10)}, 0.5)
    # b saturates (eps * 0.11 > 1); a takes the rest: (5500 - 1000) / 10000
    assert d["b"] == 1.0
    assert d["a"] == pytest.approx(0.45, rel=1e-12)


def test_erk_densities_resolve_saturates_a_second_layer():
    # raw ratios: a 200/10000 = 0.02, b 20/100 = 0.2, c 65/1000 = 0.065; N = 11100
    # pass 1: eps = 4218 / 285 = 14.8 -> b 2.96 > 1 (c 0.962 is fine)
    # pass 2: b dense, eps = 4118 / 265 = 15.54 -> c 1.010 > 1
    # pass 3: c dense, eps = 3118 / 200 -> a = 0.3118
    d = prune.erk_densities({"a": (100, 100), "b": (10, 10), "c": (40, 25)}, 0.38)
    assert d["b"] == 1.0 and d["c"] == 1.0
    assert d["a"] == pytest.approx(0.3118, rel=1e-12)


def test_erk_densities_uniform_for_equal_shapes_and_power_scale_zero():
    d = prune.erk_densities({"a": (8, 8), "b": (8, 8)}, 0.3)
    assert d == pytest.approx({"a": 0.3, "b": 0.3})
    d = prune.erk_densities({"a": (8, 8), "b": (4, 2)}, 0.3, power_scale=0.0)
    assert d == pytest.approx({"a": 0.3, "b": 0.3})


@settings(max_examples=40, deadline=None)
@given(
    shapes=st.dictionaries(
        st.sampled_from(list("abcdefg")),
        st.lists(st.integers(1, 64), min_size=1, max_size=4).map(tuple),
        min_size=1,
        max_size=6,
    ),
    density=st.floats(0.01, 1.0),
)
def test_erk_densities_totals(shapes, density):
    d = prune.erk_densities(shapes, density)
    sizes = {k: math.prod(s) for k, s in shapes.items()}
    assert set(d) == set(shapes)
    assert all(0 < v <= 1.0 for v in d.values())
    total = sum(sizes.values())
    assert abs(sum(d[k] * sizes[k] for k in d) - density * total) <= 1.0
    # a non-saturated layer's density is proportional to its raw ERK ratio
    free = [k for k in d if d[k] < 1.0]
    ratios = {k: sum(shapes[k]) / sizes[k] for k in free}
    for k in free:
        for j in free:
            assert d[k] * ratios[j] == pytest.approx(d[j] * ratios[k], rel=1e-9)
    # and a saturated one would have been above 1 at the common eps
    if free:
        eps = d[free[0]] / ratios[free[0]]
        for k in d:
            if d[k] == 1.0 and k not in free:
                assert eps * sum(shapes[k]) / sizes[k] >= 1.0 - 1e-9


def test_to_density_layerwise_erk_counts():
    rng = np.random.default_rng(0)
    shapes = {"a": (30, 20), "b": (20, 4), "c": (3, 3, 2, 4)}
    scores = {
        n: jnp.asarray(rng.normal(size=s), jnp.float32) for n, s in shapes.items()
    }
    mask = masks.init(scores)
    out = prune.to_density(scores, mask, 0.2, scope="layerwise", distribution="erk")
    dens = prune.erk_densities(shapes, 0.2)
    assert prune.layer_densities(mask, 0.2, distribution="erk") == dens
    targets = [([n], round_half_up(dens[n], math.prod(s))) for n, s in shapes.items()]
    ref = np_to_density(
        {n: np.asarray(v) for n, v in scores.items()},
        {n: np.ones(s, bool) for n, s in shapes.items()},
        targets,
    )
    for n in shapes:
        np.testing.assert_array_equal(out[n], ref[n], err_msg=n)
    total = sum(int(out[n].sum()) for n in shapes)
    assert total == 87 + 42 + 21  # round of 87.44, 41.97, 20.99
    assert abs(total - 0.2 * (600 + 80 + 72)) <= 0.5 * len(shapes)


def test_layer_densities_uniform():
    mask = masks.init({"k": jnp.ones((3, 4)), "b": jnp.ones(4), "c": jnp.ones((2, 2))})
    assert prune.layer_densities(mask, 0.4) == {"c": 0.4, "k": 0.4}


# ----------------------------------------------------------------------------------
# bad input: ValueError naming the argument


def _ok():
    return {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda s, m: prune.by_fraction(
                s, {"Dense_0": {"kernel": m["Dense_0"]["kernel"]}}, 0.2
            ),
            r"mask: tree structure.*missing leaves",
        ),
        (
            lambda s, m: prune.by_fraction(
                s,
                {
                    "Dense_0": {
                        "kernel": jnp.ones((2, 3), bool),
                        "bias": m["Dense_0"]["bias"],
                    }
                },
                0.2,
            ),
            re.escape("mask['Dense_0']['kernel']: shape (2, 3) != param shape (3, 2)"),
        ),
        (
            lambda s, m: prune.by_fraction(
                s, jax.tree.map(lambda x: x.astype(jnp.float32), m), 0.2
            ),
            r"mask\['Dense_0'\]\['bias'\]: mask leaves must be boolean",
        ),
        (
            lambda s, m: prune.by_fraction(s, m, -0.1),
            r"fraction: expected a value in \[0, 1\)",
        ),
        (
            lambda s, m: prune.by_fraction(s, m, 1.0),
            r"fraction: expected a value in \[0, 1\)",
        ),
        (lambda s, m: prune.by_fraction(s, m, float("nan")), r"fraction"),
        (
            lambda s, m: prune.to_density(s, m, 0.0),
            r"density: expected a value in \(0, 1\]",
        ),
        (
            lambda s, m: prune.to_density(s, m, 1.5),
            r"density: expected a value in \(0, 1\]",
        ),
        (lambda s, m: prune.to_density(s, m, 0.0, scope="layerwise"), r"density"),
        (
            lambda s, m: prune.to_density(
                s, m, 1.5, scope="layerwise", distribution="erk"
            ),
            r"density",
        ),
        (lambda s, m: prune.erk_densities({"a": (2, 2)}, 0.0), r"density"),
        (
            lambda s, m: prune.by_fraction(s, m, 0.2, layer_fractions={"nope": 0.1}),
            r"layer_fractions: pattern 'nope'",
        ),
        (
            lambda s, m: prune.by_fraction(
                s, m, 0.2, layer_fractions={"Dense_0": -0.5}
            ),
            r"layer_fractions\['Dense_0'\]",
        ),
        (
            lambda s, m: prune.by_fraction(
                {
                    "Dense_0": {
                        "kernel": jnp.full((3, 2), np.nan),
                        "bias": s["Dense_0"]["bias"],
                    }
                },
                m,
                0.2,
            ),
            r"scores\['Dense_0'\]\['kernel'\]: 6 kept weights have NaN",
        ),
        (
            lambda s, m: prune.by_fraction(s, m, 0.2, prunable=lambda p, x: False),
            r"mask: the prunable predicate selects no leaf",
        ),
        (
            lambda s, m: prune.to_density(s, m, 0.2, prunable=lambda p, x: False),
            r"mask: the prunable predicate selects no leaf",
        ),
        (lambda s, m: prune.by_fraction(s, m, 0.2, scope="local"), r"scope: expected"),
        (lambda s, m: prune.to_density(s, m, 0.2, scope="local"), r"scope: expected"),
        (
            lambda s, m: prune.to_density(
                s, m, 0.2, scope="layerwise", distribution="normal"
            ),
            r"distribution: expected 'uniform' or 'erk', got 'normal'",
        ),
        (
            lambda s, m: prune.to_density(s, m, 0.2, distribution="erk"),
            r"distribution='erk'.*scope='layerwise'",
        ),
        (
            lambda s, m: prune.layer_densities(m, 0.2, distribution="normal"),
            r"distribution",
        ),
        (
            lambda s, m: prune.by_fraction(
                {
                    "Dense_0": {
                        "kernel": jnp.ones((3, 2), bool),
                        "bias": s["Dense_0"]["bias"],
                    }
                },
                m,
                0.2,
            ),
            r"scores\['Dense_0'\]\['kernel'\]: expected a numeric",
        ),
    ],
)
def test_bad_input_raises_naming_argument(call, match):
    scores = _ok()
    with pytest.raises(ValueError, match=match):
        call(scores, masks.init(scores))
