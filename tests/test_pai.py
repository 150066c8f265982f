"""Tests for lotto_jax.pai: prune_at_init over every method, the sanity-check
controls, layer collapse, bad input, and the driver end to end on MNIST-1D.

Truths: numpy sorts for magnitude masks, hand-worked small cases for inversion and
collapse, the exact counts of lotto_jax.prune's rule (round half up), scipy's KS test
for the random scores, and for the driver the masks restored with plain orbax and
the reported accuracies re-computed by numpy forward passes.
"""

import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lotto_jax import data, masks, models, pai, prune, scores, train
from lotto_jax.runs import common
from lotto_jax.runs import pai as pai_run

# Arrays come from numpy: eager JAX ops compile on first use (slow on a loaded box).


def mlp_params(seed, dims, *, he=True, bias=True):
    """Dense layers with Kaiming-normal kernels: std sqrt(2 / fan_in)."""
    r = np.random.default_rng(seed)
    out = {}
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        std = math.sqrt(2 / a) if he else 1.0
        out[f"Dense_{i}"] = {"kernel": jnp.asarray((std * r.standard_normal((a, b)))
                                                   .astype(np.float32))}
        if bias:
            out[f"Dense_{i}"]["bias"] = jnp.zeros(b, jnp.float32)
    return out


def mlp_logits(p, x):
    n = len(p)
    for i in range(n):
        x = x @ p[f"Dense_{i}"]["kernel"]
        if "bias" in p[f"Dense_{i}"]:
            x = x + p[f"Dense_{i}"]["bias"][None]
        if i < n - 1:
            x = jax.nn.relu(x)
    return x


def mlp_apply(p, state, x):
    return mlp_logits(p, x)


def kernels(tree):
    return [np.asarray(tree[k]["kernel"]) for k in sorted(tree)]


def count(mask):
    return sum(int(np.sum(k)) for k in kernels(mask))


to_density = jax.jit(prune.to_density, static_argnames=("density", "scope"))


def batches_for(seed, d, classes, n=2, size=8):
    r = np.random.default_rng(seed)
    return [(jnp.asarray(r.standard_normal((size, d)).astype(np.float32)),
             jnp.asarray(r.integers(0, classes, size).astype(np.int32))) for _ in range(n)]


# ----------------------------------------------------------------------------------
# magnitude and random through prune_at_init


def test_magnitude_at_init_global_and_layerwise_match_numpy_sorts():
    params = mlp_params(0, (12, 8, 4))
    ks = kernels(params)
    flat = np.concatenate([np.abs(k).ravel() for k in ks])
    keep = math.floor(0.3 * flat.size + 0.5)
    order = np.argsort(flat, kind="stable")  # ties: earlier position removed first
    want = np.zeros(flat.size, bool)
    want[order[flat.size - keep:]] = True
    got = pai.prune_at_init("magnitude", params=params, density=0.3)
    np.testing.assert_array_equal(np.concatenate([k.ravel() for k in kernels(got)]), want)
    assert bool(np.all(got["Dense_0"]["bias"]))  # biases are not pruned

    lw = pai.prune_at_init("magnitude", params=params, density=0.3, scope="layerwise")
    for k, m in zip(ks, kernels(lw), strict=True):
        a = np.abs(k).ravel()
        n_keep = math.floor(0.3 * a.size + 0.5)
        w = np.zeros(a.size, bool)
        w[np.argsort(a, kind="stable")[a.size - n_keep:]] = True
        np.testing.assert_array_equal(m.ravel(), w)


