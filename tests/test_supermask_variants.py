"""Tests for the supermask variants: Lottery Jackpots and signed supermasks.

Truths used: a literal numpy port of the Jackpots code's ``final_pop_up`` (sort,
index sets, the equal-size condition, the swap) on hand-made scores; hand-worked
masks; a numpy global magnitude prune (argsort of the concatenated ``|w|``, the
classifier dense); a numpy SGD loop replaying the swap after each score step; the
gradient of a 2x2 linear layer with squared loss written out by hand; numpy forward
passes (``_numpy_ref.mlp_accuracy``) on the checkpoints the driver wrote.
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from _killrun import assert_killed, assert_same_run, engine_lines, lotto
from _killrun import here as run_here
from _numpy_ref import mlp_accuracy
from _tiny_data import clusters_npz

from lotto_jax import data, models, supermask
from lotto_jax.supermask import (
    edge_popup,
    export_mask,
    export_ternary,
    export_weights,
    init_state,
    jackpot,
    jackpot_mask,
    jackpot_scores,
    short_restriction,
    signed,
)


def _linear(params, model_state, x, train):
    del train
    return x @ params["w"], model_state


# --- the short restriction -----------------------------------------------------------


def np_pop_up(scores, mask):
    """A literal numpy port of ``PretrainConv.final_pop_up`` (rate 1)."""
    m = np.asarray(scores, np.float64).ravel()
    flat = np.asarray(mask).ravel().astype(np.float64).copy()
    prune_num = int((flat == 0).sum())
    t = np.sort(m)[prune_num - 1]  # python's [-1] when nothing is pruned, as torch's
    idx0, idx1 = np.nonzero(flat == 0)[0], np.nonzero(flat)[0]
    pop0, pop1 = idx0[m[idx0] > t], idx1[m[idx1] <= t]
    if pop0.size and pop1.size and pop0.size == pop1.size:
        flat[pop0], flat[pop1] = 1, 0
    return flat.reshape(np.shape(mask)).astype(bool)


HAND = [
    # (scores, mask, expected): one row, kept = True
    ([0.2, 1.0, 0.99, 0.1], [1, 1, 0, 0], [0, 1, 1, 0]),  # one clean swap
    ([0.9, 0.3, 0.5, 0.8, 0.1, 0.7], [1, 1, 1, 0, 0, 0], [1, 0, 0, 1, 0, 1]),  # two pairs
    ([1.0, 0.99, 0.99, 0.5], [1, 0, 0, 1], [1, 0, 0, 1]),  # tie at t: |P| 1 != |K| 0
    ([0.5, 1.0, 0.5, 0.1], [1, 1, 0, 0], [1, 1, 0, 0]),  # tie across t: |P| 0 != |K| 1
    ([0.3, 0.3, 0.3, 0.3], [1, 0, 1, 0], [1, 0, 1, 0]),  # all equal: nothing moves
    ([0.1, 0.2, 0.3], [1, 1, 1], [1, 1, 1]),  # nothing pruned
    ([0.1, 0.2, 0.3], [0, 0, 0], [0, 0, 0]),  # everything pruned
    ([0.9, 0.9, 0.4, 0.1], [0, 0, 1, 1], [1, 1, 0, 0]),  # tie above t: 2 pairs swap
]


@pytest.mark.parametrize(("s", "m", "want"), HAND)
def test_short_restriction_hand_worked_cases(s, m, want):
    scores = {"w": jnp.asarray([s], jnp.float32)}
    mask = {"w": jnp.asarray([m], bool)}
    got = np.asarray(short_restriction(scores, mask)["w"])[0]
    np.testing.assert_array_equal(np_pop_up([s], [m])[0], np.asarray(want, bool))
    np.testing.assert_array_equal(got, np.asarray(want, bool))


def test_short_restriction_matches_the_reference_on_random_ties():
    """Small integer scores (many ties) on 2-D leaves; exact counts; jit and vmap."""
    rng = np.random.default_rng(0)
    fn = jax.jit(short_restriction)
    swapped = kept_same = 0
    for trial in range(60):
        shape = ((3, 5), (1, 6))[trial % 2]  # two shapes: two compilations
        s = rng.integers(0, 6, size=shape).astype(np.float32)
        m = rng.random(shape) < rng.random()
        tree = {"a": {"kernel": jnp.asarray(s)}, "bias": jnp.asarray(s[0])}
        mask = {"a": {"kernel": jnp.asarray(m)}, "bias": jnp.asarray(m[0])}
        got = fn(tree, mask)
        want = np_pop_up(s, m)
        np.testing.assert_array_equal(got["a"]["kernel"], want, err_msg=f"trial {trial}")
        np.testing.assert_array_equal(got["bias"], m[0])  # unprunable: untouched
        assert int(np.sum(got["a"]["kernel"])) == int(m.sum())
        swapped += int(not np.array_equal(want, m))
        kept_same += int(np.array_equal(want, m))
    assert swapped > 5 and kept_same > 5  # both branches exercised
    batch = jax.vmap(short_restriction)(
        {"w": jnp.asarray([[[0.2, 1.0, 0.99, 0.1]], [[0.5, 1.0, 0.5, 0.1]]])},
        {"w": jnp.asarray([[[1, 1, 0, 0]], [[1, 1, 0, 0]]], bool)})
    np.testing.assert_array_equal(batch["w"][:, 0], [[0, 1, 1, 0], [1, 1, 0, 0]])


# --- the jackpot start ----------------------------------------------------------------


def _mlp_weights(key=3):
    module = models.build("mlp", features=(16, 12))
    params = module.init(jax.random.key(0), jnp.zeros((1, 40)))["params"]
    return module, supermask.init_weights(params, key=jax.random.key(key),
                                          method="kaiming-normal", other="keep")


def np_global_magnitude(weights, keep):
    """numpy: keep the round(keep·n) largest |w| over Dense_0 and Dense_1 together."""
    names = ("Dense_0", "Dense_1")
    flat = np.concatenate([np.abs(np.asarray(weights[k]["kernel"])).ravel() for k in names])
    n_keep = int(np.floor(keep * flat.size + 0.5))
    kept = np.zeros(flat.size, bool)
    kept[np.argsort(flat, kind="stable")[flat.size - n_keep:]] = True
    out, offset = {}, 0
    for k in names:
        shape = np.shape(weights[k]["kernel"])
        out[k] = kept[offset: offset + int(np.prod(shape))].reshape(shape)
        offset += int(np.prod(shape))
    return out


def test_jackpot_mask_and_scores_against_numpy():
    _, w = _mlp_weights()
    m = jackpot_mask(w, 0.3)
    want = np_global_magnitude(w, 0.3)
    for k in ("Dense_0", "Dense_1"):
        np.testing.assert_array_equal(m[k]["kernel"], want[k])
    assert np.all(m["output"]["kernel"]) and all(np.all(m[k]["bias"]) for k in m)
    # one global threshold: the layers' rates differ (Dense_0 has fan-in 40, Dense_1 16)
    rates = [float(np.mean(want[k])) for k in ("Dense_0", "Dense_1")]
    assert rates[0] != rates[1]
    s = jackpot_scores(m)
    for k in ("Dense_0", "Dense_1", "output"):
        np.testing.assert_array_equal(
            s[k]["kernel"], np.where(np.asarray(m[k]["kernel"]), 1.0, np.float32(0.99)))
        np.testing.assert_array_equal(s[k]["bias"], 0.0)
    # the start is a fixed point of the restriction
    np.testing.assert_array_equal(short_restriction(s, m)["Dense_0"]["kernel"],
                                  m["Dense_0"]["kernel"])
    with pytest.raises(ValueError, match="dense: pattern 'head'"):
        jackpot_mask(w, 0.3, dense=("head",))
    with pytest.raises(ValueError, match="keep: expected"):
        jackpot_mask(w, 0.0)


def test_jackpot_sgd_steps_replay_the_reference_order():
    """Six SGD steps on the scores: after each, the stored mask is the numpy swap of
    (scores after the step, mask before); weights never change; per-layer nnz is
    constant; and the mask did move."""
    module, w = _mlp_weights()
    apply_fn = lambda p, ms, x, train: (module.apply({"params": p}, x), ms)  # noqa: E731
    search = jackpot(apply_fn)
    start = jackpot_mask(w, 0.4)
    scores, state = jackpot_scores(start), init_state(w, mask=start)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(32, 40)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 32))

    @jax.jit
    def step(scores, state):
        def loss(s):
            logits, new = search(s, state, x, True)
            return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(32), y]), new
        (_, new), g = jax.value_and_grad(loss, has_aux=True)(scores)
        return jax.tree.map(lambda s, d: s - 0.5 * d, scores, g), new

    nnz = {k: int(np.sum(start[k]["kernel"])) for k in start}
    prev_mask, moved = start, 0
    for _ in range(6):
        scores, state = step(scores, state)  # the forward used swap(scores_t, mask_t-1)
        # now the next forward pass applies the swap after this step:
        _, nxt = search(scores, state, x, True)
        for k in ("Dense_0", "Dense_1", "output"):
            want = np_pop_up(scores[k]["kernel"], state.mask[k]["kernel"])
            np.testing.assert_array_equal(nxt.mask[k]["kernel"], want)
            assert int(np.sum(nxt.mask[k]["kernel"])) == nnz[k]
        moved += sum(int(np.sum(nxt.mask[k]["kernel"] != prev_mask[k]["kernel"]))
                     for k in ("Dense_0", "Dense_1"))
        prev_mask = nxt.mask
        for a, b in zip(jax.tree.leaves(state.weights), jax.tree.leaves(w), strict=True):
            np.testing.assert_array_equal(a, b)
    assert moved > 0
    # export = the restriction of the final scores; the exported net is the forward's
    found = export_weights(search, scores, state)
    np.testing.assert_array_equal(export_mask(search, scores, state)["Dense_0"]["kernel"],
                                  short_restriction(scores, state.mask)["Dense_0"]["kernel"])
    np.testing.assert_allclose(module.apply({"params": found}, x),
                               search(scores, state, x, False)[0], rtol=1e-6)


# --- signed supermask -----------------------------------------------------------------


def test_signed_values_counts_and_all_plus_one():
    _, w = _mlp_weights()
    key = jax.random.key(5)
    s = supermask.init_scores(w, key=key)
    search = signed(_linear, keep=0.3)
    eff = search.effective_weights(s, init_state(w), train=False)
    tern = export_ternary(search, s, init_state(w))
    for k in ("Dense_0", "Dense_1", "output"):
        w0, e, t = (np.asarray(a[k]["kernel"]) for a in (w, eff, tern))
        sk = np.asarray(s[k]["kernel"])
        assert set(np.unique(t).tolist()) <= {-1, 0, 1} and t.dtype == np.int8
        assert np.all((np.abs(e) == 0) | (np.abs(e) == np.abs(w0)))
        np.testing.assert_array_equal(e, t * w0)
        assert int(np.sum(t != 0)) == int(np.floor(0.3 * t.size + 0.5))
        order = np.argsort(np.abs(sk).ravel(), kind="stable")
        top = np.zeros(t.size, bool)
        top[order[t.size - int(np.sum(t != 0)):]] = True  # numpy top-k of |s|
        np.testing.assert_array_equal(t.ravel() != 0, top)
        np.testing.assert_array_equal(t.ravel()[top], np.where(sk.ravel()[top] >= 0, 1, -1))
        np.testing.assert_array_equal(e.ravel()[~top], 0.0)
    # all-+1 kept entries (|s| as scores): the masked initial network, edge-popup's
    pos = jax.tree.map(jnp.abs, s)
    eff = search.effective_weights(pos, init_state(w), train=False)
    ep = edge_popup(_linear, keep=0.3).effective_weights(pos, init_state(w), train=False)
    for k in ("Dense_0", "Dense_1", "output"):
        np.testing.assert_array_equal(eff[k]["kernel"], ep[k]["kernel"])
        assert set(np.unique(export_ternary(search, pos, init_state(w))[k]["kernel"])
                   .tolist()) <= {0, 1}


def test_signed_gradient_is_the_hand_computation():
    """2x2 layer, x = [1, 2], target y = [0, 1], L = ½‖x W_eff − y‖², keep 0.5."""
    w = {"w": jnp.array([[1.0, -2.0], [3.0, 0.5]])}
    s = {"w": jnp.array([[0.9, 0.1], [-0.7, 0.2]])}  # keeps (0,0) as +1, (1,0) as −1
    x, y = jnp.array([[1.0, 2.0]]), np.array([0.0, 1.0])
    search = signed(_linear, keep=0.5)

    def loss(scores):
        out, _ = search(scores, init_state(w), x, True)
        return 0.5 * jnp.sum((out[0] - y) ** 2)

    m = np.array([[1.0, 0.0], [-1.0, 0.0]])
    w_eff = m * np.asarray(w["w"])  # [[1, 0], [-3, 0]]
    out = np.array([1.0, 2.0]) @ w_eff  # [1·1 + 2·(−3), 0] = [−5, 0]
    np.testing.assert_allclose(out, [-5.0, 0.0])
    r = out - y  # [−5, −1]
    dl_dweff = np.outer([1.0, 2.0], r)  # [[−5, −1], [−10, −2]]
    want = dl_dweff * np.asarray(w["w"])  # [[−5, 2], [−30, −1]]
    np.testing.assert_allclose(want, [[-5.0, 2.0], [-30.0, -1.0]])
    np.testing.assert_allclose(jax.grad(loss)(s)["w"], want, rtol=1e-6)


# --- the driver, end to end -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny 40-feature, 10-class npz data set and a 'pretrained' mlp checkpoint."""
    root = tmp_path_factory.mktemp("variants")
    npz = clusters_npz(root)
    module = models.build("mlp")
    params = module.init(jax.random.key(0), jnp.zeros((1, 40)))["params"]
    params = supermask.init_weights(params, key=jax.random.key(7), method="kaiming-normal",
                                    other="keep")
    ckpt = root / "pretrained"
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(str(ckpt), {"params": params})
    ckptr.wait_until_finished()
    split = data.load(f"npz:{npz}", seed=0, validation=0).test
    return {"npz": npz, "ckpt": ckpt, "params": params, "test": split, "root": root}


