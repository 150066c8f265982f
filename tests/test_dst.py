"""Tests of lotto_jax.dst: schedules, drop-and-grow and the masks that change inside
the compiled training loop.

Independent truths: closed forms in float64 (GMP's cubic, the cosine), the ERK
densities ALGORITHMS.md lists for LeNet-300-100, a numpy drop-and-grow (stable
argsorts), jax.grad of the loss on the step's batch, a chi-square test of SET's
growth, and the single run for replicate 0 of a vmapped run.
"""

import itertools
import math
from fractions import Fraction

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lotto_jax import data, dst, masks, train

# ------------------------------------------------------------------ numpy truth


def np_round_half_up(frac, n):
    """round(frac * n) half up, for the fraction as written in decimal."""
    return math.floor(Fraction(str(frac)) * n + Fraction(1, 2))


def np_drop_and_grow(params, mask, scores, n_of):
    """Per leaf (group): drop the n smallest |θ| kept (stable: first position
    first), grow the n best scores among the not-kept-after-drop."""
    out = {}
    for k in params:
        p, m, s = (np.ravel(np.asarray(a)) for a in (params[k], mask[k], scores[k]))
        kept = np.flatnonzero(m)
        n = n_of(len(kept))
        drop = kept[np.argsort(np.abs(p[kept]), kind="stable")[:n]]
        stay = m.copy()
        stay[drop] = False
        free = np.flatnonzero(~stay)
        grow = free[np.argsort(-s[free].astype(np.float64), kind="stable")[:n]]
        new = stay.copy()
        new[grow] = True
        out[k] = new.reshape(np.shape(mask[k]))
    return out


def _tree(seed, shapes=(("a", (30, 20)), ("b", (20, 7)))):
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes}


def _random_mask(tree, seed, p=0.3):
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.random(v.shape) < p) for k, v in tree.items()}


# --------------------------------------------------------------------- schedules


def test_gmp_density_is_the_cubic_closed_form():
    for step in (0, 10, 37, 50, 99, 100, 150):
        p = min(max((step - 10) / 90, 0.0), 1.0)
        want = 0.05 + (0.8 - 0.05) * (1 - p) ** 3
        got = float(dst.gmp_density(step, initial=0.8, final=0.05, start=10, end=100))
        assert got == pytest.approx(want, abs=1e-6)
    # ALGORITHMS.md: s_i = 0, s_f = 0.9, midpoint sparsity 0.7875 -> density 0.2125
    assert float(dst.gmp_density(50, initial=1.0, final=0.1, start=0, end=100)) == \
        pytest.approx(0.2125, abs=1e-7)


def test_cosine_fraction_matches_rigl_and_granet_curves():
    assert [float(dst.cosine_fraction(s, initial=0.3, end=100)) for s in (0, 50, 100, 130)] \
        == pytest.approx([0.3, 0.15, 0.0, 0.0], abs=1e-7)
    for t in (0, 123, 500, 1000):  # GraNet: 0.005 + (0.5 - 0.005)(1 + cos(pi t / T)) / 2
        want = 0.005 + (0.5 - 0.005) * (1 + math.cos(math.pi * t / 1000)) / 2
        got = float(dst.cosine_fraction(t, initial=0.5, end=1000, final=0.005))
        assert got == pytest.approx(want, abs=1e-6)


def test_erk_densities_of_lenet300_are_the_published_ones():
    params = {"Dense_0": {"kernel": jnp.zeros((784, 300)), "bias": jnp.zeros(300)},
              "Dense_1": {"kernel": jnp.zeros((300, 100)), "bias": jnp.zeros(100)},
              "output": {"kernel": jnp.zeros((100, 10)), "bias": jnp.zeros(10)}}
    for total, want in ((0.9, (0.0796, 0.2302, 1.0)), (0.98, (0.0154, 0.0445, 0.3674))):
        d = dst.group_densities(params, 1 - total, distribution="erk")
        got = [d["Dense_0/kernel"], d["Dense_1/kernel"], d["output/kernel"]]
        np.testing.assert_allclose(got, want, atol=6e-5)
        sizes = (784 * 300, 300 * 100, 100 * 10)
        assert sum(g * n for g, n in zip(got, sizes, strict=True)) / sum(sizes) == \
            pytest.approx(1 - total, rel=1e-9)
    # an override is outside the budget: the others share the density among themselves
    d = dst.group_densities(params, 0.1, overrides={"Dense_0": 1.0})
    assert d == {"Dense_0/kernel": 1.0, "Dense_1/kernel": 0.1, "output/kernel": 0.1}