def test_random_at_init_is_the_global_threshold_of_normal_scores():
    """Truths: scipy's Kolmogorov-Smirnov test of ``scores.random`` against N(0, 1)
    (per leaf and pooled; the key is fixed, so the p-values are fixed numbers, all
    above 0.01), the draws of two leaves uncorrelated (|r| < 4 / sqrt(600)), and a
    numpy stable sort for the global top-k of those scores."""
    stats = pytest.importorskip("scipy.stats")
    params = mlp_params(0, (40, 30, 20), bias=False)
    key = jax.random.key(3)
    drawn = kernels(scores.random(params, key=key))
    for d in drawn:
        assert d.dtype == np.float32
        assert stats.kstest(d.ravel(), "norm").pvalue > 0.01
    s = np.concatenate([d.ravel() for d in drawn])
    assert stats.kstest(s, "norm").pvalue > 0.01
    assert abs(np.corrcoef(drawn[0].ravel()[:600], drawn[1].ravel())[0, 1]) < 4 / 600**0.5
    got = pai.prune_at_init("random", params=params, density=0.2, key=key)
    n_keep = math.floor(0.2 * s.size + 0.5)
    want = np.zeros(s.size, bool)
    want[np.argsort(s, kind="stable")[s.size - n_keep:]] = True
    np.testing.assert_array_equal(np.concatenate([k.ravel() for k in kernels(got)]), want)
    assert count(got) == 360  # 0.2 * (1200 + 600)
    other = pai.prune_at_init("random", params=params, density=0.2, key=jax.random.key(4))
    same = sum(int((a & b).sum()) for a, b in zip(kernels(got), kernels(other), strict=True))
    assert same < 0.4 * count(got)  # independent draws share about 20 %


def test_snip_and_grasp_one_shot_equal_pruning_their_scores():
    params = mlp_params(1, (6, 10, 3))
    batches = batches_for(2, 6, 3)
    loss_fn = scores.cross_entropy(mlp_logits)
    for method, fn in (("snip", scores.snip), ("grasp", scores.grasp)):
        got = pai.prune_at_init(method, params=params, density=0.25, loss_fn=loss_fn,
                                batches=batches)
        s = jax.jit(lambda p, fn=fn: fn(loss_fn, p, None, batches))(params)
        want = to_density(s, masks.init(params), density=0.25)
        jax.tree.map(np.testing.assert_array_equal, got, want)


def test_iterative_snip_shrinks_monotonically_to_the_exact_count():
    params = mlp_params(1, (6, 10, 3))
    batches = batches_for(2, 6, 3)
    seen = []
    mask = pai.prune_at_init(
        "snip", params=params, density=0.1, rounds=3, loss_fn=scores.cross_entropy(mlp_logits),
        batches=batches, callback=lambda k, d, m: seen.append(m),
    )
    n = 60 + 30
    assert [count(m) for m in seen] == [math.floor(0.1 ** (k / 3) * n + 0.5) for k in (1, 2, 3)]
    for a, b in itertools.pairwise(seen):  # pruned weights never come back
        assert all(np.all(y <= x) for x, y in zip(kernels(a), kernels(b), strict=True))
    assert count(mask) == 9


# ----------------------------------------------------------------------------------
# controls


def test_invert_keeps_the_complement_ordering_hand_worked():
    params = {"w": jnp.array([[0.3, -0.1, 0.5, -0.2, 0.4, 0.0]])}
    # |θ| = .3 .1 .5 .2 .4 0 ; keep 3 highest: .5 .4 .3 ; inverted: 0 .1 .2
    hi = pai.prune_at_init("magnitude", params=params, density=0.5)
    lo = pai.prune_at_init("magnitude", params=params, density=0.5, invert=True)
    assert hi["w"].tolist() == [[True, False, True, False, True, False]]
    assert lo["w"].tolist() == [[False, True, False, True, False, True]]
    # ties: the earlier position is removed first, inverted or not
    tied = {"w": jnp.array([[1.0, 1.0, 1.0, 1.0]])}
    assert pai.prune_at_init("magnitude", params=tied, density=0.5)["w"].tolist() == \
        [[False, False, True, True]]
    assert pai.prune_at_init("magnitude", params=tied, density=0.5,
                             invert=True)["w"].tolist() == [[False, False, True, True]]
    np.testing.assert_array_equal(pai.invert({"w": jnp.array([2.0, -1.0])})["w"], [-2.0, 1.0])


