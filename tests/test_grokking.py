"""Grokking tickets: the ``modular:`` datasets, the ``grok_mlp`` model, the AdamW
``b2`` and ``eval_train`` options and the ``grokking`` recipe end to end.

Independent truths: itertools / numpy enumerations of the pairs and their labels,
a hand-worked p = 5 case, the Adam update in closed form, a numpy forward pass of the
model, and a numpy sort for the ticket's global magnitude mask.
"""

from __future__ import annotations

import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lotto_jax import data, models
from lotto_jax.runs import cli
from lotto_jax.train import TrainConfig, optimizer

# ------------------------------------------------------------------------- data


def _pairs_and_labels(split):
    return [tuple(map(int, p)) for p in split.x], [int(v) for v in split.y]


@pytest.mark.parametrize("seed", [0, 3])
def test_modular_add_67_is_every_pair_once_with_its_sum(seed):
    ds = data.load("modular:add:67:0.4", seed=seed)
    assert (len(ds.train), len(ds.test)) == (911, 1367)  # 2278 pairs, int(0.4 * 2278)
    assert ds.num_classes == 67 and ds.input_shape == (2,)
    assert ds.train.x.dtype == np.int32 and ds.train.y.dtype == np.int32
    train_pairs, train_y = _pairs_and_labels(ds.train)
    test_pairs, test_y = _pairs_and_labels(ds.test)
    every = {(a, b) for a, b in itertools.product(range(67), repeat=2) if a <= b}
    assert len(every) == 2278
    assert set(train_pairs) | set(test_pairs) == every
    assert len(set(train_pairs)) + len(set(test_pairs)) == 2278  # disjoint, no repeats
    for pairs, ys in ((train_pairs, train_y), (test_pairs, test_y)):
        assert ys == [(a + b) % 67 for a, b in pairs]


def test_modular_split_is_deterministic_in_the_seed():
    a, b = data.load("modular:add:67:0.4", seed=1), data.load("modular:add:67:0.4", seed=1)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.test.x, b.test.x)
    c = data.load("modular:add:67:0.4", seed=2)
    assert {tuple(p) for p in a.train.x.tolist()} != {tuple(p) for p in c.train.x.tolist()}


def test_modular_p5_by_hand():
    """p = 5: the 15 pairs a <= b; int(0.4 * 15) = 6 train. sub and x2xyy2 labels
    worked out for three pairs."""
    sub = data.load("modular:sub:5:0.4", seed=0)
    quad = data.load("modular:x2xyy2:5:0.4", seed=0)
    assert (len(sub.train), len(sub.test), sub.num_classes) == (6, 9, 5)
    np.testing.assert_array_equal(sub.train.x, quad.train.x)  # same seed, same split
    label = {}
    for ds, name in ((sub, "sub"), (quad, "quad")):
        for split in (ds.train, ds.test):
            for (a, b), y in zip(split.x.tolist(), split.y.tolist(), strict=True):
                label[name, a, b] = y
    # (1 - 3) mod 5 = 3; (0 - 4) mod 5 = 1; (2 - 2) mod 5 = 0
    assert (label["sub", 1, 3], label["sub", 0, 4], label["sub", 2, 2]) == (3, 1, 0)
    # 1 + 3 + 9 = 13 -> 3; 0 + 0 + 16 -> 1; 4 + 4 + 4 = 12 -> 2
    assert (label["quad", 1, 3], label["quad", 0, 4], label["quad", 2, 2]) == (3, 1, 2)


