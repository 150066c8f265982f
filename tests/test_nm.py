"""Tests of lotto_jax._nm: N:M masks, IMP's N:M step, the N:M DST updater, SR-STE.

Independent truths: a numpy reference that walks every group by explicit indices
(Python's stable sort: among equal scores the lower input index first), hand-worked
round counts, the closed forms of SR-STE's gradient and AST's ramp, jax.grad at the
masked weights, and the trainer's own state after every step of a short run.
"""

import itertools
import math
from fractions import Fraction

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lotto_jax import _nm as nm
from lotto_jax import data, masks, train

# ------------------------------------------------------------------ numpy truth


def _groups(shape, m):
    """Every group of a rank-2 (axis 0) or rank-4 (axis 2) kernel: index tuples."""
    axis = 0 if len(shape) == 2 else 2
    other = [d for i, d in enumerate(shape) if i != axis]
    for idx in np.ndindex(*other):
        for g in range(0, shape[axis], m):
            yield [(*idx[:axis], i, *idx[axis:]) for i in range(g, g + m)]


def np_keep(scores, mask, m, target):
    """Per group: the ``target(kept count)`` best kept entries (stable: lower first)."""
    s, k = np.asarray(scores, np.float64), np.asarray(mask)
    out = np.zeros(k.shape, bool)
    for group in _groups(s.shape, m):
        kept = sorted((p for p in group if k[p]), key=lambda p: -s[p])
        for p in kept[: target(len(kept))]:
            out[p] = True
    return out


def np_half_up(frac, k):
    return math.floor(Fraction(str(frac)) * k + Fraction(1, 2))


def np_exchange(params, mask, grow, fraction, n, m):
    """Per group: stay = the min(k, n) - d largest |θ| kept, then grow the best
    grow scores among the rest up to n (stable: lower position first)."""
    p, k, g = np.abs(np.asarray(params, np.float64)), np.asarray(mask), np.asarray(grow)
    out = np.zeros(k.shape, bool)
    for group in _groups(p.shape, m):
        kept = sorted((q for q in group if k[q]), key=lambda q: -p[q])
        base = min(len(kept), n)
        stay = kept[: base - np_half_up(fraction, base)]
        free = sorted((q for q in group if q not in stay), key=lambda q: -g[q])
        for q in stay + free[: n - len(stay)]:
            out[q] = True
    return out


def _counts(mask_leaf, m):
    return [int(sum(np.asarray(mask_leaf)[p] for p in grp))
            for grp in _groups(np.shape(mask_leaf), m)]


SHAPES = {"dense": (16, 6), "conv": (3, 3, 8, 4)}


def _case(shape, seed, *, ties, pruned):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 3, size=shape) if ties else rng.normal(size=shape)
    k = rng.random(shape) < 0.7 if pruned else np.ones(shape, bool)
    bias = np.zeros(shape[-1], np.float32)
    scores = {"layer": {"bias": jnp.asarray(bias), "kernel": jnp.asarray(s, jnp.float32)}}
    mask = {"layer": {"bias": jnp.ones(shape[-1], bool), "kernel": jnp.asarray(k)}}
    return scores, mask


CASES = [(kind, ties, pruned) for kind in SHAPES for ties in (False, True)
         for pruned in (False, True)]
NM = [(2, 4), (1, 4), (4, 8)]

# ------------------------------------------------------------------------ masks


@pytest.mark.parametrize("n, m", NM)
@pytest.mark.parametrize("kind, ties, pruned", CASES)
def test_nm_mask_matches_numpy_on_every_group(n, m, kind, ties, pruned):
    seed = 10 * NM.index((n, m)) + CASES.index((kind, ties, pruned))
    scores, mask = _case(SHAPES[kind], seed, ties=ties, pruned=pruned)
    got = nm.nm_mask(scores, mask, n=n, m=m)
    k = np.asarray(mask["layer"]["kernel"])
    want = np_keep(scores["layer"]["kernel"], k, m, lambda c: n)
    np.testing.assert_array_equal(got["layer"]["kernel"], want)
    assert got["layer"]["bias"].all()  # not prunable: as it was
    # exact: min(n, kept) in every group; n everywhere from a dense mask
    assert _counts(got["layer"]["kernel"], m) == [min(n, c) for c in _counts(k, m)]
    assert nm.is_nm(got, n=n, m=m)
    if not pruned:
        assert int(got["layer"]["kernel"].sum()) * m == n * k.size
        for dens in (nm.to_density(scores, mask, n=n, m=m),
                     nm.to_density(scores, mask, n / m, n=n, m=m)):
            np.testing.assert_array_equal(dens["layer"]["kernel"], want)


