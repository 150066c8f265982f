"""Tests of sparse fine-tuning (lotto_jax.sft) and ``lotto sft``.

Independent truths: a numpy sort for LT-SFT's threshold selection (ties included)
and for the base patch (a stable argsort); numpy nonzero / add for sparse
differences and their composition; one SGD step of a linear softmax model in
closed form (x^T (softmax - onehot) / B) for the sparse fine-tuning through the
δ parametrisation; the sigmoid in numpy for γ; central finite differences (float64)
and the closed form g ⊙ (θ_ft − θ_pre) ⊙ (1 − 2b) ⊙ σ′ for the score gradient;
numpy boolean selection for the task split; for the end-to-end run, the stored
weights re-selected and re-differenced by numpy.
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _killrun import assert_one_line_error
from _killrun import here as run_here
from _tiny_data import clusters_npz

from lotto_jax import masks, sft, train
from lotto_jax.data import Dataset, Split

# ---------------------------------------------------------------- the selection


def _tree(rng, quantised=False):
    shapes = {"a": {"kernel": (6, 5), "bias": (5,)}, "b": {"kernel": (5, 3), "bias": (3,)}}

    def leaf(s):
        v = rng.integers(-4, 5, size=s) * 0.25 if quantised else rng.normal(size=s)
        return jnp.asarray(v, jnp.float32)

    return {k: {n: leaf(s) for n, s in v.items()} for k, v in shapes.items()}


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def np_most_changed(t0, t1, k, selectable):
    """The reference rule: threshold = the k-th largest |Δ| over the selectable
    leaves; selected = |Δ| >= threshold; other leaves all True."""
    d0, d1 = jax.tree.leaves(t0), jax.tree.leaves(t1)
    deltas = [np.abs(np.asarray(b, np.float32) - np.asarray(a, np.float32))
              for a, b in zip(d0, d1, strict=True)]
    pool = np.concatenate([d.ravel() for d, s in zip(deltas, selectable, strict=True) if s])
    thr = np.sort(pool)[pool.size - k]
    return [d >= thr if s else np.ones(d.shape, bool)
            for d, s in zip(deltas, selectable, strict=True)]


@pytest.mark.parametrize("quantised", [False, True])
@pytest.mark.parametrize("prunable", ["all", "kernels"])
def test_most_changed_is_the_reference_threshold_rule(quantised, prunable):
    rng = np.random.default_rng(1)
    t0, t1 = _tree(rng, quantised), _tree(rng, quantised)
    pred = masks.all_leaves if prunable == "all" else masks.default_prunable
    selectable = jax.tree.leaves(masks.is_prunable_tree(t0, pred))
    n = sum(int(np.size(x)) for x, s in zip(jax.tree.leaves(t0), selectable, strict=True)
            if s)
    for k in (1, 3, 7, n // 2, n):
        got = jax.tree.leaves(sft.most_changed(t0, t1, k, prunable=pred))
        want = np_most_changed(t0, t1, k, selectable)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(np.asarray(g), w)
        count = sum(int(np.sum(g)) for g, s in zip(got, selectable, strict=True) if s)
        if quantised:
            assert count >= k  # ties at the threshold are all selected
        else:
            assert count == k  # continuous changes: exactly k
    if quantised:  # the case the docs promise: ties do exceed k here
        assert sum(int(np.sum(g)) for g in jax.tree.leaves(
            sft.most_changed(t0, t1, 3))) > 3


def test_count_k_and_selection_errors():
    assert sft.count_k(0.01, 1000) == 10 and sft.count_k(0.0015, 1000) == 2
    assert sft.count_k(1e-9, 1000) == 1 and sft.count_k(40, 1000) == 40
    for bad, msg in ((0, "expected a fraction"), (-1, "expected a fraction"),
                     (2.5, "a count must be whole"), (1001, "1001 is larger than the "
                                                          "number of weights (1000)")):
        with pytest.raises(ValueError, match=r"^k: " + re.escape(msg)):
            sft.count_k(bad, 1000)
    rng = np.random.default_rng(0)
    t0, t1 = _tree(rng), _tree(rng)
    for k in (0, 54, 2.0, True):
        with pytest.raises(ValueError, match=r"^k: expected an int in \[1, 53\]"):
            sft.most_changed(t0, t1, k)
    with pytest.raises(ValueError, match=r"^theta1: "):
        sft.most_changed(t0, {"a": t1["a"]}, 3)


def test_random_selection_draws_exactly_k_selectable_entries():
    rng = np.random.default_rng(0)
    t = _tree(rng)
    m = sft.random_selection(t, 9, key=jax.random.key(3), prunable=masks.default_prunable)
    assert m["a"]["bias"].all() and m["b"]["bias"].all()  # not selectable: all True
    assert int(m["a"]["kernel"].sum() + m["b"]["kernel"].sum()) == 9
    other = sft.random_selection(t, 9, key=jax.random.key(4),
                                 prunable=masks.default_prunable)
    assert not np.array_equal(_flat(m), _flat(other))


# ------------------------------------------------------ differences, composition


def test_sparse_difference_and_composition_match_numpy():
    rng = np.random.default_rng(2)
    t0 = _tree(rng)
    f0 = _flat(t0)
    sup_a, sup_b = rng.random(f0.size) < 0.2, rng.random(f0.size) < 0.3

    def moved(sup):
        flat = f0 + np.where(sup, rng.normal(size=f0.size), 0).astype(np.float32)
        return sft.apply_differences(t0, sft.SparseDiff(
            jnp.arange(f0.size, dtype=jnp.int32), jnp.asarray(flat - f0)))

    ta, tb = moved(sup_a), moved(sup_b)
    pa, pb = sft.sparse_difference(t0, ta), sft.sparse_difference(t0, tb)
    da = _flat(ta) - f0
    np.testing.assert_array_equal(np.asarray(pa.indices), np.flatnonzero(da))
    np.testing.assert_array_equal(np.asarray(pa.values), da[np.flatnonzero(da)])
    # composition: θ0 + φa + φb, added in that order (numpy float32, bit for bit)
    want = f0.copy()
    want[np.asarray(pa.indices)] += np.asarray(pa.values)
    want[np.asarray(pb.indices)] += np.asarray(pb.values)
    both = sft.apply_differences(t0, pa, pb)
    np.testing.assert_array_equal(_flat(both), want)
    assert jax.tree.structure(both) == jax.tree.structure(t0)
    # applying φa then φb equals applying their sum (up to float rounding)
    summed = sft.sparse_difference(t0, jax.tree.map(
        lambda z, a, b: z + (a - z) + (b - z), t0, ta, tb))
    np.testing.assert_allclose(_flat(sft.apply_differences(t0, summed)), want, atol=1e-6)
    # within a mask: only its entries
    m = sft.most_changed(t0, ta, 5)
    pm = sft.sparse_difference(t0, ta, m)
    assert pm.indices.size == 5
    np.testing.assert_array_equal(_flat(sft.to_dense(pm, t0)),
                                  np.where(_flat(m), da, 0))
    with pytest.raises(ValueError, match=r"^diffs\[1\]: indices outside"):
        sft.apply_differences(t0, pa, sft.SparseDiff(jnp.array([f0.size]), jnp.ones(1)))


# ------------------------------------------------ sparse fine-tuning through δ


def _linear(params, model_state, x, train):
    return x @ params["w"] + params["b"][None], model_state


def _toy_task(seed=0, n=32, d=6, c=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, c, n).astype(np.int32)
    s = Split(x, y)
    return Dataset("toy", s, None, s, (d,), c, {}), {
        "w": jnp.asarray(rng.normal(size=(d, c)) * 0.5, jnp.float32),
        "b": jnp.asarray(rng.normal(size=c) * 0.1, jnp.float32)}


def np_linear_grad(params, x, y):
    """∂ mean CE / ∂(w, b) of a linear softmax model, closed form."""
    w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
    z = x @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return {"w": x.T @ p / len(y), "b": p.mean(0)}


def test_sparse_finetune_moves_only_the_selection_and_freezes_the_rest():
    ds, theta0 = _toy_task()
    theta1 = jax.tree.map(lambda p: p + jnp.linspace(-1, 1, p.size).reshape(p.shape),
                          theta0)
    mask = sft.most_changed(theta0, theta1, 7)
    # one full-batch SGD step on δ equals θ0 − lr · mask ⊙ ∇L(θ0) (closed form)
    cfg = train.TrainConfig(steps=1, batch_size=32, optimizer="sgd", momentum=0.0, lr=0.5,
                            eval_every=1, shuffle=False)
    t = train.make_trainer(sft.difference_apply(_linear), cfg, num_train=32)
    start = t.init(jax.tree.map(jnp.zeros_like, theta0), sft.difference_state(theta0))
    state, _ = train.fit(t, start, mask, ds, data_key=jax.random.key(0))
    theta2 = sft.sparse_weights(theta0, state.params, mask)
    g = np_linear_grad(theta0, ds.train.x, ds.train.y)
    for name in ("w", "b"):
        m = np.asarray(mask[name])
        want = np.asarray(theta0[name]) - 0.5 * np.where(m, g[name], 0)
        np.testing.assert_allclose(np.asarray(theta2[name]), want, rtol=1e-5, atol=1e-6)
    # many Adam steps: the unselected entries stay bit-equal to θ0, δ is 0 off the mask
    cfg = train.TrainConfig(steps=25, batch_size=8, eval_every=5, lr=0.05)
    t = train.make_trainer(sft.difference_apply(_linear), cfg, num_train=32)
    start = t.init(jax.tree.map(jnp.zeros_like, theta0), sft.difference_state(theta0))
    state, _ = train.fit(t, start, mask, ds, data_key=jax.random.key(1))
    theta2 = sft.sparse_weights(theta0, state.params, mask)
    for name in ("w", "b"):
        m = np.asarray(mask[name])
        off = np.asarray(theta2[name])[~m].view(np.uint32)
        np.testing.assert_array_equal(off, np.asarray(theta0[name])[~m].view(np.uint32))
        assert np.all(np.asarray(state.params[name])[~m] == 0)
        assert np.all(np.asarray(theta2[name])[m] != np.asarray(theta0[name])[m])
    np.testing.assert_array_equal(  # θ0 rides along in the state, untouched
        np.asarray(state.model_state["base"]["w"]), np.asarray(theta0["w"]))
    phi = sft.sparse_difference(theta0, theta2, mask)
    selected = sum(int(np.sum(m)) for m in jax.tree.leaves(mask))
    assert selected >= 7 and phi.indices.size == selected  # ties add entries; all moved


# ------------------------------------------------------------------- grafting


def _sigmoid(z):
    return 1 / (1 + np.exp(-np.asarray(z, np.float64)))


def test_graft_gamma_endpoints_and_rounding():
    rng = np.random.default_rng(3)
    pre, ft = _tree(rng), _tree(rng)
    scores = jax.tree.map(lambda p: jnp.asarray(rng.uniform(0, 20, p.shape), jnp.float32),
                          pre)
    base = jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < 0.3), pre)
    gamma = sft.graft_gamma(scores, base)
    for s, b, g in zip(jax.tree.leaves(scores), jax.tree.leaves(base),
                       jax.tree.leaves(gamma), strict=True):
        b = np.asarray(b, np.float64)
        want = b + (1 - 2 * b) * _sigmoid(np.asarray(s) - 10)
        np.testing.assert_allclose(np.asarray(g), want, rtol=1e-5, atol=1e-7)
    for s, b, r in zip(jax.tree.leaves(scores), jax.tree.leaves(base),
                       jax.tree.leaves(sft.rounded_gamma(scores, base)), strict=True):
        np.testing.assert_array_equal(np.asarray(r),
                                      np.logical_xor(np.asarray(b), np.asarray(s) > 10))
    # σ(1 − 10) = σ(−9) ≈ 1.234e-4: an initial score of 1 off the patch
    g = sft.graft_gamma({"s": jnp.ones(2)}, {"s": jnp.array([False, True])})["s"]
    np.testing.assert_allclose(np.asarray(g), [1.2339e-4, 1 - 1.2339e-4], rtol=1e-3)
    ones = jax.tree.map(jnp.ones_like, pre)
    zeros = jax.tree.map(jnp.zeros_like, pre)
    np.testing.assert_array_equal(_flat(sft.graft(pre, ft, zeros)), _flat(pre))
    np.testing.assert_allclose(_flat(sft.graft(pre, ft, ones)), _flat(ft), atol=1e-6)
    trues = jax.tree.map(lambda p: jnp.ones(p.shape, bool), pre)
    np.testing.assert_array_equal(_flat(sft.graft(pre, ft, trues)), _flat(ft))
    half = sft.graft(pre, ft, base)  # boolean: exactly θ_ft on b, θ_pre off it
    np.testing.assert_array_equal(_flat(half), np.where(_flat(base), _flat(ft), _flat(pre)))


def test_base_patch_is_the_top_fraction_by_change():
    rng = np.random.default_rng(4)
    pre = _tree(rng)
    ft = jax.tree.map(lambda p: p + jnp.asarray(rng.integers(-3, 4, p.shape) * 0.5,
                                                jnp.float32), pre)  # many ties
    d = np.abs(_flat(ft) - _flat(pre))
    for f in (0.05, 0.2, 1.0):
        k = max(1, int(np.floor(f * d.size + 0.5)))
        want = np.zeros(d.size, bool)
        want[np.argsort(-d, kind="stable")[:k]] = True
        np.testing.assert_array_equal(_flat(sft.base_patch(pre, ft, f)), want)
    for f in (0, 1.5, True):
        with pytest.raises(ValueError, match=r"^fraction: "):
            sft.base_patch(pre, ft, f)


def test_score_gradient_matches_closed_form_and_finite_differences():
    ds, pre = _toy_task(seed=5)
    rng = np.random.default_rng(5)
    ft = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), jnp.float32), pre)
    base = jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < 0.3), pre)
    scores = jax.tree.map(lambda p: jnp.asarray(rng.uniform(8, 12, p.shape), jnp.float32),
                          pre)
    x, y = ds.train.x, ds.train.y

    def loss_fn(params):
        logits = x @ params["w"] + params["b"][None]
        z = logits - jax.scipy.special.logsumexp(logits, axis=1, keepdims=True)
        return -jnp.mean(z[jnp.arange(len(y)), y])

    grad = jax.jit(sft.graft_grad, static_argnums=0)(loss_fn, scores, pre, ft, base)
    # closed form: g(θ(γ)) ⊙ (θ_ft − θ_pre) ⊙ (1 − 2b) ⊙ σ′(S − 10)
    gamma = sft.graft_gamma(scores, base)
    theta = {k: np.asarray(pre[k], np.float64) + np.asarray(gamma[k], np.float64)
             * (np.asarray(ft[k], np.float64) - np.asarray(pre[k], np.float64))
             for k in pre}
    g = np_linear_grad(theta, x.astype(np.float64), y)
    for k in pre:
        sig = _sigmoid(np.asarray(scores[k]) - 10)
        want = (g[k] * (np.asarray(ft[k], np.float64) - np.asarray(pre[k], np.float64))
                * (1 - 2 * np.asarray(base[k], np.float64)) * sig * (1 - sig))
        np.testing.assert_allclose(np.asarray(grad[k]), want, rtol=2e-4, atol=1e-7)
    # central finite differences in float64
    with jax.enable_x64(True):
        s64 = jax.tree.map(lambda s: jnp.asarray(s, jnp.float64), scores)
        p64 = jax.tree.map(lambda s: jnp.asarray(s, jnp.float64), pre)
        f64 = jax.tree.map(lambda s: jnp.asarray(s, jnp.float64), ft)

        @jax.jit
        def total(s):
            return loss_fn(sft.graft(p64, f64, sft.graft_gamma(s, base)))

        for k, i in (("w", (0, 0)), ("w", (3, 2)), ("b", (1,))):
            eps = 1e-4
            up = {**s64, k: s64[k].at[i].add(eps)}
            down = {**s64, k: s64[k].at[i].add(-eps)}
            fd = float((total(up) - total(down)) / (2 * eps))
            assert float(grad[k][i]) == pytest.approx(fd, rel=1e-3, abs=1e-8)
    stepped = sft.graft_step(loss_fn, scores, pre, ft, base, lr=100.0)
    for k in pre:
        np.testing.assert_allclose(np.asarray(stepped[k]),
                                   np.asarray(scores[k]) - 100.0 * np.asarray(grad[k]),
                                   rtol=1e-6)


# ------------------------------------------------------------------ the tasks


def test_select_classes_matches_numpy_and_names_the_argument():
    rng = np.random.default_rng(6)

    def split(m):
        return Split(rng.normal(size=(m, 3)).astype(np.float32),
                     rng.integers(0, 10, m).astype(np.int32))

    ds = Dataset("toy", split(200), split(40), split(100), (3,), 10, {})
    task = sft.select_classes(ds, [7, 2, 5])
    assert task.num_classes == 10 and task.name == "toy[7,2,5]"
    for name in ("train", "validation", "test"):
        full, got = getattr(ds, name), getattr(task, name)
        sel = np.flatnonzero(np.isin(full.y, [2, 5, 7]))
        np.testing.assert_array_equal(got.x, full.x[sel])
        np.testing.assert_array_equal(got.y, full.y[sel])  # labels kept: shared head
    for bad in ([], [1, 1], [10], [-1]):
        with pytest.raises(ValueError, match=r"^task_b: expected distinct classes"):
            sft.select_classes(ds, bad, name="task_b")
    y = ds.test.y.copy()
    y[y == 3] = 4
    no3 = Dataset("toy", ds.train, None, Split(ds.test.x, y), (3,), 10, {})
    with pytest.raises(ValueError, match=r"^task_a: the test split has no example"):
        sft.select_classes(no3, [3], name="task_a")


# ------------------------------------------------------------------ lotto sft


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """40 features, 10 classes around random centres: learnable in a few steps."""
    return clusters_npz(tmp_path_factory.mktemp("sft"))


def _args(npz, out, *extra):
    return ["sft", "--model", "mlp", "--dataset", f"npz:{npz}", "--steps", "30",
            "--eval-every", "10", "--batch-size", "32", "--k", "50",
            "--graft-fractions", "0.01", "--graft-steps", "3", "--graft-batch", "100",
            "--graft-lrs", "1e6", "--no-random-k", *extra, "--out", str(out)]


def _leaves(tree):
    """Leaves by sorted key path (Dense_0/bias, ...), as numpy."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