@pytest.mark.parametrize("spec, part", [
    ("modular:add:1:0.4", "P:"),
    ("modular:add:x:0.4", "P:"),
    ("modular:add:67:0", "FRACTION:"),
    ("modular:add:67:1", "FRACTION:"),
    ("modular:add:67:1.5", "FRACTION:"),
    ("modular:mul:67:0.4", "OP:"),
    ("modular:add:67", "modular:OP:P:FRACTION"),
])
def test_bad_modular_spec_is_one_line_naming_the_part(tmp_path, capsys, spec, part):
    out = tmp_path / "out"
    status = cli.main(["train", "--model", "grok_mlp", "--dataset", spec, "--steps", "2",
                       "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith(f"lotto: error: --dataset: spec {spec!r}")
    assert part in err and "Traceback" not in err
    assert not out.exists()  # refused before the run directory is made


def test_bad_b2_is_one_line(tmp_path, capsys):
    status = cli.main(["train", "--b2", "1.0", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert err.startswith("lotto: error: --b2") and "[0, 1)" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ optimizer


def test_adamw_b2_matches_closed_form():
    """Two AdamW steps with b2 = 0.98 and decoupled decay 1, by hand."""
    tx = optimizer(TrainConfig(optimizer="adamw", b2=0.98, weight_decay=1.0))
    p, g = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([0.5, -0.25])}
    state = tx.init(p)
    for t in (1, 2):
        d, state = tx.update(g, state, p)
        gn = np.array([0.5, -0.25])
        m = (1 - 0.9**t) * gn  # constant gradient: m_t = (1 - b1^t) g
        v = (1 - 0.98**t) * gn**2
        expect = (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.98**t)) + 1e-8) + np.array([1.0, -2.0])
        np.testing.assert_allclose(np.asarray(d["w"]), expect, rtol=1e-5)


# ---------------------------------------------------------------------- model


def _forward_numpy(params, x):
    e = np.asarray(params["embed"]["embedding"], np.float64)
    w_in = np.asarray(params["inproj"]["kernel"], np.float64)
    w_out = np.asarray(params["outproj"]["kernel"], np.float64)
    w_u = np.asarray(params["output"]["kernel"], np.float64)
    h = np.maximum(e[x[:, 0]] @ w_in + e[x[:, 1]] @ w_in, 0)
    return h @ w_out @ w_u


def test_grok_mlp_shapes_init_stds_and_forward():
    model = models.build("grok_mlp", num_classes=67)
    params = models.init(model, jax.random.key(0), models.input_shape("grok_mlp"))["params"]
    shapes = {k: v[next(iter(v))].shape for k, v in params.items()}
    assert shapes == {"embed": (67, 500), "inproj": (500, 48), "outproj": (48, 500),
                      "output": (500, 67)}
    assert models.count_params(params) == 115_000
    # the reference's stds: 1/sqrt(p) for W_E, 1/sqrt(fan_in) for the rest; sample
    # std of n >= 24,000 normal draws is within 2 % of sigma with overwhelming odds
    for path, sigma in (("embed", 67 ** -0.5), ("inproj", 500 ** -0.5),
                        ("outproj", 48 ** -0.5), ("output", 500 ** -0.5)):
        w = np.asarray(next(iter(params[path].values())), np.float64)
        assert abs(w.std() / sigma - 1) < 0.02, (path, w.std(), sigma)
        assert abs(w.mean()) < 0.05 * sigma, path
        # untruncated normal: some draws beyond 3 sigma (0.27 % expected)
        assert (np.abs(w) > 3 * sigma).mean() > 0.001, path
    x = np.array([[0, 0], [3, 65], [65, 3], [66, 66]])
    logits = np.asarray(model.apply({"params": params}, jnp.asarray(x)))
    np.testing.assert_allclose(logits, _forward_numpy(params, x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits[1], logits[2], rtol=1e-5, atol=1e-5)  # symmetric
    # a float input c is c times the all-ones one-hot (SynFlow's input): every row
    ones = np.asarray(model.apply({"params": params}, jnp.full((1, 2), 0.5)))
    e_sum = np.asarray(params["embed"]["embedding"], np.float64).sum(0)
    h = np.maximum(e_sum @ np.asarray(params["inproj"]["kernel"], np.float64), 0)
    expect = h @ np.asarray(params["outproj"]["kernel"]) @ np.asarray(params["output"]["kernel"])
    np.testing.assert_allclose(ones[0], expect, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ end to end


def test_grokking_recipe_end_to_end(tmp_path, capsys):
    """``lotto imp --recipe grokking`` for 20 steps: the curve has train accuracy
    (checked against a numpy forward pass of the stored final weights), and the
    round-1 ticket keeps the top 40 % of |θT| over all four matrices (numpy sort),
    starting from θ0."""
    import orbax.checkpoint as ocp

    out = tmp_path / "grok"
    status = cli.main(["imp", "--recipe", "grokking", "--steps", "20", "--eval-every", "10",
                       "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    ds = data.load("modular:add:67:0.4", seed=0)
    ckpt = ocp.StandardCheckpointer()
    final = ckpt.restore(os.path.abspath(out / "round_000" / "final"))["params"]
    theta0 = ckpt.restore(os.path.abspath(out / "init"))["params"]
    with open(out / "round_000" / "metrics.json") as f:
        curve = json.load(f)["curve"]
    assert [r["step"] for r in curve] == [0, 10, 20]
    pred = _forward_numpy(final, ds.train.x).argmax(-1)
    assert curve[-1]["train_accuracy"] == pytest.approx((pred == ds.train.y).mean(), abs=1e-6)
    pred_test = _forward_numpy(final, ds.test.x).argmax(-1)
    assert curve[-1]["test_accuracy"] == pytest.approx((pred_test == ds.test.y).mean(), abs=1e-6)

    mask = ckpt.restore(os.path.abspath(out / "round_001" / "mask"))
    leaves = sorted(final)
    mags = np.concatenate([np.abs(np.asarray(next(iter(final[k].values())))).ravel()
                           for k in leaves])
    n = mags.size
    kept = n - int(0.6 * n)
    expect = np.zeros(n, bool)
    expect[np.argsort(-mags, kind="stable")[:kept]] = True
    got = np.concatenate([np.asarray(next(iter(mask[k].values()))).ravel() for k in leaves])
    assert got.sum() == kept == 46_000
    np.testing.assert_array_equal(got, expect)
    # the ticket is rewound to θ0: θ0 is the model's init from seed 0
    model = models.build("grok_mlp", num_classes=67)
    fresh = models.init(model, jax.random.key(0), (2,))["params"]
    for k in leaves:
        np.testing.assert_array_equal(np.asarray(next(iter(theta0[k].values()))),
                                      np.asarray(next(iter(fresh[k].values()))))
    with open(out / "round_001" / "metrics.json") as f:
        ticket = json.load(f)
    assert ticket["density"] == pytest.approx(0.4)