def test_ties_keep_the_lower_position_and_jit_vmap_agree():
    s = {"w": jnp.zeros((8, 3))}
    k = {"w": jnp.ones((8, 3), bool)}
    got = nm.nm_mask(s, k, n=2, m=4)["w"]
    assert got[:, 0].tolist() == [True, True, False, False] * 2
    scores, mask = _case((3, 3, 8, 4), 3, ties=True, pruned=True)
    eager = nm.nm_mask(scores, mask, n=2, m=4)
    jitted = jax.jit(lambda s, k: nm.nm_mask(s, k, n=2, m=4))(scores, mask)
    stacked = jax.tree.map(lambda x: jnp.stack([x, x]), (scores, mask))
    vmapped = jax.vmap(lambda s, k: nm.nm_mask(s, k, n=2, m=4))(*stacked)
    for a, b, c in zip(*(jax.tree.leaves(t) for t in (eager, jitted, vmapped)), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c[1])


def _np_by_fraction(scores, mask, fraction, n, m):
    def target(k):
        r = np_half_up(fraction, k)
        r = max(r, 1) if fraction > 0 else r
        return max(k - r, min(k, n))

    return np_keep(scores, mask, m, target)


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.35, 0.5, 0.9])
@pytest.mark.parametrize("kind, ties", [("dense", False), ("conv", True)])
def test_by_fraction_counts_match_numpy(fraction, kind, ties):
    scores, mask = _case(SHAPES[kind], 11, ties=ties, pruned=True)
    for n, m in ((2, 4), (1, 4), (4, 8)):
        got = nm.by_fraction(scores, mask, fraction, n=n, m=m)
        want = _np_by_fraction(scores["layer"]["kernel"], mask["layer"]["kernel"],
                               fraction, n, m)
        np.testing.assert_array_equal(got["layer"]["kernel"], want, err_msg=f"{n}:{m}")


def test_by_fraction_with_a_traced_fraction_under_jit_and_vmap():
    """A traced fraction (counts in float32) gives the numpy masks here: one compile
    for every fraction under jit, one vmap over all of them."""
    scores, mask = _case(SHAPES["conv"], 12, ties=True, pruned=True)
    fractions = [0.0, 0.2, 0.35, 0.5, 0.9]
    step = jax.jit(lambda fr: nm.by_fraction(scores, mask, fr, n=2, m=4))
    stacked = jax.vmap(lambda fr: nm.by_fraction(scores, mask, fr, n=2, m=4))(
        jnp.array(fractions))
    for i, fr in enumerate(fractions):
        want = _np_by_fraction(scores["layer"]["kernel"], mask["layer"]["kernel"], fr, 2, 4)
        np.testing.assert_array_equal(step(fr)["layer"]["kernel"], want, err_msg=str(fr))
        np.testing.assert_array_equal(stacked["layer"]["kernel"][i], want, err_msg=str(fr))
    assert step._cache_size() == 1


@pytest.mark.parametrize("n, m, per_round", [
    (2, 4, [3, 2, 2]),        # 4 -> 3 -> 2, then stays
    (1, 4, [3, 2, 1, 1]),     # 0.2 of 2 rounds to 0: at least one goes
    (4, 8, [6, 5, 4, 4]),     # 8 - round(1.6) = 6, 6 - round(1.2) = 5, 5 - 1 = 4
])
def test_repeated_rounds_reach_exactly_n(n, m, per_round):
    scores, mask = _case((16, 6), 5, ties=False, pruned=False)
    for want in per_round:
        mask = nm.by_fraction(scores, mask, 0.2, n=n, m=m)
        assert set(_counts(mask["layer"]["kernel"], m)) == {want}
    assert nm.is_nm(mask, n=n, m=m)


