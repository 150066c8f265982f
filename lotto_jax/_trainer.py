"""The compiled functions of training: :class:`Trainer` and :func:`make_trainer`.

A :class:`Trainer` holds the compiled functions for one model, optimizer and dataset
shape, built once by :func:`make_trainer` and reused across rounds, masks and
replicates. Its chunk function runs ``chunk`` steps in one ``lax.scan`` with the data
on device and the batch indices computed from ``(key, step)``
(:func:`lotto_jax.data.batch_indices`), so the host is out of the inner loop. The mask
is an ordinary traced argument everywhere: a new mask never recompiles.

Users import these names from :mod:`lotto_jax.train`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lotto_jax import data as data_lib
from lotto_jax._train_config import (
    ApplyFn,
    TrainConfig,
    TrainState,
    optimizer,
    schedule,
)
from lotto_jax._types import Params
from lotto_jax.dst import DstState
from lotto_jax.masks import apply as apply_mask
from lotto_jax.sharding import DATA, batch_sharding, param_shardings, replicated

__all__ = ["Trainer", "make_trainer"]


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
    updater: Any = None
    _perm_cache: dict = dataclasses.field(default_factory=dict)

    def init(self, params: Params, model_state: Any = None, *, step: int = 0,
             mask: Any = None, key: Any = None) -> TrainState:
        """A fresh state: optimizer state from ``params``, schedule at ``step``.

        With an updater (:mod:`lotto_jax.dst`) the state also holds the start
        ``mask`` (default: the updater's ``initial_mask(params, key)``) and the
        updater's state from ``key`` (required), in ``state.dst``.
        """
        dst_state = None
        if self.updater is not None:
            if key is None:
                raise ValueError("key: a trainer with a mask updater needs key= "
                                 "(the updater's randomness)")
            if mask is None:
                mask = self.updater.initial_mask(params, key)
            dst_state = DstState(mask, self.updater.init(params, key))
        elif mask is not None or key is not None:
            raise ValueError("mask, key: only a trainer with a mask updater keeps a mask "
                             "in its state; pass the mask to fit or train_chunk")
        return TrainState(
            step=jnp.asarray(step, jnp.int32),
            params=params,
            model_state={} if model_state is None else model_state,
            opt_state=self.tx.init(params),
            dst=dst_state,
        )

    def mask_of(self, state: TrainState, mask: Any = None) -> Any:
        """The mask ``state`` trains under: ``mask``, or with an updater the
        state's own (then ``mask`` must be ``None``)."""
        if self.updater is None:
            if mask is None:
                raise ValueError("mask: required (masks.init(params) for dense training)")
            return mask
        if mask is not None:
            raise ValueError("mask: a trainer with a mask updater keeps the mask in "
                             "state.dst; pass mask=None")
        if state.dst is None:
            raise ValueError("state: no state.dst; build the state with trainer.init("
                             "params, mask=..., key=...)")
        return state.dst.mask

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
        self.mask_of(state, mask)  # checks mask against the updater
        return fn(
            state, mask, data_key, orders, x, y, jnp.asarray(hold_lr, jnp.int32), n_active,
            jnp.int32(step),
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
        return fn(state.params, state.model_state, self.mask_of(state, mask), x, y)


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
    updater: Any = None,
    grad_transform: optax.GradientTransformation | None = None,
) -> Trainer:
    """Builds the jitted train chunk and evaluation for one model and config.

    Args:
      apply_fn: ``apply_fn(params, model_state, x, train) -> (logits,
        model_state)``; see :func:`lotto_jax.train.classifier` for Flax linen
        modules.
      config: the training hyperparameters.
      num_train: number of training examples (static: it fixes the data order).
      chunk: steps per compiled scan; defaults to ``config.eval_every``.
      mesh: data parallelism: each batch is split over the mesh's ``"data"`` axis
        (see :mod:`lotto_jax.sharding`; place the state with
        ``sharding.place_state``). ``None`` leaves placement to JAX.
      fsdp: with ``mesh``, params and their moments are split over the mesh's
        ``"model"`` axis (``sharding.param_shardings(fsdp=True)``); the compiled
        chunk keeps the state in that layout so it never recompiles.
      updater: a mask updater (:class:`lotto_jax.dst.Updater`): the mask lives in
        ``state.dst`` and changes inside the compiled chunk after every step at
        which ``updater.fires(step)``; dropped and grown weights and their moments
        are set to 0 there. ``None``: the mask is an argument, fixed.
      grad_transform: an optax transformation applied to the gradient before the
        optimizer (its state lives in ``opt_state``, first in the chain), e.g.
        :func:`lotto_jax.sparse.scale_by_tree`.

    Returns:
      A :class:`Trainer`.
    """
    c = config
    chunk = chunk or c.eval_every
    if num_train < c.batch_size:
        raise ValueError(
            f"batch_size: {c.batch_size} is larger than the training set ({num_train})"
        )
    if updater is not None and updater.end is not None and updater.end > c.steps:
        raise ValueError(f"end: the {updater.name} updater changes the mask until step "
                         f"{updater.end}, beyond the {c.steps} training steps")
    tx = optimizer(c) if grad_transform is None else optax.chain(grad_transform, optimizer(c))
    lr_fn = schedule(c)
    constrain, pin = _placement(mesh, fsdp, tx, c.batch_size)
    train_chunk = _train_chunk_fn(
        apply_fn, c, tx, lr_fn, chunk=chunk, num_train=num_train, constrain=constrain,
        pin=pin, updater=updater,
    )
    evaluate = _evaluate_fn(apply_fn, c.eval_batch_size)
    spe_b = (num_train // c.batch_size) * c.batch_size

    def epoch_perm(key, epoch):
        perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_train)
        return perm[:spe_b].astype(jnp.int32)

    chunk_in_axes = (0, 0, 0, 0, None, None, None, None, None)
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
        updater=updater,
    )


