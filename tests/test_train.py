"""Tests of lotto_jax.train, lotto_jax.runs.common and the `lotto train` command."""

import contextlib
import dataclasses
import io
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _numpy_ref import mlp_accuracy

from lotto_jax import data, masks, prune, scores, train
from lotto_jax.runs.cli import run as cli_run


def _toy_dataset(n_train=256, n_test=64, dim=8, classes=3, seed=0, validation=True):
    """A linearly separable toy problem."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(dim, classes))

    def split(n):
        x = rng.normal(size=(n, dim)).astype(np.float32)
        return data.Split(x, np.argmax(x @ w, 1).astype(np.int32))

    return data.Dataset(
        name="toy", train=split(n_train), validation=split(n_test) if validation else None,
        test=split(n_test), input_shape=(dim,), num_classes=classes,
        normalization={"mean": [0.0], "std": [1.0]},
    )


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False):
        x = nn.relu(nn.Dense(16)(x))
        return nn.Dense(3, name="output")(x)


class _BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False):
        x = nn.Dense(16)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
        return nn.Dense(3, name="output")(nn.relu(x))


def _setup(config, module=None, ds=None, seed=0):
    module = module or _MLP()
    ds = ds or _toy_dataset()
    variables = module.init(jax.random.key(seed), jnp.zeros((1, 8)))
    trainer = train.make_trainer(train.classifier(module), config, num_train=len(ds.train.y))
    model_state = {k: v for k, v in variables.items() if k != "params"}
    return ds, variables["params"], model_state, trainer


# ----------------------------------------------------------------------- schedules


def test_schedules_match_closed_forms():
    step = train.schedule(
        train.TrainConfig(lr=0.1, schedule="step", milestones=(10, 20), gamma=0.5)
    )
    assert [float(step(s)) for s in (0, 9, 10, 19, 20, 99)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    )
    cos = train.schedule(train.TrainConfig(lr=0.2, steps=100, schedule="cosine"))
    for s in (0, 25, 50, 100):
        assert float(cos(s)) == pytest.approx(0.1 * (1 + math.cos(math.pi * s / 100)), abs=1e-7)
    warm = train.schedule(train.TrainConfig(lr=1.0, warmup_steps=10))
    assert [float(warm(s)) for s in (0, 5, 10, 50)] == pytest.approx([0.0, 0.5, 1.0, 1.0])


def test_sgd_momentum_and_decay_match_hand_computation():
    cfg = train.TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.01)
    tx = train.optimizer(cfg)
    p = jnp.array([1.0, -2.0])
    g = jnp.array([0.5, 0.5])
    state = tx.init(p)
    d1, state = tx.update(g, state, p)
    d2, _ = tx.update(g, state, p)
    # PyTorch SGD: b1 = g + wd p; b2 = 0.9 b1 + (g + wd p)
    b1 = np.array([0.5 + 0.01, 0.5 - 0.02])
    np.testing.assert_allclose(d1, b1, rtol=1e-6)
    np.testing.assert_allclose(d2, 1.9 * b1, rtol=1e-6)


def test_adamw_decay_is_decoupled():
    cfg = train.TrainConfig(optimizer="adamw", weight_decay=0.1)
    tx = train.optimizer(cfg)
    p = jnp.array([2.0])
    d, _ = tx.update(jnp.array([0.0]), tx.init(p), p)
    np.testing.assert_allclose(d, [0.2])  # adam direction of a zero grad is 0


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("steps", 0, "steps"),
        ("batch_size", -1, "batch_size"),
        ("optimizer", "rmsprop", "optimizer"),
        ("schedule", "poly", "schedule"),
        ("lr", 0.0, "lr"),
        ("momentum", 1.0, "momentum"),
        ("weight_decay", -1.0, "weight_decay"),
        ("milestones", (20, 10), "milestones"),
    ],
)
def test_train_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        train.TrainConfig(**{field: value})


def test_batch_larger_than_train_set_is_refused():
    with pytest.raises(ValueError, match="batch_size"):
        _setup(train.TrainConfig(batch_size=1000), ds=_toy_dataset(n_train=100))


# ------------------------------------------------------------------ data order


@pytest.mark.parametrize("shuffle", [True, False])
def test_chunk_indices_equal_batch_indices(shuffle):
    key = jax.random.key(3)
    n, b, chunk = 50, 8, 13  # 6 steps per epoch: chunks straddle epochs
    cfg = train.TrainConfig(batch_size=b, shuffle=shuffle, eval_every=chunk)
    trainer = train.make_trainer(lambda *a: None, cfg, num_train=n)
    for first in (0, 5, 11, 40, 41):
        orders = trainer._orders(key, first)
        got = train._epoch_orders(key, orders, jnp.int32(first), chunk, n=n, b=b,
                                  shuffle=shuffle)
        want = np.stack([
            data.batch_indices(key, s, num_examples=n, batch_size=b, shuffle=shuffle)
            for s in range(first, first + chunk)
        ])
        np.testing.assert_array_equal(got, want)
    if shuffle:  # each epoch's permutation is computed once and cached
        assert len(trainer._perm_cache) <= 8
        # a stack of one replicate key is not the plain key (same bytes)
        stacked = trainer._orders(key[None], 0, replicates=True)
        assert stacked.shape == (1, *trainer._orders(key, 0).shape)


# -------------------------------------------------------------------- training


def test_training_reduces_loss_and_learns():
    cfg = train.TrainConfig(steps=200, batch_size=32, lr=1e-2, eval_every=50)
    ds, params, ms, trainer = _setup(cfg)
    state, result = train.fit(
        trainer, trainer.init(params, ms), masks.init(params), ds,
        data_key=jax.random.key(0),
    )
    losses = [r.test_loss for r in result.curve]
    assert losses[-1] < 0.5 * losses[0]
    assert result.final_test_accuracy > 0.8
    assert [r.step for r in result.curve] == [0, 50, 100, 150, 200]
    assert int(state.step) == 200


def test_pruned_weights_stay_zero_and_one_trace_across_masks():
    traces = []

    class Counting(_MLP):
        def __call__(self, x, *, train=False):
            traces.append(1)
            return super().__call__(x, train=train)

    cfg = train.TrainConfig(steps=30, batch_size=32, eval_every=10)
    ds, params, ms, trainer = _setup(cfg, module=Counting())
    n_traces = None
    for density in (1.0, 0.5, 0.2):
        mask = masks.init(params)
        if density < 1:
            mask = prune.to_density(scores.magnitude(params), mask, density)
        state, _ = train.fit(
            trainer, trainer.init(params, ms), mask, ds,
            data_key=jax.random.key(0),
        )
        for p, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(mask), strict=True):
            assert np.all(np.asarray(p)[~np.asarray(m)] == 0)
        if n_traces is None:
            n_traces = len(traces)
    # the first mask traced train chunk + evaluate once each; later masks: nothing
    assert len(traces) == n_traces


def test_resume_with_until_is_bit_identical():
    cfg = train.TrainConfig(steps=60, batch_size=32, eval_every=20)
    ds, params, ms, trainer = _setup(cfg)
    mask = masks.init(params)
    key = jax.random.key(7)
    full, _full_res = train.fit(trainer, trainer.init(params, ms), mask, ds, data_key=key)
    half, half_res = train.fit(
        trainer, trainer.init(params, ms), mask, ds, data_key=key, until=30
    )
    assert int(half.step) == 30 and [r.step for r in half_res.curve] == [0, 20, 30]
    resumed, res = train.fit(
        trainer, half, mask, ds, data_key=key, history=half_res.curve
    )
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [r.step for r in res.curve] == [0, 20, 30, 40, 60]


def test_hold_lr_trains_at_the_final_rate():
    """Fine-tuning: a cosine run held at schedule(30) equals a constant-rate run."""
    cfg = train.TrainConfig(steps=40, batch_size=32, eval_every=20, schedule="cosine",
                            lr=0.1, optimizer="sgd", momentum=0.0)
    ds, params, ms, trainer = _setup(cfg)
    held_lr = float(trainer.lr_fn(30))
    held, res = train.fit(
        trainer, trainer.init(params, ms), masks.init(params), ds,
        data_key=jax.random.key(0), hold_lr=30,
    )
    assert all(r.lr == pytest.approx(held_lr) for r in res.curve)
    const_cfg = dataclasses.replace(cfg, schedule="constant", lr=held_lr)
    _, _, _, const_trainer = _setup(const_cfg)
    const, _ = train.fit(
        const_trainer, const_trainer.init(params, ms), masks.init(params), ds,
        data_key=jax.random.key(0),
    )
    for a, b in zip(jax.tree.leaves(held.params), jax.tree.leaves(const.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_step_k_rewind_resumes_schedule_and_data_order():
    """Starting at step K with fresh optimizer state replays exactly the batches
    and learning rates from K: equal to a run whose first K steps had lr 0."""
    cfg = train.TrainConfig(steps=40, batch_size=32, eval_every=10, optimizer="sgd",
                            momentum=0.0, schedule="step", milestones=(25,), lr=0.1)
    ds, params, ms, trainer = _setup(cfg)
    mask = masks.init(params)
    key = jax.random.key(1)
    rewound, _ = train.fit(trainer, trainer.init(params, ms, step=20), mask, ds,
                           data_key=key)
    # plain SGD by hand from step 20 with the same batches and rates
    apply_fn = train.classifier(_MLP())
    p = params
    for s in range(20, 40):
        idx = data.batch_indices(key, s, num_examples=256, batch_size=32)
        x, y = ds.train.x[np.asarray(idx)], ds.train.y[np.asarray(idx)]

        def loss(q, x=x, y=y):
            logits, _ = apply_fn(q, {}, x, True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        lr = 0.1 if s < 25 else 0.01
        p = jax.tree.map(lambda a, g, lr=lr: a - lr * g, p, jax.grad(loss)(p))
    for a, b in zip(jax.tree.leaves(rewound.params), jax.tree.leaves(p), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_batchnorm_running_stats_follow_the_ema_of_the_batches_used():
    """Truth: numpy's EMA of each step's batch statistics, flax's convention
    ``ra = momentum * ra + (1 - momentum) * batch_stat`` (momentum 0.5 here; biased
    variance; start mean 0, var 1), over the batches ``data.batch_indices(key, s)``
    the trainer uses, with the params each step started from (recorded at an
    evaluation after every step). Evaluation runs on the running statistics (numpy
    loss) and leaves the state bit-identical. Tolerances: float32 against float64,
    rtol 1e-5 / atol 1e-6 on the statistics, rtol 1e-5 on the loss."""
    steps, n, b, momentum, eps = 4, 256, 32, 0.5, 1e-5
    cfg = train.TrainConfig(steps=steps, batch_size=b, eval_every=1, lr=1e-2)
    ds, params, ms, trainer = _setup(cfg, module=_BNNet())
    key = jax.random.key(0)
    seen = []  # (step, params, batch_stats) at every evaluation: steps 0 .. steps

    def record(st, rec):
        seen.append((rec.step, *jax.tree.map(lambda a: np.array(a, np.float64),
                                             (st.params, st.model_state["batch_stats"]))))

    state, result = train.fit(trainer, trainer.init(params, ms), masks.init(params), ds,
                              data_key=key, callback=record)
    assert [s for s, _, _ in seen] == list(range(steps + 1))
    mean, var = np.zeros(16), np.ones(16)
    np.testing.assert_array_equal(seen[0][2]["BatchNorm_0"]["mean"], mean)
    for s in range(steps):
        p = seen[s][1]
        idx = np.asarray(data.batch_indices(key, s, num_examples=n, batch_size=b))
        h = ds.train.x[idx].astype(np.float64) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
        mean = momentum * mean + (1 - momentum) * h.mean(0)
        var = momentum * var + (1 - momentum) * h.var(0)
        stats = seen[s + 1][2]["BatchNorm_0"]
        np.testing.assert_allclose(stats["mean"], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats["var"], var, rtol=1e-5, atol=1e-6)

    # evaluation: the running statistics, state untouched
    before = jax.tree.map(np.array, state.model_state)
    loss, acc = trainer.evaluate(state, masks.init(state.params), jnp.asarray(ds.test.x),
                                 jnp.asarray(ds.test.y))
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, state.model_state))
    _, after = trainer.apply_fn(state.params, state.model_state, jnp.asarray(ds.test.x), False)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, after))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), state.params)
    bn = p["BatchNorm_0"]
    h = ds.test.x.astype(np.float64) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    h = (h - mean) / np.sqrt(var + eps) * bn["scale"] + bn["bias"]
    logits = np.maximum(h, 0) @ p["output"]["kernel"] + p["output"]["bias"]
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    want_loss = -logp[np.arange(len(ds.test.y)), ds.test.y].mean()
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    assert result.curve[-1].test_loss == pytest.approx(want_loss, rel=1e-5)
    assert float(acc) == np.mean(logits.argmax(1) == ds.test.y)


def test_replicates_match_sequential_runs():
    cfg = train.TrainConfig(steps=30, batch_size=32, eval_every=10)
    ds = _toy_dataset()
    runs = [_setup(cfg, ds=ds, seed=s) for s in (0, 1)]
    trainer = runs[0][3]
    keys = [jax.random.key(10), jax.random.key(11)]
    mask = masks.init(runs[0][1])
    seq = [
        train.fit(trainer, trainer.init(p, ms), mask, ds, data_key=k)
        for (_, p, ms, _), k in zip(runs, keys, strict=True)
    ]
    stack = lambda *xs: jnp.stack(xs)  # noqa: E731
    state = jax.tree.map(stack, *[trainer.init(p, ms) for _, p, ms, _ in runs])
    vm_state, vm_res = train.fit(
        trainer, state, jax.tree.map(stack, mask, mask), ds,
        data_key=jnp.stack(keys), replicates=True,
    )
    for i, (s, res) in enumerate(seq):
        for a, b in zip(jax.tree.leaves(s.params), jax.tree.leaves(vm_state.params), strict=True):
            np.testing.assert_allclose(a, b[i], rtol=1e-5, atol=1e-6)
        assert vm_res.final_test_accuracy[i] == pytest.approx(res.final_test_accuracy)
        assert vm_res.early_stop_step[i] == res.early_stop_step


def test_early_stop_is_minimum_validation_loss():
    rec = lambda s, vl, ta: train.EvalRecord(s, None, vl, 0.0, 0.0, ta, 0.1)  # noqa: E731
    res = train.summarize([rec(0, 2.0, 0.1), rec(10, 0.5, 0.8), rec(20, 0.7, 0.9)])
    assert (res.early_stop_step, res.early_stop_test_accuracy) == (10, 0.8)
    assert (res.final_test_accuracy, res.best_test_accuracy) == (0.9, 0.9)


# ------------------------------------------------------------------------- CLI




# A near-tie of two logits may rank differently in float32 (XLA) and float64 (numpy):
# one test example in 1000.
_ONE_EXAMPLE = 1e-3 + 1e-9


_LOTTO_TRAIN = ["train", "--model", "mlp", "--steps", "20", "--eval-every", "10",
                "--batch-size", "50", "--lr", "0.01"]


@pytest.fixture(scope="module")
def trained_seed1(tmp_path_factory):
    """``(out, result, what it printed)`` of ``lotto train`` (in this process) with
    seed 1 and data seed 1: the single run that replicate 1 of ``--replicates 2``
    equals."""
    out = tmp_path_factory.mktemp("lotto_train") / "run"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        result = cli_run([*_LOTTO_TRAIN, "--seed", "1", "--data-seed", "1",
                          "--out", str(out)])
    return out, result, printed.getvalue()


def test_lotto_train_command_writes_outputs(trained_seed1):
    """Truth: the trained params restored with plain orbax from ``train/final``,
    evaluated by numpy on ``data.load("mnist1d")``'s test split, give the reported
    final accuracy. (``--mask``, resume and replicates' seeds:
    tests/test_resume_train.py.)"""
    import orbax.checkpoint as ocp

    out, result, printed = trained_seed1
    assert result.curve[-1].step == 20
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["train"]["steps"] == 20 and config["run"]["model"] == "mlp"
    summary = json.loads((out / "results.json").read_text())
    assert summary["final_test_accuracy"] == pytest.approx(result.final_test_accuracy)
    assert summary["density"] == 1.0
    assert "final_test_accuracy" in printed
    params = ocp.StandardCheckpointer().restore(str(out / "train" / "final"))["params"]
    test = data.load("mnist1d", seed=0).test
    assert mlp_accuracy(params, test) == pytest.approx(
        summary["final_test_accuracy"], abs=_ONE_EXAMPLE)


def test_lotto_train_replicates_match_single_runs(tmp_path, trained_seed1):
    """--replicates 2: replicate i equals a single run with seed + i, data seed + i."""
    both = cli_run([*_LOTTO_TRAIN, "--replicates", "2", "--out", str(tmp_path / "r")])
    _, second, _ = trained_seed1
    assert both.final_test_accuracy[1] == pytest.approx(second.final_test_accuracy, abs=1e-6)
    assert both.final_test_accuracy.shape == (2,)


def test_lotto_help_lists_commands(capsys):
    cli_run(["--help"])
    text = capsys.readouterr().out
    assert "train" in text and "COMMAND --help" in text
    with pytest.raises(SystemExit):
        cli_run(["train", "--help"])
    assert "--batch-size" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown command"):
        cli_run(["trian"])


def test_common_prepare_refuses_images_for_conv_on_1d_data():
    from lotto_jax.runs.common import RunConfig, prepare

    with pytest.raises(ValueError, match="cannot take dataset 'mnist1d'"):
        prepare(dataclasses.replace(RunConfig(), model="conv2"))