def test_is_nm_against_the_counts():
    rng = np.random.default_rng(0)
    for _ in range(5):
        k = rng.random((3, 3, 8, 4)) < 0.4
        want = max(_counts(k, 4)) <= 2
        assert nm.is_nm({"w": jnp.asarray(k)}, n=2, m=4) is want
    jitted = jax.jit(lambda k: nm.is_nm(k, n=1, m=4))({"w": jnp.eye(8, dtype=bool)})
    assert bool(jitted)


# -------------------------------------------------------------------------- DST


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 1.0])
def test_nm_exchange_matches_numpy(fraction):
    rng = np.random.default_rng(4)
    for n, m, shape in ((2, 4, (16, 6)), (1, 4, (3, 3, 8, 4)), (4, 8, (16, 6))):
        p = jnp.asarray(rng.integers(-2, 3, size=shape), jnp.float32)  # ties in |θ|
        g = jnp.asarray(rng.integers(0, 3, size=shape), jnp.float32)
        k = jnp.asarray(rng.random(shape) < 0.6)
        got = nm.nm_exchange({"w": p}, {"w": k}, {"w": g}, fraction, n=n, m=m)["w"]
        np.testing.assert_array_equal(got, np_exchange(p, k, g, fraction, n, m))
        assert set(_counts(got, m)) == {n}


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False):
        x = nn.relu(nn.Dense(24)(x))
        return nn.Dense(4, name="output")(x)


def _dataset(n=240, dim=12, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(dim, 4))

    def split(k):
        x = rng.normal(size=(k, dim)).astype(np.float32)
        return data.Split(x, np.argmax(x @ w, 1).astype(np.int32))

    return data.Dataset(name="toy", train=split(n), validation=None, test=split(60),
                        input_shape=(dim,), num_classes=4,
                        normalization={"mean": [0.0], "std": [1.0]})


def test_nm_rigl_keeps_the_pattern_at_every_step_of_a_run():
    """Every step of a 20-step run: exactly 2 of every 4 inputs kept on both
    kernels, pruned weights and Adam moments 0, grown weights start at 0; the mask
    changes at the updates 5 and 10 (f = 0.85, 0.5: 2 and 1 of each group's 2
    exchanged; none at 15 and 20: f = 0.15 and 0) and only there."""
    model, ds = _MLP(), _dataset()
    params = model.init(jax.random.key(0), jnp.zeros((1, 12)))["params"]
    u = nm.nm_rigl(2, 4, end=20, update_every=5, drop_fraction=1.0)
    cfg = train.TrainConfig(steps=20, batch_size=20, eval_every=1, lr=0.01, optimizer="adam")
    tr = train.make_trainer(train.classifier(model), cfg, num_train=240, updater=u)
    seen = []  # the callback sees step 0 (before training) and every step after
    state = tr.init(params, key=jax.random.key(1))
    train.fit(tr, state, None, ds, data_key=jax.random.key(2), callback=lambda st, rec:
              seen.append(jax.tree.map(np.asarray, (st.step, st.params, st.dst.mask,
                                                    st.opt_state))))
    assert [int(s[0]) for s in seen] == list(range(21))
    changed_at = []
    for (_, _, old, _), (step, p, new, opt) in itertools.pairwise(seen):
        for name in ("Dense_0", "output"):
            k = new[name]["kernel"]
            assert set(_counts(k, 4)) == {2}, (int(step), name)
            assert (p[name]["kernel"][~k] == 0).all()
            for mom in (opt[0].mu, opt[0].nu):
                assert (mom[name]["kernel"][~k] == 0).all()
            grown = k & ~old[name]["kernel"]
            assert (p[name]["kernel"][grown] == 0).all()
            for mom in (opt[0].mu, opt[0].nu):
                assert (mom[name]["kernel"][grown] == 0).all()
        if any((a != b).any() for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new),
                                              strict=True)):
            changed_at.append(int(step))
    assert changed_at == [5, 10]


