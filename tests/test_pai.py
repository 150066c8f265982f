"""Tests for lotto_jax.pai: prune_at_init over every method, the sanity-check
controls, layer collapse, bad input, and the driver end to end on MNIST-1D.

Truths: numpy sorts for magnitude masks, hand-worked small cases for inversion and
collapse, and the exact counts of lotto_jax.prune's rule (round half up).
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

from lotto_jax import common, masks, pai, prune, scores, train

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
    params = mlp_params(0, (40, 30, 20), bias=False)
    key = jax.random.key(3)
    got = pai.prune_at_init("random", params=params, density=0.2, key=key)
    s = np.concatenate([np.asarray(v).ravel()
                        for v in kernels(scores.random(params, key=key))])
    n_keep = math.floor(0.2 * s.size + 0.5)
    want = np.zeros(s.size, bool)
    want[np.argsort(s, kind="stable")[s.size - n_keep:]] = True
    np.testing.assert_array_equal(np.concatenate([k.ravel() for k in kernels(got)]), want)
    assert count(got) == round(0.2 * (1200 + 600))
    # about uniform per layer (a global threshold over i.i.d. scores); binomial std
    # of a layer's density is at most sqrt(.2 * .8 / 600) = 0.016
    for k in kernels(got):
        assert abs(k.mean() - 0.2) < 0.06
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


def test_reinit_draws_new_weights_of_the_same_shapes():
    from lotto_jax import models

    module = models.build("mnist1d_mlp", hidden=8)
    a = pai.reinit(module, (40,), key=jax.random.key(0))
    b = pai.reinit(module, (40,), key=jax.random.key(1))
    assert jax.tree.map(np.shape, a) == jax.tree.map(np.shape, b)
    assert not np.allclose(a["params"]["Dense_0"]["kernel"], b["params"]["Dense_0"]["kernel"])


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
        pai.PaiConfig(controls=("shuffle", "random_reinit"))
    with pytest.raises(ValueError, match=r"^density:"):
        pai.PaiConfig(density=2.0)


def test_schedule_densities():
    np.testing.assert_allclose(pai.schedule_densities(0.001, 3), [0.1, 0.01, 0.001])
    np.testing.assert_allclose(pai.schedule_densities(0.2, 4, schedule="linear"),
                               [0.8, 0.6, 0.4, 0.2])
    np.testing.assert_allclose(pai.schedule_densities(0.1, 2, start=0.4), [0.2, 0.1])


# ----------------------------------------------------------------------------------
# the driver


def test_main_end_to_end_on_mnist1d(tmp_path, monkeypatch):
    calls = []
    real_prepare = common.prepare
    monkeypatch.setattr(common, "prepare", lambda c: calls.append(1) or real_prepare(c))
    out = str(tmp_path / "run")
    config = pai.PaiConfig(
        run=common.RunConfig(
            model="mnist1d_mlp", validation=500,
            train=train.TrainConfig(steps=20, batch_size=100, eval_every=10, lr=2e-2),
        ),
        method="snip", density=0.05, controls=("shuffle", "reinit", "invert"),
        sample_per_class=5, out=out,
    )
    result = pai.main(config)
    assert len(calls) == 1  # one prepare: one trainer for the method and its controls
    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(result))
    assert os.path.exists(os.path.join(out, "config.json"))
    assert list(saved["variants"]) == ["snip", "shuffle", "reinit", "invert"]
    n = 40 * 500 + 500 * 500 + 500 * 10
    for name, r in saved["variants"].items():
        assert r["density"] == pytest.approx(round(0.05 * n) / n)
        assert set(r["layer_densities"]) == {"Dense_0/kernel", "Dense_1/kernel",
                                             "output/kernel"}
        assert [c["step"] for c in r["curve"]] == [0, 10, 20]
        assert 0 <= r["best_test_accuracy"] <= 1
        assert r["early_stop_step"] in (0, 10, 20)
        assert isinstance(r["collapsed_layers"], list)
        restored = ocp.StandardCheckpointer().restore(os.path.join(out, "masks", name))
        assert masks.density(restored) == pytest.approx(r["density"])
        assert {r.path: r.density for r in masks.summary(restored) if r.prunable} == \
            r["layer_densities"]
    # the shuffle control keeps the method's per-layer densities
    assert saved["variants"]["shuffle"]["layer_densities"] == \
        saved["variants"]["snip"]["layer_densities"]
    assert saved["variants"]["reinit"]["layer_densities"] == \
        saved["variants"]["snip"]["layer_densities"]
    assert saved["variants"]["snip"]["best_test_accuracy"] > 0.15  # it learned something


def test_main_replicates_prune_each_replicate_and_train_together(tmp_path, capsys):
    """--replicates 2: replicate 0 is the single run (same masks, accuracy to float
    rounding); replicate 1 is SNIP on its own θ0 (seed + 1) and its own sample
    (data seed + 1); results are per-replicate lists, shown as mean ± std."""
    def config(out, replicates):
        return pai.PaiConfig(
            run=common.RunConfig(
                model="mnist1d_mlp", validation=500, replicates=replicates,
                train=train.TrainConfig(steps=10, batch_size=100, eval_every=10, lr=2e-2),
            ),
            method="snip", density=0.05, controls=("shuffle",), sample_per_class=5,
            out=out,
        )

    one_dir, two_dir = str(tmp_path / "one"), str(tmp_path / "two")
    one = pai.main(config(one_dir, 1))
    two = pai.main(config(two_dir, 2))
    assert "± " in capsys.readouterr().out  # the table shows mean ± std
    assert (one["replicates"], two["replicates"]) == (1, 2)
    ckpt = ocp.StandardCheckpointer()
    for name in ("snip", "shuffle"):
        a, b = one["variants"][name], two["variants"][name]
        m1 = ckpt.restore(os.path.join(one_dir, "masks", name))
        m2 = ckpt.restore(os.path.join(two_dir, "masks", name))
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
    got = ckpt.restore(os.path.join(two_dir, "masks", "snip"))
    for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(x), y[1])
