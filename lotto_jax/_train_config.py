"""What one training run is made of: its hyperparameters, optimizer, schedule and state.

:class:`TrainConfig` holds the hyperparameters. :func:`optimizer` and :func:`schedule`
turn it into optax objects: the optimizer produces an update *direction*; the step
multiplies it by ``-schedule(step)`` itself, where ``step`` is the global training
step of :class:`TrainState`. So rewinding to step ``k`` (fresh optimizer state,
schedule and data order resumed at ``k``) or replaying the schedule (learning-rate
rewinding) only changes data, never the compiled code.

Users import these names from :mod:`lotto_jax.train`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import jax
import optax
from flax import struct

from lotto_jax._types import Params

__all__ = ["ApplyFn", "TrainConfig", "TrainState", "optimizer", "schedule"]

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
      b2: the decay of Adam's (and AdamW's) second-moment average, 0.999 by
        default; 0.98 in the grokking papers (Power et al. 2022, Minegishi et al.).
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
      eval_train: at every evaluation also measure the loss and accuracy of the
        whole training split (``train_accuracy`` of the curve; grokking plots
        train and test accuracy). Off by default: one more pass over the data.
    """

    steps: int = 1000
    batch_size: int = 60
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = 1.2e-3
    b2: float = 0.999
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
    eval_train: bool = False

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
        if not 0 <= self.b2 < 1:
            raise ValueError(f"b2: expected a value in [0, 1), got {self.b2}")
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
        parts.append(optax.scale_by_adam(b2=c.b2))
    else:  # adamw
        parts.append(optax.scale_by_adam(b2=c.b2))
        if c.weight_decay:
            parts.append(optax.add_decayed_weights(c.weight_decay))
    return optax.chain(*parts) if parts else optax.identity()


class TrainState(struct.PyTreeNode):
    """Everything that changes during training; a pytree (checkpointable, vmappable).

    Attributes:
      step: the global step (int32 scalar); it drives the schedule and data order.
      params: the trained parameters (pruned entries exactly 0).
      model_state: non-trained collections, e.g. ``{"batch_stats": ...}``.
      opt_state: the optimizer's state (moments of pruned weights are exactly 0).
      dst: with a mask updater (dynamic sparse training), the current mask and the
        updater's state (a :class:`lotto_jax.dst.DstState`); ``None`` otherwise.
    """

    step: jax.Array
    params: Params
    model_state: Any
    opt_state: Any
    dst: Any = None