def _np_forward(params, x):
    h = x.reshape(len(x), -1).astype(np.float64)
    layers = [*sorted(k for k in params if k.startswith("Dense_")), "output"]
    for i, name in enumerate(layers):
        h = h @ params[name]["kernel"] + params[name]["bias"]
        h = np.maximum(h, 0) if i < len(layers) - 1 else h
    return h


def test_lotto_sft_end_to_end(tiny_npz, tmp_path):
    from lotto_jax import data
    from lotto_jax.runs.store import RunStore

    out = tmp_path / "run"
    first = run_here(_args(tiny_npz, out))
    assert first.returncode == 0, first.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["tasks"] == {"A": [0, 1, 2, 3, 4], "B": [5, 6, 7, 8, 9], "B1": [5, 6, 7],
                            "B2": [8, 9]} and res["ks"] == [50]
    store = RunStore(str(out))
    theta0 = store.restore("pretrain/final")["params"]
    ds = data.load(f"npz:{tiny_npz}")
    test = {t: np.isin(ds.test.y, c) for t, c in res["tasks"].items()}
    phis = {}
    for task in ("B", "B1", "B2"):
        t0 = _leaves(theta0)  # full fine-tuning trains δ from θ0: θ1 = θ0 + δ
        d1 = _leaves(store.restore(f"finetune/{task}/final")["params"])
        t1 = {k: t0[k] + d1[k] for k in t0}
        mask = _leaves(store.restore(f"ltsft/{task}/k50/mask"))
        want = np_most_changed([t0[k] for k in sorted(t0)], [t1[k] for k in sorted(t0)],
                               50, [True] * len(t0))
        for k, w in zip(sorted(t0), want, strict=True):
            np.testing.assert_array_equal(mask[k], w, err_msg=f"{task} {k}")
        delta = _leaves(store.restore(f"ltsft/{task}/k50/final")["params"])
        theta2 = {k: np.where(mask[k], t0[k] + delta[k], t0[k]) for k in t0}
        for k in t0:  # δ is exactly 0 off the selection: those weights stay θ0
            assert np.all(delta[k][~mask[k]] == 0)
        phi = store.restore(f"ltsft/{task}/k50/phi")
        d = np.concatenate([(theta2[k] - t0[k]).ravel() for k in sorted(t0)])
        np.testing.assert_array_equal(np.asarray(phi["indices"]), np.flatnonzero(d))
        np.testing.assert_array_equal(np.asarray(phi["values"]), d[np.flatnonzero(d)])
        assert len(phi["indices"]) <= sum(int(m.sum()) for m in mask.values())
        phis[task] = d
        row = next(r for r in res["sparse"] if r["kind"] == "ltsft" and r["task"] == task)
        assert row["selected"] == sum(int(m.sum()) for m in mask.values())
    assert not (out / "random").exists()  # --no-random-k
    # composition: θ0 + φ_B1 + φ_B2 by numpy, its accuracy by a numpy forward
    t0 = _leaves(theta0)
    flat = np.concatenate([t0[k].ravel() for k in sorted(t0)]) + phis["B1"] + phis["B2"]
    comp, off = {}, 0
    for k in sorted(t0):
        comp[k] = flat[off:off + t0[k].size].reshape(t0[k].shape)
        off += t0[k].size
    params = {"Dense_0": {}, "Dense_1": {}, "output": {}}
    for k, v in comp.items():
        layer, name = re.findall(r"'(\w+)'", k)
        params[layer][name] = v
    pred = _np_forward(params, ds.test.x).argmax(1)
    (c,) = res["compose"]
    for i, t in enumerate(("B1", "B2")):
        acc = float(np.mean(pred[test[t]] == ds.test.y[test[t]]))
        assert c["composed"][i] == pytest.approx(acc, abs=1.01 / test[t].sum())
        assert c["interference"][i] == pytest.approx(c["own"][i] - c["composed"][i])
    # grafting: the region = base patch XOR (S > 10), its size in the record
    (g,) = res["graft"]
    s = np.concatenate([v.ravel() for _, v in sorted(_leaves(
        store.restore("graft/f0.01/lr1e+06/scores")).items())])
    d1 = _leaves(store.restore("finetune/B/final")["params"])
    t1 = {k: t0[k] + d1[k] for k in t0}
    change = np.abs(np.concatenate([(t1[k] - t0[k]).ravel() for k in sorted(t0)]))
    base = np.zeros(change.size, bool)
    base[np.argsort(-change, kind="stable")[:round(0.01 * change.size)]] = True
    assert g["base"] == base.sum()
    assert g["region"] == int(np.logical_xor(base, s > 10).sum())
    assert g["recovered"] == pytest.approx(g["accuracy"] / g["finetuned_accuracy"])
    assert (out / "figures" / "sft.png").exists() and (out / "figures" / "graft.png").exists()
    # a rerun trains, selects, composes and grafts nothing
    again = run_here(_args(tiny_npz, out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training from step" not in again.stderr and "grafting" not in again.stderr
    assert "graft/f0.01/lr1e+06: finished, kept" in again.stderr
    assert json.loads((out / "results.json").read_text()) == res


BAD = [
    (["--k", "0"], "--k: expected a fraction in (0, 1) or a count >= 1"),
    (["--k", "2.5"], "--k: a count must be whole"),
    (["--k", "99999999"], "--k: 99999999 is larger than the number of weights"),
    (["--task-b", "4", "5"], "--task-b: shares classes [4] with task_a"),
    (["--task-a", "12"], "--task-a: expected distinct classes in [0, 10)"),
    (["--task-b", "5"], "--task-b: --compose splits it in two"),
    (["--graft-fractions", "0"], "--graft-fractions: expected values in (0, 1]"),
    (["--graft-batch", "100000"], "--graft-batch: 100000 is larger than task B's"),
    (["--graft-lrs", "-1"], "--graft-lrs: expected positive learning rates"),
    (["--replicates", "0"], "--replicates: expected an int >= 1"),
    (["--batch-size", "500"], "--batch-size: 500 is larger than the training set"),
]


@pytest.mark.parametrize(("extra", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_naming_the_flag_and_writes_nothing(tiny_npz, tmp_path,
                                                                  extra, message):
    out = tmp_path / "run"
    assert_one_line_error(run_here(_args(tiny_npz, out, *extra)), message)
    assert not out.exists()
