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
  curve, the early-stop iteration, and a callback after each evaluation for
  checkpoints, logs and progress bars (the run layer's: nothing here prints or
  writes files, see :mod:`lotto_jax.runs.progress`). With ``replicates=True`` every
  argument carries a leading replicate axis and each chunk trains all replicates in
  one vmapped step.

The mask is an ordinary traced argument everywhere: a new mask never recompiles.

:class:`TrainConfig`, :func:`optimizer`, :func:`schedule` and :class:`TrainState` live
in ``lotto_jax._train_config``, :class:`Trainer` and :func:`make_trainer` in
``lotto_jax._trainer``; import them from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import data as data_lib
from lotto_jax._train_config import (
    ApplyFn,
    TrainConfig,
    TrainState,
    optimizer,
    schedule,
)
from lotto_jax._trainer import Trainer, _epoch_orders, make_trainer  # noqa: F401
from lotto_jax._types import Mask, PRNGKey

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


class EvalRecord(NamedTuple):
    """One evaluation point of the curve (floats, or arrays over replicates)."""

    step: int
    train_loss: Any
    val_loss: Any
    val_accuracy: Any
    test_loss: Any
    test_accuracy: Any
    lr: float
    train_accuracy: Any = None


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


def _to_host(x):
    x = np.asarray(x)
    return float(x) if x.ndim == 0 else x.astype(float)


def fit(
    trainer: Trainer,
    state: TrainState,
    mask: Mask | None,
    dataset: data_lib.Dataset,
    *,
    data_key: PRNGKey,
    hold_lr: int = -1,
    until: int | None = None,
    replicates: bool = False,
    history: Sequence[EvalRecord] = (),
    callback: Callable[[TrainState, EvalRecord], TrainState | None] | None = None,
) -> tuple[TrainState, FitResult]:
    """Trains ``state`` under ``mask`` from ``state.step`` to ``config.steps``.

    Evaluations happen at step 0, at every multiple of ``config.eval_every`` and at
    the last step (``until`` too).

    Args:
      trainer: from :func:`make_trainer`.
      state: the starting state (``trainer.init(params)``, a rewound state, or a
        state restored from a checkpoint to resume).
      mask: the mask; ``masks.init(params)`` for dense training. ``None`` with a
        trainer that has a mask updater (:mod:`lotto_jax.dst`): the mask is
        ``state.dst.mask`` and changes during training.
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
        to checkpoint, log or draw progress: :mod:`lotto_jax.runs.progress`). If it
        returns a state, training continues from that one (e.g. with a new
        :func:`lotto_jax.sparse.with_scale` in its ``opt_state``); ``None`` keeps
        the state.

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
        tr = trainer.evaluate(st, mask, x_train, y_train, replicates=replicates) if c.eval_train else None
        lr = float(trainer.lr_fn(hold_lr if hold_lr >= 0 else step))
        rec = EvalRecord(
            step=step,
            train_loss=None if train_loss is None else _to_host(train_loss),
            val_loss=None if v[0] is None else _to_host(v[0]),
            val_accuracy=None if v[1] is None else _to_host(v[1]),
            test_loss=_to_host(test[0]),
            test_accuracy=_to_host(test[1]),
            lr=lr,
            train_accuracy=None if tr is None else _to_host(tr[1]),
        )
        curve.append(rec)
        new = None if callback is None else callback(st, rec)
        return st if new is None else new

    stop = c.steps if until is None else min(int(until), c.steps)
    if first == 0 and not any(r.step == 0 for r in curve):
        state = record(state, None)
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
        state = record(state, train_loss)
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