# ----------------------------------------------------------------- drop and grow


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.35, 1.0])
def test_drop_and_grow_matches_numpy(fraction):
    params, scores = _tree(0), jax.tree.map(jnp.abs, _tree(1))
    # ties: repeated magnitudes and repeated grow scores
    params["a"] = params["a"].at[:5].set(0.25)
    scores["a"] = scores["a"].at[10:20].set(1.5)
    mask = _random_mask(params, 2)
    got = dst.drop_and_grow(params, mask, scores, fraction, prunable=masks.all_leaves)
    want = np_drop_and_grow(params, mask, scores, lambda n: np_round_half_up(fraction, n))
    for k in params:
        np.testing.assert_array_equal(np.asarray(got[k]), want[k], err_msg=k)
        assert int(got[k].sum()) == int(mask[k].sum())


def test_drop_and_grow_groups_pool_leaves_and_spare_unprunable_ones():
    params = {"L": {"kernel": _tree(3)["a"], "bias": _tree(4)["b"][:, 0]}}
    mask = {"L": {"kernel": _random_mask(_tree(3), 5)["a"],
                  "bias": jnp.ones(20, bool)}}
    scores = jax.tree.map(jnp.abs, jax.tree.map(lambda x: x[::-1], params))
    # "layer" pools kernel and bias: one group, counts over the pooled weights
    got = dst.drop_and_grow(params, mask, scores, 0.2, groups="layer", prunable=masks.all_leaves)
    flat = lambda t: np.concatenate([np.ravel(t["L"]["bias"]), np.ravel(t["L"]["kernel"])])  # noqa: E731
    want = np_drop_and_grow({"g": flat(params)}, {"g": flat(mask)}, {"g": flat(scores)},
                            lambda n: np_round_half_up(0.2, n))["g"]
    np.testing.assert_array_equal(flat(got), want)
    # the default predicate leaves the bias alone
    got = dst.drop_and_grow(params, mask, scores, 0.2)
    assert bool(got["L"]["bias"].all())


def test_set_growth_is_uniform_chi_square():
    """Over 400 fixed keys the grown positions are uniform among the eligible ones."""
    params = {"w": jnp.asarray(np.linspace(1, 2, 40).reshape(5, 8), jnp.float32)}
    mask = {"w": jnp.arange(40).reshape(5, 8) < 10}  # kept: 0..9, the 2 smallest drop
    u = dst.set(0.25, drop_fraction=0.2, update_every=1)
    state = u.init(params, jax.random.key(0))
    grown = jax.jit(jax.vmap(lambda s: u.update(params, mask, None, s, state)[0]["w"]))(
        jnp.arange(1, 401))
    new = np.asarray(grown).reshape(400, 40)
    assert (new.sum(1) == 10).all() and new[:, 2:10].all()  # kept 8, grew 2 each time
    counts = new[:, np.r_[0:2, 10:40]].sum(0)  # eligible: the 2 dropped + 30 free
    expected = 400 * 2 / 32
    chi2 = ((counts - expected) ** 2 / expected).sum()
    # 31 degrees of freedom: P(chi2 > 61.1) = 0.001
    assert chi2 < 61.1, (chi2, counts)


def test_rigl_update_drops_by_magnitude_and_grows_by_gradient():
    params, grads = _tree(6), _tree(7)
    mask = _random_mask(params, 8)
    u = dst.rigl(0.3, end=1000, drop_fraction=0.3, update_every=100,
                 prunable=masks.all_leaves)
    state = u.init(params, jax.random.key(0))
    new, state = jax.jit(u.update)(params, mask, grads, jnp.int32(400), state)
    frac = 0.3 * 0.5 * (1 + math.cos(math.pi * 400 / 1000))
    want = np_drop_and_grow(params, mask, jax.tree.map(jnp.abs, grads),
                            lambda n: math.floor(frac * n + 0.5))
    for k in params:
        np.testing.assert_array_equal(np.asarray(new[k]), want[k])
    assert int(state.count) == 1


# -------------------------------------------------------- in the compiled loop


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


DS = _dataset()
MODEL = _MLP()
PARAMS = MODEL.init(jax.random.key(0), jnp.zeros((1, 12)))["params"]


class _Spy:
    """Wraps an updater; its state also keeps what the last update saw."""

    def __init__(self, inner):
        self.inner = inner

    def updater(self):
        u = self.inner

        def init(params, key):
            zeros = jax.tree.map(jnp.zeros_like, params)
            return (u.init(params, key), zeros, zeros, masks.init(params))

        def update(params, mask, grads, step, state):
            new, inner = u.update(params, mask, grads, step, state[0])
            return new, (inner, params, grads, mask)

        return u._replace(init=init, update=update)