def _placement(mesh, fsdp: bool, tx, batch_size: int):
    """``(constrain, pin)``: a batch to the mesh's data axis, a state to its placed
    layout (propagation may move it); identities without a mesh."""
    if mesh is None:
        identity = lambda a: a  # noqa: E731
        return identity, identity
    if batch_size % mesh.shape[DATA]:
        raise ValueError(
            f"batch_size: {batch_size} is not divisible by the mesh's data axis "
            f"({mesh.shape[DATA]} devices)"
        )

    def constrain(a):
        return jax.lax.with_sharding_constraint(a, batch_sharding(mesh))

    def pin(state: TrainState) -> TrainState:
        """Keeps the state in its placed layout (propagation may move it)."""
        shardings = param_shardings(state.params, mesh, fsdp=fsdp)
        wsc = jax.lax.with_sharding_constraint
        if state.dst is not None:  # the mask follows its params
            state = state.replace(dst=state.dst._replace(
                mask=wsc(state.dst.mask, shardings),
                inner=wsc(state.dst.inner, replicated(mesh))))
        return state.replace(
            params=wsc(state.params, shardings),
            model_state=wsc(state.model_state, replicated(mesh)),
            opt_state=optax.tree_utils.tree_map_params(
                tx, wsc, state.opt_state, shardings,
                transform_non_params=lambda x: wsc(x, replicated(mesh)),
            ),
        )

    return constrain, pin


def _zero_outside(state: TrainState, keep, tx) -> TrainState:
    """Weights and their optimizer moments to exactly 0 where ``keep`` is False."""
    return state.replace(
        params=apply_mask(state.params, keep),
        opt_state=optax.tree_utils.tree_map_params(
            tx, lambda v, m: jnp.where(m, v, jnp.zeros_like(v)), state.opt_state, keep
        ),
    )


