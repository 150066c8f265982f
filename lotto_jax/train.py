"""Training and evaluation of masked classifiers: pure jitted steps and the loop.

The pieces, from the inside out:

* :class:`TrainConfig`: the hyperparameters (steps, batch size, optimizer, schedule,
  evaluation cadence), a frozen dataclass that the CLI is built from.
* :func:`optimizer` and :func:`schedule`: optax by name. The optimizer produces an
  update *direction*; the step multiplies it by ``-schedule(step)`` itself, where
  ``step`` is the global training step of :class:`TrainState`. So rewinding to step
  ``k`` (fresh optimizer state, schedule and data order resumed at ``k``) or replaying
  the schedule (learning-rate rewinding) only changes data, never the compiled code.
* :class:`Trainer`: the compiled functions for one model, optimizer and dataset
  shape, built once by :func:`make_trainer` and reused across rounds, masks and
  replicates. Its chunk function runs ``chunk`` steps in one ``lax.scan`` with the
  data on device and the batch indices computed from ``(key, step)``
  (:func:`lotto_jax.data.batch_indices`), so the host is out of the inner loop.
* :func:`fit`: the loop: chunks between evaluations on validation and test, the
  curve, the early-stop iteration, a progress bar, JSON lines, a callback for
  checkpoints. With ``replicates=True`` every argument carries a leading replicate
  axis and each chunk trains all replicates in one vmapped step.

The mask is an ordinary traced argument everywhere: a new mask never recompiles.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from lotto_jax import data as data_lib
from lotto_jax._types import Mask, Params, PRNGKey
from lotto_jax.masks import apply as apply_mask

__all__ = [
    "ApplyFn",
    "EvalRecord",
    "FitResult",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "classifier",
    "fit",
    "make_trainer",
    "optimizer",
    "schedule",
]

ApplyFn = Callable[..., tuple[jax.Array, Any]]
"""``apply_fn(params, model_state, x, train) -> (logits, new_model_state)``."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train one network.

    Attributes:
      steps: total training steps (iterations), counted from step 0.
      batch_size: examples per step.
      optimizer: ``"sgd"`` (with ``momentum``; 0 = plain SGD), ``"adam"`` or
        ``"adamw"``.
      lr: peak learning rate.
      momentum: SGD momentum.
      nesterov: Nesterov momentum for SGD.
      weight_decay: L2 added to the gradient for sgd/adam (PyTorch's coupled
        ``weight_decay``), decoupled for adamw.
      schedule: ``"constant"``, ``"step"`` (multiply by ``gamma`` at each of
        ``milestones``) or ``"cosine"`` (to 0 at ``steps``).
      milestones: steps at which a ``"step"`` schedule decays.
      gamma: decay factor of the ``"step"`` schedule.
      warmup_steps: linear warm-up from 0 to ``lr`` over the first steps.
      eval_every: evaluate on validation and test every this many steps (and at 0
        and at the last step).
      eval_batch_size: examples per evaluation batch.
      shuffle: reshuffle the training data every epoch (else fixed order).
    """

    steps: int = 1000
    batch_size: int = 60
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = 1.2e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: Literal["constant", "step", "cosine"] = "constant"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_steps: int = 0
    eval_every: int = 100
    eval_batch_size: int = 1000
    shuffle: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(
                f"optimizer: expected 'sgd', 'adam' or 'adamw', got {self.optimizer!r}"
            )
        if self.schedule not in ("constant", "step", "cosine"):
            raise ValueError(
                "schedule: expected 'constant', 'step' or 'cosine', "
                f"got {self.schedule!r}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr: expected a positive learning rate, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: expected >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum: expected a value in [0, 1), got {self.momentum}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps: expected >= 0, got {self.warmup_steps}")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones: expected increasing steps, got {self.milestones}")


def schedule(config: TrainConfig) -> optax.Schedule:
    """The learning rate as a function of the global step.

    Examples:
      >>> s = schedule(TrainConfig(lr=1.0, schedule="step", milestones=(10,), gamma=0.5))
      >>> float(s(9)), float(s(10))
      (1.0, 0.5)
    """
    c = config
    if c.schedule == "constant":
        main = optax.constant_schedule(c.lr)
    elif c.schedule == "step":
        main = optax.piecewise_constant_schedule(
            c.lr, {int(m): c.gamma for m in c.milestones}
        )
    else:
        main = optax.cosine_decay_schedule(c.lr, max(c.steps - c.warmup_steps, 1))
    if not c.warmup_steps:
        return main
    warm = optax.linear_schedule(0.0, c.lr, c.warmup_steps)
    return optax.join_schedules([warm, main], [c.warmup_steps])


def optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The update direction (learning rate 1, sign not flipped) for ``config``.

    The train step scales it by ``-schedule(step)``. The trainer keeps pruned
    weights and moments at zero itself; to use the direction in your own masked
    step, wrap it with :func:`lotto_jax.sparse.masked`.
    """
    c = config
    parts = []
    if c.optimizer == "sgd":
        if c.weight_decay:
            parts.append(optax.add_decayed_weights(c.weight_decay))
        if c.momentum:
            parts.append(optax.trace(decay=c.momentum, nesterov=c.nesterov))
    elif c.optimizer == "adam":
        if c.weight_decay:
            parts.append(optax.add_decayed_weights(c.weight_decay))
        parts.append(optax.scale_by_adam())
    else:  # adamw
        parts.append(optax.scale_by_adam())
        if c.weight_decay:
            parts.append(optax.add_decayed_weights(c.weight_decay))
    return optax.chain(*parts) if parts else optax.identity()