def test_shuffle_keeps_layer_counts_and_moves_weights():
    params = mlp_params(0, (30, 20, 10))
    mask = pai.prune_at_init("magnitude", params=params, density=0.3)
    sh = pai.shuffle(mask, key=jax.random.key(0))
    assert [k.sum() for k in kernels(sh)] == [k.sum() for k in kernels(mask)]
    assert masks.overlap(mask, sh) < 0.6
    assert bool(np.all(sh["Dense_0"]["bias"]))


def test_reinit_is_models_init_with_the_drivers_key():
    """pai_run.main draws the reinit control with ``fold_in(key(seed), 3)``: bit-equal to
    ``models.init`` under that key; another key gives other weights."""
    module = models.build("mnist1d_mlp", hidden=8)
    key = jax.random.fold_in(jax.random.key(0), 3)
    got = pai.reinit(module, (40,), key=key)
    want = models.init(module, key, (40,))
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    theta0 = models.init(module, jax.random.key(0), (40,))
    assert not np.array_equal(got["params"]["Dense_0"]["kernel"],
                              theta0["params"]["Dense_0"]["kernel"])


# ----------------------------------------------------------------------------------
# layer collapse


def test_collapsed_layers_on_a_constructed_mask():
    mask = {
        "a": {"kernel": np.zeros((3, 2), bool), "bias": np.zeros(2, bool)},
        "b": {"kernel": np.eye(2, dtype=bool)},
        "c": {"kernel": np.zeros((2, 2), bool)},
    }
    assert pai.collapsed_layers(mask) == ["a/kernel", "c/kernel"]
    assert pai.collapsed_layers(mask, prunable=masks.all_leaves) == [
        "a/bias", "a/kernel", "c/kernel"]


def test_global_magnitude_collapses_the_wide_layer_and_the_fixes_do_not():
    """Kaiming init: the wide first layer (fan-in 400) has the smallest weights, so a
    global magnitude threshold at 1 % density empties it. Observed here (seeds 0-2):
    Dense_0 (400x20) keeps 0 of 8,000 while the 20x20 and 20x10 layers share all 86
    kept weights (53 + 33 for seed 0). Layerwise magnitude, SynFlow and
    prevent_collapse do not collapse it."""
    params = mlp_params(0, (400, 20, 20, 10), bias=False)
    total = 8000 + 400 + 200
    mag = pai.prune_at_init("magnitude", params=params, density=0.01)
    assert pai.collapsed_layers(mag) == ["Dense_0/kernel"]
    assert count(mag) == round(0.01 * total)
    assert pai.collapsed_layers(
        pai.prune_at_init("magnitude", params=params, density=0.01, scope="layerwise")) == []
    syn = pai.prune_at_init("synflow", params=params, density=0.01, apply_fn=mlp_apply,
                            input_shape=(400,), rounds=20)
    assert pai.collapsed_layers(syn) == []
    assert count(syn) == round(0.01 * total)
    kept = pai.prune_at_init("magnitude", params=params, density=0.01, prevent_collapse=True)
    assert pai.collapsed_layers(kept) == []
    k0 = np.asarray(kept["Dense_0"]["kernel"])
    assert k0.sum() == 1
    w0 = np.abs(np.asarray(params["Dense_0"]["kernel"]))
    assert k0.ravel()[np.argmax(w0)]  # the highest-scoring weight of the layer
    assert count(kept) == round(0.01 * total) + 1  # one weight over the target


# ----------------------------------------------------------------------------------
# bad input