def _args(tiny, out, *extra):
    return ["supermask", "--model", "mlp", "--dataset", f"npz:{tiny['npz']}",
            "--steps", "20", "--eval-every", "10", "--batch-size", "32", *extra,
            "--out", str(out)]


def _restore(out, name):
    return ocp.StandardCheckpointer().restore(str(out / "export" / name))


JACKPOT = ("--method", "jackpot", "--keep", "0.2", "--save-every", "10")


@pytest.fixture(scope="module")
def jackpot_run(tiny):
    """The uninterrupted jackpot search (shared by the end-to-end and resume tests,
    whichever xdist worker runs them)."""
    out = tiny["root"] / "jackpot"
    r = run_here(_args(tiny, out, *JACKPOT, "--pretrained", tiny["ckpt"]))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_lotto_supermask_jackpot_end_to_end(tiny, jackpot_run):
    out = jackpot_run
    res = json.loads((out / "results.json").read_text())
    assert res["method"] == "jackpot" and res["score_init"] == "jackpot"
    mask, weights = _restore(out, "mask"), _restore(out, "weights")
    for a, b in zip(jax.tree.leaves(weights), jax.tree.leaves(tiny["params"]), strict=True):
        np.testing.assert_array_equal(a, b)  # weights (biases too) never change
    start = np_global_magnitude(tiny["params"], 0.2)
    for k in ("Dense_0", "Dense_1"):  # per-layer nnz of the start, kept to the end
        assert int(np.sum(mask[k]["kernel"])) == int(start[k].sum())
    assert sum(int(np.sum(mask[k]["kernel"] != start[k])) for k in start) > 0  # it moved
    assert np.all(mask["output"]["kernel"])
    ticket = jax.tree.map(lambda w, m: np.where(m, w, 0), weights, mask)
    assert mlp_accuracy(ticket, tiny["test"]) == pytest.approx(
        res["exported_test_accuracy"], abs=1 / 200 + 1e-9)
    assert res["exported_test_accuracy"] == res["final_test_accuracy"]
    onehot = {k: {"kernel": np.where(start[k], np.asarray(tiny["params"][k]["kernel"]), 0),
                  "bias": tiny["params"][k]["bias"]} for k in start}
    onehot["output"] = tiny["params"]["output"]
    assert res["baselines"]["magnitude"] == pytest.approx(
        mlp_accuracy(onehot, tiny["test"]), abs=1 / 200 + 1e-9)
    again = run_here(_args(tiny, out, *JACKPOT, "--pretrained", tiny["ckpt"]))
    assert again.returncode == 0 and "training from step" not in again.stderr
    assert json.loads((out / "results.json").read_text()) == res


