"""lotto_jax.analysis against independent truths: a numpy forward pass at the ends
of the path, the chord of a convex loss, the double well's closed form, Hamming
distances and overlaps counted in numpy, and scripted early-bird sequences."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lotto_jax import analysis, masks


def _mlp(seed):
    r = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)  # noqa: E731
    return {"h": {"kernel": f(6, 8), "bias": f(8)}, "out": {"kernel": f(8, 3), "bias": f(3)}}


def _apply(params, x):
    h = jax.nn.relu(x @ params["h"]["kernel"] + params["h"]["bias"][None])
    return h @ params["out"]["kernel"] + params["out"]["bias"][None]


def _numpy_eval(params, mask, x, y):
    """Mean cross-entropy and error of the masked MLP, in float64 numpy."""
    p = jax.tree.map(lambda w, m: np.where(np.asarray(m), np.asarray(w, np.float64), 0.0),
                     params, mask)
    h = np.maximum(x @ p["h"]["kernel"] + p["h"]["bias"], 0)
    z = h @ p["out"]["kernel"] + p["out"]["bias"]
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean(), 1 - (z.argmax(1) == y).mean()


def test_interpolate_ends_equal_each_endpoint():
    a, b = _mlp(0), _mlp(1)
    r = np.random.default_rng(2)
    mask = jax.tree.map(lambda w: jnp.asarray(r.random(w.shape) < 0.6), a)
    r = np.random.default_rng(0)
    x1, x2 = r.normal(size=(37, 6)).astype(np.float32), r.normal(size=(20, 6)).astype(np.float32)
    y1, y2 = r.integers(0, 3, 37), r.integers(0, 3, 20)
    # chunk 8: 37 examples need padding, which must not count
    alphas, losses, errors = analysis.interpolate(_apply, a, b, mask, [(x1, y1), (x2, y2)],
                                                  points=5, chunk=8)
    np.testing.assert_allclose(alphas, [0, 0.25, 0.5, 0.75, 1])
    assert losses.shape == errors.shape == (2, 5)
    for i, (x, y) in enumerate([(x1, y1), (x2, y2)]):
        for j, params in ((0, a), (-1, b)):
            loss, err = _numpy_eval(params, mask, x, y)
            np.testing.assert_allclose(losses[i, j], loss, rtol=1e-5)
            np.testing.assert_allclose(errors[i, j], err, atol=1e-7)
    # the same path twice: barrier exactly 0 between a network and itself
    _, _, e = analysis.interpolate(_apply, a, a, mask, [(x1, y1)], points=4)
    assert float(analysis.instability(e)[0]) == 0.0


def test_convex_loss_stays_under_the_chord_and_two_minima_have_no_barrier():
    r = np.random.default_rng(1)
    x, y = jnp.asarray(r.normal(size=(3, 5))), jnp.asarray(r.normal(size=3))

    def loss(w):  # convex in w: a linear model with a quadratic loss
        return jnp.mean((x @ w - y) ** 2)

    a, b = jnp.asarray(r.normal(size=5)), jnp.asarray(r.normal(size=5))
    alphas, f = analysis.path_losses(loss, a, b, points=30)
    chord = (1 - alphas) * loss(a) + alphas * loss(b)
    assert np.all(np.asarray(f) <= np.asarray(chord) + 1e-5)
    assert np.any(np.asarray(f) < np.asarray(chord) - 1e-3)  # strictly under somewhere
    # two different exact minimisers (3 equations, 5 unknowns): loss 0 all along
    w0 = jnp.linalg.lstsq(x, y)[0]
    null = jnp.linalg.svd(x)[2][-1]
    _, f = analysis.path_losses(loss, w0, w0 + 3 * null, points=30)
    assert float(analysis.instability(f)) == pytest.approx(0.0, abs=1e-5)


def test_double_well_barrier_is_the_closed_form():
    def well(w):
        return (w ** 2 - 1) ** 2

    _, f = analysis.path_losses(well, jnp.array(-1.0), jnp.array(1.0), points=31)
    assert float(analysis.instability(f)) == pytest.approx(1.0, abs=1e-6)  # f(0) = 1
    # 30 points miss w = 0: the nearest point is w = ±1/29
    _, f = analysis.path_losses(well, jnp.array(-1.0), jnp.array(1.0), points=30)
    assert float(analysis.instability(f)) == pytest.approx((1 / 29**2 - 1) ** 2, abs=1e-6)
    # a pytree of weights: the same well in each of two coordinates
    _, f = analysis.path_losses(lambda p: well(p["u"]) + well(p["v"]),
                                {"u": -1.0, "v": 1.0}, {"u": 1.0, "v": -1.0}, points=31)
    assert float(analysis.instability(f)) == pytest.approx(2.0, abs=1e-6)


def test_instability_by_hand():
    e = np.array([[0.1, 0.5, 0.3], [0.2, 0.2, 0.2]])
    np.testing.assert_allclose(analysis.instability(e), [0.3, 0.0], atol=1e-7)


def _bits(n_flip, base=None, start=0):
    """A (10, 10) mask: ``base`` (default all False) with bits start..start+n flipped."""
    m = np.zeros(100, bool) if base is None else np.asarray(base).reshape(-1).copy()
    m[start:start + n_flip] ^= True
    return m.reshape(10, 10)


def test_hamming_identical_complementary_and_by_hand():
    r = np.random.default_rng(2)
    w = r.random((10, 10)) < 0.3
    bias = np.ones(10, bool)
    a = {"w": jnp.asarray(w), "b": jnp.asarray(bias)}
    assert analysis.hamming(a, a) == 0.0
    comp = {"w": jnp.asarray(~w), "b": jnp.asarray(bias)}
    assert analysis.hamming(a, comp) == 1.0
    # the bias is not prunable by default: its bits do not count unless asked
    other = {"w": jnp.asarray(_bits(7, w)), "b": jnp.asarray(~bias)}
    assert analysis.hamming(a, other) == pytest.approx(0.07)
    assert analysis.hamming(a, other, prunable=masks.all_leaves) == pytest.approx(17 / 110)


def test_early_bird_rule_on_scripted_sequences():
    same = {"w": jnp.asarray(_bits(30))}
    # cannot fire before the 5th mask, fires at it when all are equal
    assert analysis.first_draw([same] * 4) is None
    assert analysis.first_draw([same] * 5) == 4
    # two early masks far away, then settled ones: fires once the FIFO holds only
    # settled masks (index 6 = the 5th settled one)
    far = [{"w": jnp.asarray(_bits(30, start=50))}, {"w": jnp.asarray(_bits(30, start=60))}]
    assert analysis.first_draw([*far, *[same] * 5]) == 6
    # distances exactly eps count (<=, as the reference code)
    near = {"w": jnp.asarray(_bits(10, same["w"], start=80))}  # distance 0.10
    assert analysis.hamming(same, near) == pytest.approx(0.1)
    assert analysis.first_draw([same, same, same, same, near], epsilon=0.1) == 4
    assert analysis.first_draw([same, same, same, same, near], epsilon=0.09) is None
    # a slow drift: consecutive distances 0.06 <= eps, but the newest mask is
    # 0.24 from the oldest in the FIFO: the reference rule (newest vs each older)
    # does not fire where "the last distances between consecutive masks" would
    drift = [{"w": jnp.asarray(_bits(6 * i))} for i in range(1, 9)]
    consecutive = [analysis.hamming(p, q) for p, q in itertools.pairwise(drift)]
    assert np.allclose(consecutive, 0.06)
    assert analysis.first_draw(drift, epsilon=0.1) is None
    state = analysis.early_bird(epsilon=0.1)
    for m in drift[:5]:
        state = analysis.early_bird_put(state, m)
    assert len(state.masks) == 5
    np.testing.assert_allclose(analysis.early_bird_distances(state), [0.24, 0.18, 0.12, 0.06])
    assert not analysis.early_bird_emerged(state)
    state = analysis.early_bird_put(state, drift[5])
    assert len(state.masks) == 5 and state.masks[0] is drift[1]  # the FIFO dropped one


@pytest.mark.parametrize("eps", [0, 1, 1.5, -0.1])
def test_early_bird_epsilon_outside_the_open_interval(eps):
    with pytest.raises(ValueError, match="epsilon"):
        analysis.early_bird(epsilon=eps)


def test_overlap_table_and_matrix_against_numpy():
    r = np.random.default_rng(3)
    shapes = {"a": (4, 5), "b": (5, 3)}
    ms = [{k: r.random(s) < d for k, s in shapes.items()} for d in (0.5, 0.3, 0.7)]
    ms[2]["a"][:] = False  # a layer that keeps nothing
    ms[1]["a"][:] = False
    trees = [{k: jnp.asarray(v) for k, v in m.items()} for m in ms]
    t = analysis.overlap_table(trees[0], trees[1])
    for k in shapes:
        x, y = ms[0][k], ms[1][k]
        row = t[k]
        assert row["both"] == int((x & y).sum()) and row["total"] == x.size
        assert row["kept_a"] == int(x.sum()) and row["kept_b"] == int(y.sum())
        assert row["jaccard"] == pytest.approx((x & y).sum() / (x | y).sum())
        assert row["hamming"] == pytest.approx((x != y).mean())
    allx = np.concatenate([ms[0][k].ravel() for k in shapes])
    ally = np.concatenate([ms[1][k].ravel() for k in shapes])
    assert t["all"]["jaccard"] == pytest.approx((allx & ally).sum() / (allx | ally).sum())
    assert t["all"]["hamming"] == pytest.approx((allx != ally).mean())
    assert analysis.overlap_table(trees[1], trees[2])["a"]["jaccard"] == 1.0  # both empty
    flat = [np.concatenate([m[k].ravel() for k in shapes]) for m in ms]
    jac = analysis.overlap_matrix(trees)
    ham = analysis.overlap_matrix(trees, metric="hamming")
    for i in range(3):
        for j in range(3):
            assert jac[i, j] == pytest.approx((flat[i] & flat[j]).sum() / (flat[i] | flat[j]).sum())
            assert ham[i, j] == pytest.approx((flat[i] != flat[j]).mean())


def test_bad_inputs_name_the_argument():
    a = _mlp(0)
    x, y = np.zeros((4, 6), np.float32), np.zeros(4, int)
    with pytest.raises(ValueError, match="points"):
        analysis.interpolate(_apply, a, a, None, [(x, y)], points=1)
    with pytest.raises(ValueError, match="chunk"):
        analysis.interpolate(_apply, a, a, None, [(x, y)], chunk=0)
    with pytest.raises(ValueError, match=r"batches\[1\]"):
        analysis.interpolate(_apply, a, a, None, [(x, y), (x, y[:3])])
    with pytest.raises(ValueError, match="batches"):
        analysis.interpolate(_apply, a, a, None, [])
    bad = {**a, "out": {**a["out"], "kernel": jnp.zeros((8, 4))}}
    with pytest.raises(ValueError, match=r"params_b\['out'\]\['kernel'\]"):
        analysis.interpolate(_apply, a, bad, None, [(x, y)])
    with pytest.raises(ValueError, match=r"mask\['h'\]\['kernel'\]"):
        analysis.interpolate(_apply, a, a, {**masks.init(a), "h": {
            "kernel": jnp.ones((6, 7), bool), "bias": jnp.ones(8, bool)}}, [(x, y)])
    with pytest.raises(ValueError, match="errors"):
        analysis.instability([0.3])
    m = {"w": jnp.ones((2, 2), bool)}
    with pytest.raises(ValueError, match=r"mask_b\['w'\]"):
        analysis.hamming(m, {"w": jnp.ones((2, 3), bool)})
    with pytest.raises(ValueError, match="prunable"):
        analysis.hamming({"b": jnp.ones(3, bool)}, {"b": jnp.ones(3, bool)})
    with pytest.raises(ValueError, match="metric"):
        analysis.overlap_matrix([m, m], metric="dice")
    with pytest.raises(ValueError, match="mask_list"):
        analysis.overlap_matrix([m])
    with pytest.raises(ValueError, match="keep"):
        analysis.early_bird(keep=1)