def classifier(module: nn.Module) -> ApplyFn:
    """Adapts a Flax linen module to ``apply_fn(params, model_state, x, train)``.

    ``model_state`` holds the non-trained collections (``batch_stats``); in training
    they are applied as mutable and returned updated.
    """

    def apply_fn(params, model_state, x, train):
        variables = {"params": params, **model_state}
        if train and model_state:
            logits, updates = module.apply(
                variables, x, train=True, mutable=list(model_state)
            )
            return logits, {**model_state, **updates}
        return module.apply(variables, x, train=train), model_state

    return apply_fn


class TrainState(struct.PyTreeNode):
    """Everything that changes during training; a pytree (checkpointable, vmappable).

    Attributes:
      step: the global step (int32 scalar); it drives the schedule and data order.
      params: the trained parameters (pruned entries exactly 0).
      model_state: non-trained collections, e.g. ``{"batch_stats": ...}``.
      opt_state: the optimizer's state (moments of pruned weights are exactly 0).
    """

    step: jax.Array
    params: Params
    model_state: Any
    opt_state: Any


class EvalRecord(NamedTuple):
    """One evaluation point of the curve (floats, or arrays over replicates)."""

    step: int
    train_loss: Any
    val_loss: Any
    val_accuracy: Any
    test_loss: Any
    test_accuracy: Any
    lr: float


class FitResult(NamedTuple):
    """What :func:`fit` measured.

    Attributes:
      curve: the evaluation records in step order.
      final_test_accuracy: test accuracy at the last step.
      early_stop_step: the evaluated step of minimum validation loss (Frankle &
        Carbin 2019's early-stop iteration); ``None`` without a validation split.
      early_stop_test_accuracy: test accuracy at that step.
      best_test_accuracy: the maximum test accuracy over the curve (the MNIST-1D
        notebook's metric).
    """

    curve: list[EvalRecord]
    final_test_accuracy: Any
    early_stop_step: Any
    early_stop_test_accuracy: Any
    best_test_accuracy: Any

    def metrics(self) -> dict[str, Any]:
        """The accuracies, the early-stop step and the curve as a dict (run stores)."""
        return {
            "final_test_accuracy": self.final_test_accuracy,
            "early_stop_step": self.early_stop_step,
            "early_stop_test_accuracy": self.early_stop_test_accuracy,
            "best_test_accuracy": self.best_test_accuracy,
            "curve": [r._asdict() for r in self.curve],
        }