def test_jackpot_killed_mid_search_resumes_to_the_same_run(tiny, jackpot_run, tmp_path):
    """SIGKILLed after the step-10 checkpoint (a subprocess), rerun: the search goes
    on from step 10 with the carried mask and ends bit-equal to the uninterrupted
    run of the test above."""
    out = tmp_path / "run"
    args = _args(tiny, out, *JACKPOT, "--pretrained", tiny["ckpt"])
    assert_killed(lotto(args, cache_dir=tmp_path / "xla",
                        kill_after="search/checkpoints/step_00000010"))
    again = run_here(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "search: training from step 10" in engine_lines(again)
    assert_same_run(jackpot_run, out)


def test_zero_score_lr_is_one_shot_magnitude_pruning(tiny):
    """The CLI refuses ``--lr 0``; 1e-30 moves no float32 score of 1 or 0.99 (checked:
    the stored scores are the start's), so this is the zero-learning-rate search."""
    out = tiny["root"] / "jackpot_lr0"
    r = run_here(_args(tiny, out, "--method", "jackpot", "--keep", "0.2", "--lr", "1e-30",
                       "--pretrained", tiny["ckpt"]))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    mask, found = _restore(out, "mask"), _restore(out, "scores")
    start = jackpot_scores(jackpot_mask(tiny["params"], 0.2))
    for a, b in zip(jax.tree.leaves(found), jax.tree.leaves(start), strict=True):
        np.testing.assert_array_equal(a, b)
    start = np_global_magnitude(tiny["params"], 0.2)
    for k in ("Dense_0", "Dense_1"):
        np.testing.assert_array_equal(mask[k]["kernel"], start[k])
    assert res["final_test_accuracy"] == res["baselines"]["magnitude"]
    assert res["initial_test_accuracy"] == res["final_test_accuracy"]


def test_lotto_supermask_signed_end_to_end(tiny):
    out = tiny["root"] / "signed"
    r = run_here(_args(tiny, out, "--method", "signed", "--keep", "0.3"))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    tern, weights = _restore(out, "ternary"), _restore(out, "weights")
    mask, signs = _restore(out, "mask"), _restore(out, "signs")
    for k in ("Dense_0", "Dense_1", "output"):
        t = np.asarray(tern[k]["kernel"])
        assert set(np.unique(t).tolist()) == {-1, 0, 1}
        assert int(np.sum(t != 0)) == int(np.floor(0.3 * t.size + 0.5))
        np.testing.assert_array_equal(t != 0, mask[k]["kernel"])
        np.testing.assert_array_equal(t[t != 0], signs[k]["kernel"][t != 0])
    assert res["layer_density"]["Dense_0/kernel"] == pytest.approx(0.3)
    net = {k: {"kernel": np.asarray(tern[k]["kernel"]) * np.asarray(weights[k]["kernel"]),
               "bias": weights[k]["bias"]} for k in weights}
    assert mlp_accuracy(net, tiny["test"]) == pytest.approx(
        res["exported_test_accuracy"], abs=1 / 200 + 1e-9)
    assert res["exported_test_accuracy"] == res["final_test_accuracy"]
    assert set(res["baselines"]) == {"all_ones"}


BAD = [
    (["--method", "jackpot"], "--pretrained: the jackpot method searches in trained"),
    (["--method", "jackpot", "--pretrained", "PRE", "--score-init", "magnitude"],
     "--score-init: the jackpot method starts from scores 1"),
    (["--method", "signed", "--keep", "0"], "--keep: expected a fraction kept"),
    (["--method", "signd"], "--method: expected one of"),
    (["--method", "jackpot", "--pretrained", "/nonexistent/x"], "--pretrained: no checkpoint"),
]


@pytest.mark.parametrize(("extra", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_naming_the_flag(tiny, tmp_path, extra, message):
    out = tmp_path / "run"
    extra = [str(tiny["ckpt"]) if a == "PRE" else a for a in extra]
    r = run_here(_args(tiny, out, *extra))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert re.match(r"lotto: error: ", line) and message in line, line
    assert not out.exists()


def test_api_errors_name_the_argument():
    w = {"w": jnp.ones((2, 3))}
    x = jnp.ones((1, 2))
    with pytest.raises(ValueError, match=r"state\.mask: the jackpot method needs"):
        jackpot(_linear)(w, init_state(w), x, True)
    with pytest.raises(ValueError, match=r"state\.mask: only the sign and jackpot"):
        signed(_linear)(w, init_state(w, mask={"w": jnp.ones((2, 3), bool)}), x, True)
    with pytest.raises(ValueError, match=r"mask\['w'\]: shape \(3, 2\)"):
        short_restriction(w, {"w": jnp.ones((3, 2), bool)})
    with pytest.raises(ValueError, match="keep: expected"):
        signed(_linear, keep=1.5)