def test_bad_input_names_the_argument():
    params = mlp_params(0, (4, 3, 2))
    loss_fn = scores.cross_entropy(mlp_logits)
    cases = [
        (dict(method="prune_everything"), "method"),
        (dict(method="magnitude", density=0.0), "density"),
        (dict(method="magnitude", density=1.5), "density"),
        (dict(method="magnitude", density=float("nan")), "density"),
        (dict(method="magnitude", scope="per-layer"), "scope"),
        (dict(method="magnitude", rounds=0), "rounds"),
        (dict(method="magnitude", schedule="cosine"), "schedule"),
        (dict(method="random"), "key"),
        (dict(method="snip", loss_fn=loss_fn), "batches"),
        (dict(method="grasp", loss_fn=loss_fn, batches=[]), "batches"),
        (dict(method="snip", batches=batches_for(0, 4, 2)), "loss_fn"),
        (dict(method="synflow", apply_fn=mlp_apply), "input_shape"),
        (dict(method="synflow", input_shape=(4,)), "apply_fn"),
    ]
    for kw, name in cases:
        kw = {"density": 0.5, **kw}
        method = kw.pop("method")
        with pytest.raises(ValueError, match=rf"^{name}:"):
            pai.prune_at_init(method, params=params, **kw)
    bad = jax.tree.map(lambda p: np.ones(p.shape, bool), params)
    bad["Dense_0"]["kernel"] = np.ones((3, 4), bool)
    with pytest.raises(ValueError, match=r"Dense_0.*kernel"):
        pai.prune_at_init("magnitude", params=params, mask=bad, density=0.5)
    with pytest.raises(ValueError, match=r"^controls:"):
        pai_run.PaiConfig(controls=("shuffle", "random_reinit"))
    with pytest.raises(ValueError, match=r"^density:"):
        pai_run.PaiConfig(density=2.0)
    with pytest.raises(ValueError, match=r"^save_every:"):
        pai_run.PaiConfig(save_every=0)
    with pytest.raises(ValueError, match=r"^save_interval:"):
        pai_run.PaiConfig(save_interval=-1.0)


def test_schedule_densities():
    np.testing.assert_allclose(pai.schedule_densities(0.001, 3), [0.1, 0.01, 0.001])
    np.testing.assert_allclose(pai.schedule_densities(0.2, 4, schedule="linear"),
                               [0.8, 0.6, 0.4, 0.2])
    np.testing.assert_allclose(pai.schedule_densities(0.1, 2, start=0.4), [0.2, 0.1])


# ----------------------------------------------------------------------------------
# the driver


class FitSpy:
    """Wraps ``train.fit`` and keeps, as numpy, the params each network started from
    and ended with (``pai_run.main`` trains every variant in one stacked fit, one row
    per variant, or a single network unstacked)."""

    def __init__(self, real):
        self.real, self.start, self.final = real, [], []

    def __call__(self, trainer, state, mask, dataset, **kw):
        rows = (lambda t: [jax.tree.map(lambda a, i=i: np.array(a[i]), t)
                           for i in range(len(jax.tree.leaves(t)[0]))]) \
            if kw.get("replicates") else (lambda t: [jax.tree.map(np.array, t)])
        self.start = rows(state.params)
        state, result = self.real(trainer, state, mask, dataset, **kw)
        self.final = rows(state.params)
        return state, result