@dataclasses.dataclass(frozen=True, eq=False)
class Trainer:
    """The compiled functions for one model, optimizer and dataset shape.

    Build it once with :func:`make_trainer` and reuse it: every round, mask, rewind
    point and replicate runs through the same compiled code.
    """

    config: TrainConfig
    apply_fn: ApplyFn
    tx: optax.GradientTransformation
    lr_fn: optax.Schedule
    chunk: int
    num_train: int
    _train_chunk: Callable
    _train_chunk_vmapped: Callable
    _evaluate: Callable
    _evaluate_vmapped: Callable
    _epoch_perm: Callable
    _perm_cache: dict = dataclasses.field(default_factory=dict)

    def init(self, params: Params, model_state: Any = None, *, step: int = 0) -> TrainState:
        """A fresh state: optimizer state from ``params``, schedule at ``step``."""
        return TrainState(
            step=jnp.asarray(step, jnp.int32),
            params=params,
            model_state={} if model_state is None else model_state,
            opt_state=self.tx.init(params),
        )

    def train_chunk(
        self, state, mask, data_key, x, y, *, hold_lr=-1, until=None, replicates=False
    ):
        """Runs ``self.chunk`` steps in one scan, stopping early at step ``until``
        (default: ``config.steps``).

        Returns ``(state, mean_train_loss)``. ``hold_lr >= 0`` freezes the learning
        rate at ``schedule(hold_lr)`` (fine-tuning at the final rate).
        """
        until = self.config.steps if until is None else until
        steps = np.asarray(state.step)
        if steps.size > 1 and np.ptp(steps):
            raise ValueError(f"state.step: replicates must be at the same step, got {steps}")
        step = int(steps.max())
        n_active = jnp.int32(min(max(until - step, 0), self.chunk))
        orders = self._orders(data_key, step, replicates=replicates)
        fn = self._train_chunk_vmapped if replicates else self._train_chunk
        return fn(
            state, mask, data_key, orders, x, y, jnp.asarray(hold_lr, jnp.int32), n_active
        )

    def _orders(self, data_key, step: int, *, replicates: bool = False) -> jax.Array:
        """The permutations of the epochs a chunk from ``step`` can touch.

        ``[epochs, n // b * b]`` (a leading replicate axis with ``replicates``), each
        ``jax.random.permutation(fold_in(data_key, e), n)`` as in
        :func:`lotto_jax.data.batch_indices`. A permutation of ``n`` is a sort, slow
        on XLA's CPU backend (~20-45 ms for 60,000): each epoch's is computed once
        and cached here instead of once per chunk.
        """
        if not self.config.shuffle:
            return jnp.zeros((data_key.shape[0], 1) if replicates else (1,), jnp.int32)
        spe = self.num_train // self.config.batch_size
        e0 = step // spe
        # the shape too: one stacked replicate key has the bytes of the plain key
        key_bytes = (data_key.shape, np.asarray(jax.random.key_data(data_key)).tobytes())
        perms = []
        for e in range(e0, e0 + self.chunk // spe + 2):
            cache_key = (key_bytes, e)
            if cache_key not in self._perm_cache:
                if len(self._perm_cache) >= 8:
                    self._perm_cache.pop(next(iter(self._perm_cache)))
                self._perm_cache[cache_key] = self._epoch_perm(data_key, jnp.int32(e))
            perms.append(self._perm_cache[cache_key])
        return jnp.stack(perms, axis=1 if replicates else 0)

    def evaluate(self, state, mask, x, y, *, replicates=False):
        """``(mean loss, accuracy)`` of the masked network on ``(x, y)``."""
        fn = self._evaluate_vmapped if replicates else self._evaluate
        return fn(state.params, state.model_state, mask, x, y)


def _epoch_orders(key, orders, first_step, chunk, *, n, b, shuffle):
    """Batch indices of steps ``first_step ... first_step + chunk - 1``: [chunk, b].

    Equal to ``data.batch_indices(key, s)`` for each ``s``. With ``shuffle``,
    ``orders`` holds the permutations of epochs ``first_step // (n // b)`` onwards
    (``Trainer._orders``); without, the indices follow from the step alone.
    """
    if not shuffle:
        steps = first_step + jnp.arange(chunk)
        return jax.vmap(
            lambda s: data_lib.batch_indices(key, s, num_examples=n, batch_size=b, shuffle=False)
        )(steps)
    spe = n // b
    flat = orders.reshape(-1)
    start = (first_step - (first_step // spe) * spe) * b
    return jax.lax.dynamic_slice(flat, (start,), (chunk * b,)).reshape(chunk, b)


class _PermFn(NamedTuple):
    single: Callable
    vmapped: Callable

    def __call__(self, key, epoch):
        return (self.vmapped if key.ndim else self.single)(key, epoch)


def make_trainer(
    apply_fn: ApplyFn,
    config: TrainConfig,
    *,
    num_train: int,
    chunk: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    fsdp: bool = False,
) -> Trainer:
    """Builds the jitted train chunk and evaluation for one model and config.

    Args:
      apply_fn: ``apply_fn(params, model_state, x, train) -> (logits,
        model_state)``; see :func:`classifier` for Flax linen modules.
      config: the training hyperparameters.
      num_train: number of training examples (static: it fixes the data order).
      chunk: steps per compiled scan; defaults to ``config.eval_every``.
      mesh: data parallelism: each batch is split over the mesh's ``"data"`` axis
        (see :mod:`lotto_jax.sharding`; place the state with
        ``sharding.place_state``). ``None`` leaves placement to JAX.
      fsdp: with ``mesh``, params and their moments are split over the mesh's
        ``"model"`` axis (``sharding.param_shardings(fsdp=True)``); the compiled
        chunk keeps the state in that layout so it never recompiles.

    Returns:
      A :class:`Trainer`.
    """
    c = config
    chunk = chunk or c.eval_every
    if num_train < c.batch_size:
        raise ValueError(
            f"batch_size: {c.batch_size} is larger than the training set ({num_train})"
        )
    tx = optimizer(c)
    lr_fn = schedule(c)
    if mesh is not None:
        from lotto_jax.sharding import DATA, batch_sharding

        if c.batch_size % mesh.shape[DATA]:
            raise ValueError(
                f"batch_size: {c.batch_size} is not divisible by the mesh's data axis "
                f"({mesh.shape[DATA]} devices)"
            )
        constrain = lambda a: jax.lax.with_sharding_constraint(a, batch_sharding(mesh))  # noqa: E731

        def pin(state: TrainState) -> TrainState:
            """Keeps the state in its placed layout (propagation may move it)."""
            from lotto_jax.sharding import param_shardings, replicated

            shardings = param_shardings(state.params, mesh, fsdp=fsdp)
            wsc = jax.lax.with_sharding_constraint
            return state.replace(
                params=wsc(state.params, shardings),
                model_state=wsc(state.model_state, replicated(mesh)),
                opt_state=optax.tree_utils.tree_map_params(
                    tx, wsc, state.opt_state, shardings,
                    transform_non_params=lambda x: wsc(x, replicated(mesh)),
                ),
            )
    else:
        constrain = pin = lambda a: a

    def loss_and_logits(params, model_state, x, y, train):
        logits, model_state = apply_fn(params, model_state, x, train)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, model_state

    def enforce(state: TrainState, mask) -> TrainState:
        """Pruned weights and their optimizer moments to exactly 0."""
        return state.replace(
            params=apply_mask(state.params, mask),
            opt_state=optax.tree_utils.tree_map_params(
                tx, lambda v, m: jnp.where(m, v, jnp.zeros_like(v)), state.opt_state, mask
            ),
        )

    def one_step(state: TrainState, mask, x, y, hold_lr):
        # Pruned weights and moments are exactly 0 (enforce() at the chunk start) and
        # their gradients are masked here, so every optimizer of TrainConfig keeps
        # them at exactly 0: Adam's mu, nu and update, SGD's trace and the coupled
        # or decoupled decay of a zero weight are all 0. Masking once per chunk
        # instead of every step costs ~2 % instead of ~17 % (BENCHMARKS.md).
        grad_fn = jax.value_and_grad(loss_and_logits, has_aux=True)
        (loss, model_state), grads = grad_fn(state.params, state.model_state, x, y, True)
        direction, opt_state = tx.update(apply_mask(grads, mask), state.opt_state, state.params)
        lr = lr_fn(jnp.where(hold_lr >= 0, hold_lr, state.step))
        params = jax.tree.map(
            lambda p, d: (p - lr * d).astype(p.dtype), state.params, direction
        )
        return TrainState(state.step + 1, params, model_state, opt_state), loss

    def train_chunk(state, mask, data_key, orders, x, y, hold_lr, n_active):
        state = enforce(state, mask)
        idx = _epoch_orders(
            data_key, orders, state.step, chunk, n=num_train, b=c.batch_size,
            shuffle=c.shuffle,
        )

        def body(carry, inp):
            i, batch_idx = inp
            st, total = carry
            st, loss = jax.lax.cond(
                i < n_active,
                lambda s: one_step(
                    s, mask, constrain(x[batch_idx]), constrain(y[batch_idx]), hold_lr
                ),
                lambda s: (s, jnp.zeros((), jnp.float32)),
                st,
            )
            return (st, total + loss.astype(jnp.float32)), None

        (state, total), _ = jax.lax.scan(
            body, (state, jnp.zeros((), jnp.float32)), (jnp.arange(chunk), idx)
        )
        return pin(state), total / jnp.maximum(n_active, 1)

    def evaluate(params, model_state, mask, x, y):
        n = x.shape[0]
        eb = min(c.eval_batch_size, n)
        n_batches = -(-n // eb)
        pad = n_batches * eb - n
        xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
        yp = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]) if pad else y
        weight = (jnp.arange(n_batches * eb) < n).astype(jnp.float32)
        masked_params = apply_mask(params, mask)

        def body(carry, inp):
            xb, yb, wb = inp
            logits, _ = apply_fn(masked_params, model_state, xb, False)
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
            correct = (jnp.argmax(logits, -1) == yb).astype(jnp.float32)
            return (carry[0] + jnp.sum(losses * wb), carry[1] + jnp.sum(correct * wb)), None

        shape = lambda a: a.reshape(n_batches, eb, *a.shape[1:])  # noqa: E731
        (loss, correct), _ = jax.lax.scan(
            body, (jnp.zeros(()), jnp.zeros(())), (shape(xp), shape(yp), shape(weight))
        )
        return loss / n, correct / n

    spe_b = (num_train // c.batch_size) * c.batch_size

    def epoch_perm(key, epoch):
        perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_train)
        return perm[:spe_b].astype(jnp.int32)

    chunk_in_axes = (0, 0, 0, 0, None, None, None, None)
    return Trainer(
        config=c,
        apply_fn=apply_fn,
        tx=tx,
        lr_fn=lr_fn,
        chunk=chunk,
        num_train=num_train,
        _train_chunk=jax.jit(train_chunk, donate_argnums=(0,)),
        _train_chunk_vmapped=jax.jit(
            jax.vmap(train_chunk, in_axes=chunk_in_axes), donate_argnums=(0,)
        ),
        _evaluate=jax.jit(evaluate),
        _epoch_perm=_PermFn(jax.jit(epoch_perm), jax.jit(jax.vmap(epoch_perm, (0, None)))),
        _evaluate_vmapped=jax.jit(jax.vmap(evaluate, in_axes=(0, 0, 0, None, None))),
    )


def _to_host(x):
    x = np.asarray(x)
    return float(x) if x.ndim == 0 else x.astype(float)


def fit(
    trainer: Trainer,
    state: TrainState,
    mask: Mask,
    dataset: data_lib.Dataset,
    *,
    data_key: PRNGKey,
    hold_lr: int = -1,
    until: int | None = None,
    replicates: bool = False,
    history: Sequence[EvalRecord] = (),
    callback: Callable[[TrainState, EvalRecord], None] | None = None,
    metrics_path: str | None = None,
    progress: bool | None = None,
    description: str = "train",
) -> tuple[TrainState, FitResult]:
    """Trains ``state`` under ``mask`` from ``state.step`` to ``config.steps``.

    Evaluations happen at step 0, at every multiple of ``config.eval_every`` and at
    the last step (``until`` too).

    Args:
      trainer: from :func:`make_trainer`.
      state: the starting state (``trainer.init(params)``, a rewound state, or a
        state restored from a checkpoint to resume).
      mask: the mask; ``masks.init(params)`` for dense training.
      dataset: train / validation / test arrays (:func:`lotto_jax.data.load`).
      data_key: the key of the data order; batch ``s`` is a pure function of
        ``(data_key, s)``, so a resumed run sees the batches it would have seen.
        With ``replicates`` a stacked key per replicate.
      hold_lr: if ``>= 0``, train at the constant rate ``schedule(hold_lr)``.
      until: stop at this step instead of ``config.steps`` (e.g. to save the
        rewind point θK of weight rewinding, then continue with another call).
      replicates: ``state``, ``mask`` and ``data_key`` carry a leading axis of
        replicates trained together by one vmapped step; metrics become arrays.
      history: evaluation records from before a resume, kept at the front of the
        curve.
      callback: called as ``callback(state, record)`` after each evaluation (e.g.
        to checkpoint).
      metrics_path: if given, each record is appended there as a JSON line.
      progress: show a progress bar; default: only when stderr is a terminal.
      description: the progress bar's label.

    Returns:
      ``(final_state, FitResult)``.
    """
    c = trainer.config
    if dataset.train.x.shape[0] != trainer.num_train:
        raise ValueError(
            f"dataset: the trainer was built for {trainer.num_train} training examples, "
            f"got {dataset.train.x.shape[0]}"
        )
    x_train, y_train = jnp.asarray(dataset.train.x), jnp.asarray(dataset.train.y)
    x_test, y_test = jnp.asarray(dataset.test.x), jnp.asarray(dataset.test.y)
    val = dataset.validation
    x_val, y_val = (jnp.asarray(val.x), jnp.asarray(val.y)) if val is not None else (None, None)
    curve = list(history)
    # The chunks donate their input state; copy once so the caller's arrays (θ0, a
    # rewind point) stay valid.
    state = jax.tree.map(jnp.copy, state)
    first = int(np.max(np.asarray(state.step)))

    def record(st, train_loss):
        step = int(np.max(np.asarray(st.step)))
        test = trainer.evaluate(st, mask, x_test, y_test, replicates=replicates)
        v = trainer.evaluate(st, mask, x_val, y_val, replicates=replicates) if val is not None else (None, None)
        lr = float(trainer.lr_fn(hold_lr if hold_lr >= 0 else step))
        rec = EvalRecord(
            step=step,
            train_loss=None if train_loss is None else _to_host(train_loss),
            val_loss=None if v[0] is None else _to_host(v[0]),
            val_accuracy=None if v[1] is None else _to_host(v[1]),
            test_loss=_to_host(test[0]),
            test_accuracy=_to_host(test[1]),
            lr=lr,
        )
        curve.append(rec)
        if metrics_path:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(_jsonable(rec._asdict())) + "\n")
        if callback is not None:
            callback(st, rec)
        return rec

    stop = c.steps if until is None else min(int(until), c.steps)
    show = sys.stderr.isatty() if progress is None else progress
    bar = _Progress(show, description, total=c.steps, done=first)
    with bar:
        if first == 0 and not any(r.step == 0 for r in curve):
            record(state, None)
        step = first
        while step < stop:
            next_eval = min((step // c.eval_every + 1) * c.eval_every, stop)
            train_loss = None
            while step < next_eval:
                state, train_loss = trainer.train_chunk(
                    state, mask, data_key, x_train, y_train,
                    hold_lr=hold_lr, until=next_eval, replicates=replicates,
                )
                step = int(np.max(np.asarray(state.step)))
            rec = record(state, train_loss)
            bar.update(step, rec)
    return state, summarize(curve)


def summarize(curve: Sequence[EvalRecord]) -> FitResult:
    """Final, early-stop and best test accuracy of a curve (per replicate)."""
    if not curve:
        raise ValueError("curve: no evaluation records")
    test_acc = np.stack([np.asarray(r.test_accuracy, float) for r in curve])
    best = test_acc.max(0)
    if curve[0].val_loss is None:
        es_step = es_acc = None
    else:
        val_loss = np.stack([np.asarray(r.val_loss, float) for r in curve])
        i = val_loss.argmin(0)
        steps = np.array([r.step for r in curve])
        es_step = steps[i]
        es_acc = np.take_along_axis(test_acc, np.expand_dims(i, 0), 0)[0] if test_acc.ndim > 1 else test_acc[i]
        es_step = int(es_step) if np.ndim(es_step) == 0 else es_step
        es_acc = float(es_acc) if np.ndim(es_acc) == 0 else es_acc
    scalar = lambda a: float(a) if np.ndim(a) == 0 else a  # noqa: E731
    return FitResult(
        curve=list(curve),
        final_test_accuracy=scalar(test_acc[-1]),
        early_stop_step=es_step,
        early_stop_test_accuracy=es_acc,
        best_test_accuracy=scalar(best),
    )


def _jsonable(d: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}


class _Progress:
    """A rich progress bar with loss, accuracy and ETA; silent when disabled."""

    def __init__(self, enabled: bool, description: str, *, total: int, done: int):
        self.enabled = enabled
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._p.add_task(description, total=total, completed=done, info="")

    def __enter__(self):
        if self.enabled:
            self._p.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._p.__exit__(*exc)

    def update(self, step: int, rec: EvalRecord):
        if not self.enabled:
            return
        mean = lambda v: float(np.mean(v))  # noqa: E731
        info = f"loss {mean(rec.train_loss):.4f}  test acc {100 * mean(rec.test_accuracy):.2f}%"
        self._p.update(self._task, completed=step, info=info)