def _mask_update(updater, tx, loss_and_logits):
    """``update(state, x, y)``: the updater's new mask in ``state.dst``; weights and
    moments dropped or grown by it set to 0 (kept through the change: untouched).

    The gradient the updater sees (``updater.uses_grads``) is computed here, on the
    step's batch at the weights after the step: only on update steps. (Keeping each
    step's gradient alive for the branch instead cost ~5 % of every step on CPU.)
    """

    def update(state: TrainState, x, y) -> TrainState:
        grads = None
        if updater.uses_grads:
            grad_fn = jax.grad(lambda p: loss_and_logits(p, state.model_state, x, y, True)[0])
            grads = grad_fn(state.params)
        old = state.dst.mask
        new, inner = updater.update(state.params, old, grads, state.step, state.dst.inner)
        state = _zero_outside(state, jax.tree.map(jnp.logical_and, old, new), tx)
        return state.replace(dst=state.dst._replace(mask=new, inner=inner))

    return update


def _train_chunk_fn(apply_fn, c: TrainConfig, tx, lr_fn, *, chunk, num_train, constrain, pin,
                    updater=None):
    """``train_chunk(state, mask, data_key, orders, x, y, hold_lr, n_active, first)``:
    the first ``n_active`` of ``chunk`` masked steps from step ``first`` in one
    ``lax.scan`` (unjitted). With an ``updater`` the mask is ``state.dst.mask`` (the
    ``mask`` argument is ``None``) and changes after each step ``s`` (counted from 1)
    with ``updater.fires(s)``; ``first`` is unbatched under ``vmap``, so that test
    stays a real branch, computed only on update steps."""

    def loss_and_logits(params, model_state, x, y, train):
        logits, model_state = apply_fn(params, model_state, x, train)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, model_state

    def one_step(state: TrainState, mask, x, y, hold_lr):
        # Pruned weights and moments are exactly 0 (_zero_outside at the chunk start
        # and at each mask change) and their gradients are masked here, so every
        # optimizer of TrainConfig keeps them at exactly 0: Adam's mu, nu and update,
        # SGD's trace and the coupled or decoupled decay of a zero weight are all 0.
        # Masking once per chunk instead of every step costs ~2 % instead of ~17 %
        # (BENCHMARKS.md).
        grad_fn = jax.value_and_grad(loss_and_logits, has_aux=True)
        (loss, model_state), grads = grad_fn(state.params, state.model_state, x, y, True)
        direction, opt_state = tx.update(apply_mask(grads, mask), state.opt_state, state.params)
        lr = lr_fn(jnp.where(hold_lr >= 0, hold_lr, state.step))
        params = jax.tree.map(
            lambda p, d: (p - lr * d).astype(p.dtype), state.params, direction
        )
        state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state)
        return state, loss

    update_mask = _mask_update(updater, tx, loss_and_logits) if updater is not None else None

    def train_chunk(state, mask, data_key, orders, x, y, hold_lr, n_active, first):
        state = _zero_outside(state, mask if updater is None else state.dst.mask, tx)
        idx = _epoch_orders(
            data_key, orders, state.step, chunk, n=num_train, b=c.batch_size,
            shuffle=c.shuffle,
        )

        def train(s, i, batch_idx):
            m = mask if updater is None else s.dst.mask
            xb, yb = constrain(x[batch_idx]), constrain(y[batch_idx])
            s, loss = one_step(s, m, xb, yb, hold_lr)
            if updater is not None:
                s = jax.lax.cond(updater.fires(first + i + 1),
                                 lambda s: update_mask(s, xb, yb), lambda s: s, s)
            return s, loss

        def body(carry, inp):
            i, batch_idx = inp
            st, total = carry
            st, loss = jax.lax.cond(
                i < n_active,
                lambda s: train(s, i, batch_idx),
                lambda s: (s, jnp.zeros((), jnp.float32)),
                st,
            )
            return (st, total + loss.astype(jnp.float32)), None

        (state, total), _ = jax.lax.scan(
            body, (state, jnp.zeros((), jnp.float32)), (jnp.arange(chunk), idx)
        )
        return pin(state), total / jnp.maximum(n_active, 1)

    return train_chunk


def _evaluate_fn(apply_fn, eval_batch_size: int):
    """``evaluate(params, model_state, mask, x, y) -> (mean loss, accuracy)`` of the
    masked network, in padded batches of ``eval_batch_size`` (unjitted)."""

    def evaluate(params, model_state, mask, x, y):
        n = x.shape[0]
        eb = min(eval_batch_size, n)
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

    return evaluate