def np_logits(p, x, *, residual=False):
    """The MLPs of lotto_jax.models in float64 numpy: ``Dense_i`` + ReLU (the second
    residual for mnist1d_mlp), then ``output``."""
    h = np.asarray(x, np.float64).reshape(len(x), -1)
    for i in range(len(p) - 1):
        z = np.maximum(h @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"], 0.0)
        h = h + z if residual and i == 1 else z
    return h @ p["output"]["kernel"] + p["output"]["bias"]


def np_accuracy(params, mask, split, *, residual=False):
    ticket = jax.tree.map(lambda w, m: np.where(m, np.asarray(w, np.float64), 0.0),
                          params, mask)
    return float(np.mean(np_logits(ticket, split.x, residual=residual).argmax(1) == split.y))


# A near-tie of two logits may rank differently in float32 (XLA) and float64 (numpy):
# one test example in 1000.
ONE_EXAMPLE = 1e-3 + 1e-9


def snip_config(out, replicates=1):
    """SNIP at density 0.05 with three controls on the MNIST-1D MLP, 20 steps."""
    return pai_run.PaiConfig(
        run=common.RunConfig(
            model="mnist1d_mlp", validation=500, replicates=replicates,
            train=train.TrainConfig(steps=20, batch_size=100, eval_every=10, lr=2e-2),
        ),
        method="snip", density=0.05, controls=("shuffle", "reinit", "invert"),
        sample_per_class=5, out=out,
    )


@pytest.fixture(scope="module")
def snip_run(tmp_path_factory):
    """``(out, result, FitSpy, prepare calls)`` of :func:`snip_config`'s run."""
    calls = []
    real_prepare = common.prepare
    spy = FitSpy(train.fit)
    out = str(tmp_path_factory.mktemp("pai") / "run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(common, "prepare", lambda c: calls.append(1) or real_prepare(c))
        mp.setattr(train, "fit", spy)
        result = pai_run.main(snip_config(out))
    return out, result, spy, calls


def test_main_end_to_end_on_mnist1d(snip_run):
    """Truths: the masks restored with plain orbax; θ0 and the reinit weights from
    ``models.init`` with the keys ``key(seed)`` and ``fold_in(key(seed), 3)``; each
    variant's reported test accuracy re-computed by a numpy forward pass of its
    final params ⊙ its restored mask on ``data.load``'s test split."""
    out, result, spy, calls = snip_run
    assert len(calls) == 1  # one prepare: one trainer for the method and its controls
    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(result))
    assert os.path.exists(os.path.join(out, "config.json"))
    assert list(saved["variants"]) == ["snip", "shuffle", "reinit", "invert"]
    n = 40 * 500 + 500 * 500 + 500 * 10
    module = models.build("mnist1d_mlp")
    theta0 = models.init(module, jax.random.key(0), (40,))["params"]
    fresh = models.init(module, jax.random.fold_in(jax.random.key(0), 3), (40,))["params"]
    test = data.load("mnist1d", seed=0, validation=500).test
    assert len(spy.final) == 4
    ckpt = ocp.StandardCheckpointer()
    for j, (name, r) in enumerate(saved["variants"].items()):
        assert r["density"] == round(0.05 * n) / n
        assert set(r["layer_densities"]) == {"Dense_0/kernel", "Dense_1/kernel",
                                             "output/kernel"}
        assert [c["step"] for c in r["curve"]] == [0, 10, 20]
        assert r["early_stop_step"] in (0, 10, 20)
        assert isinstance(r["collapsed_layers"], list)
        restored = ckpt.restore(os.path.join(out, "variants", name, "mask"))
        assert sum(int(np.sum(m)) for m in kernels(restored)) == round(0.05 * n)
        assert {k: int(np.sum(restored[k]["kernel"])) / restored[k]["kernel"].size
                for k in restored} == {k.split("/")[0]: v for k, v in
                                      r["layer_densities"].items()}
        # training started from θ0 (reinit: the fresh draw) ⊙ the restored mask
        start = fresh if name == "reinit" else theta0
        for w, m, got in zip(jax.tree.leaves(start), jax.tree.leaves(restored),
                             jax.tree.leaves(spy.start[j]), strict=True):
            np.testing.assert_array_equal(got, np.where(m, w, 0))
        # the stored final params are the trained ones, keep pruned weights at 0
        # and give the reported accuracy
        final = ckpt.restore(os.path.join(out, "variants", name, "final"))["params"]
        for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(spy.final[j]), strict=True):
            np.testing.assert_array_equal(a, b)
        for w, m in zip(jax.tree.leaves(final), jax.tree.leaves(restored), strict=True):
            assert np.all(w[~m] == 0)
        acc = np_accuracy(final, restored, test, residual=True)
        assert acc == pytest.approx(r["final_test_accuracy"], abs=ONE_EXAMPLE)
        assert r["curve"][-1]["test_accuracy"] == r["final_test_accuracy"]
    # the shuffle control keeps the method's per-layer densities
    assert saved["variants"]["shuffle"]["layer_densities"] == \
        saved["variants"]["snip"]["layer_densities"]
    assert saved["variants"]["reinit"]["layer_densities"] == \
        saved["variants"]["snip"]["layer_densities"]
    assert saved["variants"]["snip"]["best_test_accuracy"] > 0.15  # it learned something