def test_nm_rigl_update_is_the_exchange_of_its_inputs():
    u = nm.nm_rigl(2, 4, end=100, update_every=10, drop_fraction=0.3)
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)}
    grads = {"w": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)}
    mask = u.initial_mask(params, jax.random.key(3))
    assert set(_counts(mask["w"], 4)) == {2}
    state = u.init(params, jax.random.key(3))
    new, state = jax.jit(u.update)(params, mask, grads, jnp.int32(20), state)
    f = 0.3 * 0.5 * (1 + math.cos(math.pi * 20 / 100))  # 0.271: one of 2 per group
    np.testing.assert_array_equal(
        new["w"], np_exchange(params["w"], mask["w"], np.abs(grads["w"]), round(f, 6), 2, 4))
    assert int(state.count) == 1 and not np.array_equal(new["w"], mask["w"])


# ----------------------------------------------------------------------- SR-STE


def test_srste_grad_is_the_closed_form():
    rng = np.random.default_rng(2)
    g = {"k": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32), "b": jnp.ones(3)}
    p = {"k": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32), "b": jnp.full(3, 5.0)}
    k = {"k": jnp.asarray(rng.random((8, 3)) < 0.5), "b": jnp.ones(3, bool)}
    out = nm.srste_grad(g, p, k, decay=2e-4)
    kk = np.asarray(k["k"])
    np.testing.assert_array_equal(np.asarray(out["k"])[kk], np.asarray(g["k"])[kk])
    np.testing.assert_allclose(np.asarray(out["k"])[~kk],
                               (np.asarray(g["k"]) + 2e-4 * np.asarray(p["k"]))[~kk],
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out["b"], g["b"])
    traced = jax.jit(lambda d: nm.srste_grad(g, p, k, decay=d))(jnp.float32(2e-4))
    np.testing.assert_array_equal(traced["k"], out["k"])


