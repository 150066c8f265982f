"""The README's Python examples run as written (with small stand-ins for the names
they take from context), and the engine example commits what it says."""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import data, masks, models, train

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def _block(containing: str) -> str:
    with open(README) as f:
        text = f.read()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if containing in b]
    return block


def test_engine_example_trains_and_commits_a_unit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    np.savez(tmp_path / "d.npz", x_train=x[:64], y_train=y[:64], x_test=x[64:],
             y_test=y[64:])
    dataset = data.load(f"npz:{tmp_path / 'd.npz'}")
    model = models.build("mlp", features=(8,), num_classes=2)
    params = models.init(model, jax.random.key(0), dataset.input_shape)["params"]
    config = train.TrainConfig(steps=12, batch_size=16, eval_every=4, lr=0.1)
    trainer = train.make_trainer(train.classifier(model), config, num_train=64)
    env = {
        "jax": jax, "trainer": trainer, "dataset": dataset, "data_key": jax.random.key(1),
        "p0": params, "mask0": masks.init(params),
        "make_mask": lambda: jax.tree.map(lambda m: m & (jnp.arange(m.size).reshape(
            m.shape) % 2 == 0) if m.ndim >= 2 else m, masks.init(params)),
    }
    exec(_block("Engine("), env)
    done = env["done"]
    assert done.trained
    run = tmp_path / "runs" / "mine"
    assert (run / "variants" / "mine" / "metrics.json").exists()
    assert (run / "variants" / "mine" / "final.manifest.json").exists()
    # trained under the mask: the masked-out half of every kernel is exactly 0
    for w, m in zip(jax.tree.leaves(done.final["params"]),
                    jax.tree.leaves(env["make_mask"]()), strict=True):
        assert np.all(np.asarray(w)[~np.asarray(m)] == 0)
    # a rerun trains nothing: the unit is kept
    exec(_block("Engine("), env)
    assert not env["done"].trained
    assert env["done"].metrics == done.metrics


def test_dst_example_trains_with_a_changing_mask(tmp_path):
    """The ``lotto_jax.dst`` example on a one-hidden-layer mlp (6 inputs, 8 units,
    2 classes): RigL keeps ERK's count per layer at every update, worked by hand:
    ε = 0.1 · 64 / ((6 + 8) + (8 + 2)); Dense_0 keeps round(ε · 14) = 4 of 48,
    output round(ε · 10) = 3 of 16."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    np.savez(tmp_path / "d.npz", x_train=x[:64], y_train=y[:64], x_test=x[64:],
             y_test=y[64:])
    dataset = data.load(f"npz:{tmp_path / 'd.npz'}")
    model = models.build("mlp", features=(8,), num_classes=2)
    params = models.init(model, jax.random.key(0), dataset.input_shape)["params"]
    printed = []
    env = {"jax": jax, "model": model, "dataset": dataset, "params": params,
           "print": lambda *a: printed.append(a)}
    exec(_block("dst.rigl("), env)
    state, u = env["state"], env["u"]
    mask = jax.tree.map(np.asarray, state.dst.mask)
    assert int(mask["Dense_0"]["kernel"].sum()) == 4 and int(mask["output"]["kernel"].sum()) == 3
    assert mask["Dense_0"]["bias"].all() and mask["output"]["bias"].all()
    start = jax.tree.map(np.asarray, u.initial_mask(params, jax.random.key(1)))
    assert any((start[k]["kernel"] != mask[k]["kernel"]).any() for k in mask)  # it moved
    ((density, accuracy),) = printed
    assert density == 7 / 64 and 0 <= accuracy <= 1