MLP_N = {"Dense_0": 40 * 100, "Dense_1": 100 * 100, "output": 100 * 10}  # 15,000


def half_up(x):
    return math.floor(x + 0.5)


@pytest.mark.parametrize(
    ("method", "density", "extra"),
    [
        (None, 0.1, {"pai_rounds": 3}),  # synflow, the default method
        ("grasp", 0.05, {"sample_per_class": 2}),
        ("magnitude", 0.1, {}),
        ("random", 0.1, {}),
        # 0.75 weights -> 1 kept globally (the largest |θ0|); the other two layers
        # would collapse and keep their own largest instead: 3 in all
        ("magnitude", 0.5 / 15000, {"prevent_collapse": True}),
    ],
    ids=["synflow-3-rounds", "grasp", "magnitude", "random", "prevent-collapse"],
)
def test_main_methods_exact_counts_and_reported_accuracy(tmp_path, monkeypatch, method,
                                                          density, extra):
    """The driver with each method on a 40-100-100-10 MLP (2 training steps).

    Truths: kept counts by integer arithmetic (``floor(N d_k + 0.5)`` of N = 15,000
    kernel weights after every round ``k``, ``d_k = d^(k/n)``; plus one weight per
    rescued layer with prevent_collapse), numpy's global top-k of |θ0| for magnitude
    (θ0 = ``models.init(mlp, key(0))``), and the reported accuracy re-computed by a
    numpy forward pass on the final params ⊙ the mask restored with plain orbax."""
    rounds_seen, counts = [], []
    real_iterative = pai.iterative_prune

    def spy_iterative(score_fn, mask, **kw):
        rounds_seen.append(kw["rounds"])
        kw["callback"] = lambda k, d, m: counts.append(count(m))
        return real_iterative(score_fn, mask, **kw)

    monkeypatch.setattr(pai, "iterative_prune", spy_iterative)
    spy = FitSpy(train.fit)
    monkeypatch.setattr(train, "fit", spy)
    out = str(tmp_path / "run")
    run = common.RunConfig(
        model="mlp", train=train.TrainConfig(steps=2, batch_size=50, eval_every=2, lr=1e-2))
    kw = {} if method is None else {"method": method}
    result = pai_run.main(pai_run.PaiConfig(run=run, density=density, out=out, **kw, **extra))
    assert result["method"] == (method or "synflow")
    n = sum(MLP_N.values())
    rounds = extra.get("pai_rounds", 1)
    assert rounds_seen == [rounds]
    want_counts = [half_up(n * density ** (k / rounds)) for k in range(1, rounds)]
    want_counts.append(half_up(n * density))
    mask = ocp.StandardCheckpointer().restore(
        os.path.join(out, "variants", result["method"], "mask"))
    theta0 = models.init(models.build("mlp"), jax.random.key(0), (40,))["params"]
    w0 = {k: np.abs(np.asarray(theta0[k]["kernel"])) for k in MLP_N}
    if extra.get("prevent_collapse"):
        assert want_counts == [1]
        assert counts == [3]
        for k in MLP_N:  # exactly the layer's largest |θ0|
            want = np.zeros(w0[k].size, bool)
            want[np.argmax(w0[k])] = True
            np.testing.assert_array_equal(mask[k]["kernel"].ravel(), want)
    else:
        assert counts == want_counts
    r = result["variants"][result["method"]]
    assert r["collapsed_layers"] == []
    assert r["density"] == counts[-1] / n
    assert r["layer_densities"] == {f"{k}/kernel": int(mask[k]["kernel"].sum()) / MLP_N[k]
                                    for k in MLP_N}
    assert all(np.all(mask[k]["bias"]) for k in MLP_N)  # biases are not pruned
    if method == "magnitude" and not extra:
        flat = np.concatenate([w0[k].ravel() for k in MLP_N])  # tree order
        want = np.zeros(n, bool)
        want[np.argsort(flat, kind="stable")[n - counts[-1]:]] = True
        np.testing.assert_array_equal(
            np.concatenate([mask[k]["kernel"].ravel() for k in MLP_N]), want)
    if method == "random":  # i.i.d. scores: each layer near 0.1 (binomial, 5 sigma)
        for k, size in MLP_N.items():
            assert abs(mask[k]["kernel"].mean() - 0.1) < 5 * (0.09 / size) ** 0.5
    assert len(spy.final) == 1  # one network, trained unstacked
    final = ocp.StandardCheckpointer().restore(
        os.path.join(out, "variants", result["method"], "final"))["params"]
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(spy.final[0]), strict=True):
        np.testing.assert_array_equal(a, b)  # the stored weights are the trained ones
    for w, m in zip(jax.tree.leaves(final), jax.tree.leaves(mask), strict=True):
        assert np.all(w[~m] == 0)
    test = data.load("mnist1d", seed=0).test
    assert np_accuracy(final, mask, test) == pytest.approx(r["final_test_accuracy"],
                                                          abs=ONE_EXAMPLE)