def test_srste_value_and_grad_is_the_straight_through_gradient():
    rng = np.random.default_rng(3)
    params = {"Dense_0": {"kernel": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
                          "bias": jnp.asarray(rng.normal(size=3), jnp.float32)}}
    x = jnp.asarray(rng.normal(size=(5, 8)), jnp.float32)

    def loss_fn(q, x):
        return jnp.sum(jnp.tanh(x @ q["Dense_0"]["kernel"] + q["Dense_0"]["bias"][None]) ** 2)

    loss, grads, mask = nm.srste_value_and_grad(loss_fn, params, x, n=2, m=4, decay=0.1)
    w = np.asarray(params["Dense_0"]["kernel"])
    want_mask = np_keep(np.abs(w), np.ones_like(w, bool), 4, lambda c: 2)
    np.testing.assert_array_equal(mask["Dense_0"]["kernel"], want_mask)
    sparse = {"Dense_0": {"kernel": jnp.asarray(np.where(want_mask, w, 0)),
                          "bias": params["Dense_0"]["bias"]}}
    plain = jax.grad(loss_fn)(sparse, x)
    assert float(loss) == pytest.approx(float(loss_fn(sparse, x)), rel=1e-6)
    gk, pk = np.asarray(grads["Dense_0"]["kernel"]), np.asarray(plain["Dense_0"]["kernel"])
    np.testing.assert_allclose(gk[want_mask], pk[want_mask], rtol=1e-6)  # kept: plain
    np.testing.assert_allclose(gk[~want_mask], (pk + 0.1 * w)[~want_mask], rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(grads["Dense_0"]["bias"], plain["Dense_0"]["bias"], rtol=1e-6)


def test_srste_training_moves_the_mask_to_the_true_support():
    """SR-STE in a custom step (plain SGD on least squares): the 2:4 mask starts on
    the two large initial weights and ends on the target's two large weights,
    which only the straight-through gradient on pruned weights can reach."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(64, 4)), jnp.float32)
    y = x @ jnp.array([[0.1], [0.2], [3.0], [-2.0]])
    params = {"w": jnp.array([[1.0], [0.9], [0.05], [0.01]])}

    def loss_fn(q, x, y):
        return jnp.mean((x @ q["w"] - y) ** 2)

    def step(_, q):
        _, g, _ = nm.srste_value_and_grad(loss_fn, q, x, y, n=2, m=4, decay=2e-4)
        return jax.tree.map(lambda a, b: a - 0.05 * b, q, g)

    assert nm.srste_mask(params, n=2, m=4)["w"].ravel().tolist() == [True, True, False, False]
    final = jax.jit(lambda q: jax.lax.fori_loop(0, 300, step, q))(params)
    k = nm.srste_mask(final, n=2, m=4)
    assert k["w"].ravel().tolist() == [False, False, True, True]
    loss = float(loss_fn(masks.apply(final, k), x, y))
    assert loss < 0.2 * float(loss_fn(masks.apply(params, nm.srste_mask(params, n=2, m=4)), x, y))


def test_ast_decay_is_the_linear_ramp():
    for step in (0, 1, 2500, 9999, 10000, 20000):
        want = 6e-5 * min(1.0, step / 10000)
        assert float(nm.ast_decay(step, final=6e-5, increase_steps=10000)) == \
            pytest.approx(want, rel=1e-6, abs=1e-12)
    traced = jax.jit(lambda s: nm.ast_decay(s, final=1.0, increase_steps=4))(jnp.arange(6))
    np.testing.assert_allclose(traced, [0, 0.25, 0.5, 0.75, 1, 1])


# -------------------------------------------------------------------- bad input

_S, _K = _case((16, 6), 0, ties=False, pruned=False)


@pytest.mark.parametrize("call, match", [
    (lambda: nm.nm_mask(_S, _K, n=5, m=4), r"n: expected n <= m"),
    (lambda: nm.nm_mask(_S, _K, n=0, m=4), r"n: expected an int >= 1, got 0"),
    (lambda: nm.nm_mask(_S, _K, n=2.0, m=4), r"n: expected an int"),
    (lambda: nm.nm_mask(_S, _K, n=2, m=0), r"m: expected an int >= 1"),
    (lambda: nm.to_density(_S, _K, 0.1, n=2, m=4),
     r"density: 2:4 sparsity keeps exactly n/m = 0.5 .* got 0.1"),
    (lambda: nm.nm_mask(_S, _K, n=1, m=5),
     r"m: 5 does not divide the input axis of leaf 'layer/kernel' \(axis 0, size 16"),
    (lambda: nm.nm_mask(_S, _K, n=1, m=2, prunable=masks.all_leaves),
     r"prunable: leaf 'layer/bias' has shape \(6,\) \(rank 1\)"),
    (lambda: nm.is_nm({"k": jnp.ones((3, 4, 8), bool)}, n=1, m=2),
     r"prunable: leaf 'k' has shape \(3, 4, 8\) \(rank 3\)"),
    (lambda: nm.is_nm({"k": jnp.ones((4, 8))}, n=1, m=2), r"mask\['k'\]: .*boolean"),
    (lambda: nm.by_fraction(_S, _K, 1.0, n=1, m=4), r"fraction: expected a value in \[0, 1\)"),
    (lambda: nm.by_fraction(_S, _K, -0.1, n=1, m=4), r"fraction"),
    (lambda: nm.nm_mask(_S, {"layer": {"kernel": _K["layer"]["kernel"]}}, n=1, m=4),
     r"mask: tree structure"),
    (lambda: nm.nm_exchange(_S, _K, {"w": 1}, 0.3, n=1, m=4), r"grow_scores"),
    (lambda: nm.nm_exchange(_S, _K, _S, 1.5, n=1, m=4), r"fraction"),
    (lambda: nm.nm_rigl(3, 2, end=10), r"n: expected n <= m"),
    (lambda: nm.nm_rigl(2, 4, end=0), r"end: expected an int >= 1"),
    (lambda: nm.nm_rigl(2, 4, end=10, drop_fraction=1.5), r"drop_fraction"),
    (lambda: nm.nm_rigl(2, 4, end=10, update_every=0), r"update_every"),
    (lambda: nm.nm_rigl(2, 5, end=10).init(_S, jax.random.key(0)),
     r"m: 5 does not divide .*'layer/kernel'"),
    (lambda: nm.srste_grad(_S, _S, _K, decay=-1.0), r"decay: expected a finite value >= 0"),
    (lambda: nm.srste_grad(_S, _S, {"x": 1}, decay=0.1), r"mask: tree structure"),
    (lambda: nm.ast_decay(3, final=-1.0, increase_steps=4), r"final"),
    (lambda: nm.ast_decay(3, final=1.0, increase_steps=0), r"increase_steps"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