def _run(updater, *, steps=60, eval_every=5, optimizer="adam", key=1, callback=None,
         apply_fn=None):
    cfg = train.TrainConfig(steps=steps, batch_size=20, eval_every=eval_every, lr=0.01,
                            optimizer=optimizer)
    tr = train.make_trainer(apply_fn or train.classifier(MODEL), cfg,
                            num_train=len(DS.train.y), updater=updater)
    state = tr.init(PARAMS, key=jax.random.key(key))
    return tr, train.fit(tr, state, None, DS, data_key=jax.random.key(2), callback=callback)


def _counts(mask):
    return {masks.path_str(p): int(np.sum(m))
            for p, m in jax.tree_util.tree_flatten_with_path(mask)[0]}


def test_rigl_in_the_loop_checks_every_update():
    """Every 10 steps: exact counts, the numpy drop-and-grow of what the update saw,
    the gradient = jax.grad on the step's batch, grown and dropped weights and
    Adam moments 0 right after; between updates the mask holds still."""
    spy = _Spy(dst.rigl(0.3, end=30, update_every=10, distribution="uniform"))
    seen = []

    def callback(st, rec):
        seen.append(jax.tree.map(np.asarray, (st.step, st.params, st.dst, st.opt_state)))

    _tr, (state, _) = _run(spy.updater(), steps=40, eval_every=1, callback=callback)
    start = _counts(seen[0][2].mask)
    loss = lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
        MODEL.apply({"params": p}, x), y).mean()
    for (s0, _, d0, _), (s, p, d, opt) in itertools.pairwise(seen):
        s = int(s)
        assert _counts(d.mask) == start
        fired = s % 10 == 0 and s <= 30
        if not fired:
            for a, b in zip(jax.tree.leaves(d.mask), jax.tree.leaves(d0.mask), strict=True):
                np.testing.assert_array_equal(a, b)
            continue
        _, seen_params, seen_grads, seen_mask = d.inner
        frac = 0.3 * 0.5 * (1 + math.cos(math.pi * s / 30))
        want = np_drop_and_grow(
            {k: seen_params[k]["kernel"] for k in seen_params},
            {k: seen_mask[k]["kernel"] for k in seen_params},
            {k: np.abs(seen_grads[k]["kernel"]) for k in seen_params},
            lambda n, f=frac: math.floor(f * n + 0.5))
        for k in want:
            np.testing.assert_array_equal(d.mask[k]["kernel"], want[k], err_msg=f"{s} {k}")
        # the gradient is the dense one of step s-1's batch, at the weights after it
        assert int(s0) == s - 1
        idx = data.batch_indices(jax.random.key(2), s - 1, num_examples=240, batch_size=20)
        g = jax.grad(loss)(jax.tree.map(jnp.asarray, seen_params), DS.train.x[idx],
                           DS.train.y[idx])
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(seen_grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        changed = jax.tree.map(lambda a, b: a != b, d.mask, seen_mask)
        assert (sum(int(c.sum()) for c in jax.tree.leaves(changed)) > 0) == (s < 30)
        mu, nu = opt[0].mu, opt[0].nu
        for leaf_p, leaf_mu, leaf_nu, c in zip(*(jax.tree.leaves(t) for t in (p, mu, nu, changed)),
                                               strict=True):
            assert (leaf_p[c] == 0).all() and (leaf_mu[c] == 0).all() and (leaf_nu[c] == 0).all()
    assert int(state.dst.inner[0].count) == 3


def test_gmp_density_follows_the_closed_form_at_every_update():
    seen = []
    _run(dst.gmp(0.1, start=10, end=50, update_every=10, initial_density=1.0),
         callback=lambda st, rec: seen.append((int(st.step), _counts(st.dst.mask))))
    sizes = {"Dense_0/kernel": 12 * 24, "output/kernel": 24 * 4}
    for s, counts in seen:
        fired = [u for u in range(20, 51, 10) if u <= s]  # (u - start) % 10 == 0, u > start
        dens = 1.0 if not fired else 0.1 + 0.9 * (1 - (fired[-1] - 10) / 40) ** 3
        for g, n in sizes.items():
            assert counts[g] == math.floor(dens * n + 0.5), (s, g)
    assert seen[-1][1]["Dense_0/kernel"] == round(0.1 * 288)


def test_set_static_and_granet_keep_their_counts_and_zero_invariants():
    for u, final in ((dst.set(0.2, update_every=10, distribution="uniform"), None),
                     (dst.static(0.2, distribution="uniform"), None),
                     (dst.granet(0.1, initial_density=0.5, end=40, total=60, update_every=10,
                                 scope="layerwise", distribution="uniform"), 0.1)):
        _, (state, res) = _run(u, eval_every=30)
        for p, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.dst.mask),
                        strict=True):
            assert (np.asarray(p)[~np.asarray(m)] == 0).all()
        if final is not None:
            assert _counts(state.dst.mask)["Dense_0/kernel"] == round(final * 288)
        else:
            assert _counts(state.dst.mask)["Dense_0/kernel"] == round(0.2 * 288)
        assert res.final_test_accuracy > 0.3