def test_main_replicates_prune_each_replicate_and_train_together(snip_run, tmp_path,
                                                                 capsys):
    """--replicates 2: replicate 0 is the single run (same masks, accuracy to float
    rounding); replicate 1 is SNIP on its own θ0 (seed + 1) and its own sample
    (data seed + 1); results are per-replicate lists, shown as mean ± std."""
    config = snip_config
    one_dir, one, _, _ = snip_run
    two_dir = str(tmp_path / "two")
    two = pai_run.main(config(two_dir, 2))
    assert "± " in capsys.readouterr().out  # the table shows mean ± std
    assert (one["replicates"], two["replicates"]) == (1, 2)
    ckpt = ocp.StandardCheckpointer()
    for name in ("snip", "shuffle", "reinit", "invert"):
        a, b = one["variants"][name], two["variants"][name]
        m1 = ckpt.restore(os.path.join(one_dir, "variants", name, "mask"))
        m2 = ckpt.restore(os.path.join(two_dir, "variants", name, "mask"))
        for x, y in zip(jax.tree.leaves(m1), jax.tree.leaves(m2), strict=True):
            np.testing.assert_array_equal(x, y[0])  # replicate 0 = the single run
        assert not np.array_equal(m2["Dense_1"]["kernel"][0], m2["Dense_1"]["kernel"][1])
        assert b["density"] == pytest.approx(a["density"])
        assert len(b["final_test_accuracy"]) == 2 and len(b["curve"][-1]["test_accuracy"]) == 2
        assert abs(b["final_test_accuracy"][0] - a["final_test_accuracy"]) <= 2e-3
        assert {k: v[0] for k, v in b["layer_densities"].items()} == a["layer_densities"]
        assert len(b["collapsed_layers_per_replicate"]) == 2
    # replicate 1: SNIP of its own weights on its own sample
    prep = common.prepare(config(two_dir, 2).run)
    params1 = common.init_variables(prep.module, prep.dataset.input_shape, 1)["params"]
    apply = train.classifier(prep.module)
    batches = scores.sample_batches(
        prep.dataset.train.x, prep.dataset.train.y,
        key=jax.random.fold_in(jax.random.key(1), 1), num_classes=10, per_class=5)
    want = pai.prune_at_init(
        "snip", params=params1, density=0.05,
        loss_fn=scores.cross_entropy(lambda p, x: apply(p, {}, x, False)[0]),
        batches=batches)
    got = ckpt.restore(os.path.join(two_dir, "variants", "snip", "mask"))
    for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(x), y[1])