@pytest.fixture(scope="module")
def counted_rigl():
    """One RigL trainer for the trace and replicate tests, counting its traces."""
    traces = []

    def apply_fn(params, model_state, x, train_):
        if train_:
            traces.append(1)
        return MODEL.apply({"params": params}, x), model_state

    cfg = train.TrainConfig(steps=40, batch_size=20, eval_every=20, lr=0.01)
    tr = train.make_trainer(apply_fn, cfg, num_train=240,
                            updater=dst.rigl(0.3, end=40, update_every=10))
    return tr, traces


def test_one_trace_for_every_mask_and_updater_state(counted_rigl):
    """The first fit compiles the chunk (its forward is traced twice there: the step
    and the update's gradient); fits with other masks and keys trace nothing."""
    tr, traces = counted_rigl
    n0 = len(traces)
    finals, counts = [], []
    for key in (1, 2, 3):
        state = tr.init(jax.tree.map(jnp.copy, PARAMS), key=jax.random.key(key))
        finals.append(train.fit(tr, state, None, DS, data_key=jax.random.key(key))[0])
        counts.append(len(traces))
    assert counts[0] == counts[1] == counts[2] and counts[0] - n0 <= 2
    assert not np.array_equal(finals[0].dst.mask["Dense_0"]["kernel"],
                              finals[1].dst.mask["Dense_0"]["kernel"])


def test_replicate_zero_of_a_vmapped_run_is_the_single_run(counted_rigl):
    tr, _ = counted_rigl
    keys = jax.random.split(jax.random.key(5), 2)
    dkeys = jax.random.split(jax.random.key(6), 2)
    single, _ = train.fit(tr, tr.init(PARAMS, key=keys[0]), None, DS, data_key=dkeys[0])
    stacked = jax.vmap(lambda k: tr.init(PARAMS, key=k))(keys)
    both, _res = train.fit(tr, stacked, None, DS, data_key=dkeys, replicates=True)
    for a, b in zip(jax.tree.leaves(single.dst.mask), jax.tree.leaves(both.dst.mask),
                    strict=True):
        np.testing.assert_array_equal(a, b[0])
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(both.params), strict=True):
        np.testing.assert_allclose(a, b[0], rtol=1e-5, atol=1e-6)
    assert not np.array_equal(both.dst.mask["Dense_0"]["kernel"][0],
                              both.dst.mask["Dense_0"]["kernel"][1])


# -------------------------------------------------------------------- bad input


@pytest.mark.parametrize("make, match", [
    (lambda: dst.rigl(0.0, end=10), "density"),
    (lambda: dst.rigl(1.5, end=10), "density"),
    (lambda: dst.rigl(0.1, end=10, drop_fraction=1.2), "drop_fraction"),
    (lambda: dst.set(0.1, update_every=0), "update_every"),
    (lambda: dst.set(0.1, distribution="normal"), "distribution"),
    (lambda: dst.gmp(0.1, start=50, end=50), "end"),
    (lambda: dst.gmp(0.5, end=50, initial_density=0.2), "initial_density"),
    (lambda: dst.granet(0.1, end=50, total=40), "total"),
    (lambda: dst.make("sparse-momentum", density=0.1), "method"),
    (lambda: dst.static(0.1, groups="module"), "groups"),
])
def test_bad_hyperparameters_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_use_names_the_argument():
    cfg = train.TrainConfig(steps=40, batch_size=20)
    with pytest.raises(ValueError, match=r"end: .*until step 50, beyond the 40"):
        train.make_trainer(train.classifier(MODEL), cfg, num_train=240,
                           updater=dst.rigl(0.1, end=50))
    tr = train.make_trainer(train.classifier(MODEL), cfg, num_train=240,
                            updater=dst.rigl(0.1, end=40))
    with pytest.raises(ValueError, match="key"):
        tr.init(PARAMS)
    state = tr.init(PARAMS, key=jax.random.key(0))
    with pytest.raises(ValueError, match="mask: a trainer with a mask updater"):
        train.fit(tr, state, masks.init(PARAMS), DS, data_key=jax.random.key(0))
    # a group that would keep no weight (ERK gives the 12 x 24 kernel 0.00075)
    with pytest.raises(ValueError, match=r"group 'Dense_0/kernel' \(288 weights\) would keep no"):
        dst.static(0.001).initial_mask(PARAMS, jax.random.key(0))
    with pytest.raises(ValueError, match="overrides: pattern 'Conv'"):
        dst.static(0.1, overrides={"Conv": 1.0}).initial_mask(PARAMS, jax.random.key(0))
    with pytest.raises(ValueError, match="keep no weight"):
        dst.gmp(0.001, end=40).init(PARAMS, jax.random.key(0))
