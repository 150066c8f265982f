"""Sparse training with optax: pruned weights and their optimizer moments stay zero.

:func:`masked` wraps any optax transformation. Its ``update`` takes the current mask
as an extra keyword argument, ``tx.update(grads, state, params, mask=mask)``, so the
mask is ordinary traced data: a new mask never recompiles the step. (The mask is an
argument rather than part of the state so that one optimizer state serves every
round, and so that ``optax.chain`` forwards it as an extra argument.)

At each update, for every pruned weight:

* the gradient and the param fed to the inner transformation are 0 (so clipping,
  norms, weight decay and moments never see pruned coordinates);
* every param-shaped leaf of the incoming inner state (momentum, Adam's ``mu`` and
  ``nu``, ...) is reset to 0 with :func:`optax.tree_utils.tree_map_params`; a
  transformation that maps zero gradient, param and moments to zero moments (every
  optax optimizer without noise) therefore leaves them at exactly 0;
* the update is ``-param``, so ``optax.apply_updates`` leaves the weight at exactly
  0 even if it was non-zero before (e.g. the first step after a new mask).

:func:`make_step` builds the common jitted step ``(params, opt_state, mask, batch) ->
(params, opt_state, metrics)`` on top of it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lotto_jax._types import Mask, Params
from lotto_jax.masks import apply as apply_mask

__all__ = ["MaskedState", "ScaleState", "make_step", "masked", "scale_by_tree", "with_scale"]


class MaskedState(NamedTuple):
    """State of :func:`masked`: the wrapped transformation's state."""

    inner_state: optax.OptState


class ScaleState(NamedTuple):
    """State of :func:`scale_by_tree`: one multiplier per parameter."""

    scale: Params


def scale_by_tree() -> optax.GradientTransformation:
    """Multiplies every update by a per-parameter scale held in the state.

    The scale starts at 1 (each update times 1: the identity, though a compiled
    step that contains it may fuse differently, to within float rounding) and is
    replaced between steps with :func:`with_scale`: it is state, so it is
    traced data (no recompile), checkpointed and vmapped with the optimizer. WORM
    (:mod:`lotto_jax.runs.earlybird`) damps the gradients of masked-out weights this
    way; chain it before the optimizer to scale gradients.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_tree()
      >>> st = with_scale(tx.init({"w": jnp.ones(2)}), {"w": jnp.array([1.0, 0.5])})
      >>> tx.update({"w": jnp.array([2.0, 2.0])}, st)[0]["w"].tolist()
      [2.0, 1.0]
    """

    def init(params):
        return ScaleState(jax.tree.map(lambda p: jnp.ones(jnp.shape(p), jnp.result_type(p)),
                                       params))

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s.astype(u.dtype), updates, state.scale), state

    return optax.GradientTransformation(init, update)


def with_scale(opt_state: optax.OptState, scale: Params) -> optax.OptState:
    """``opt_state`` with the scale of its (first) :class:`ScaleState` replaced.

    Raises:
      ValueError: ``opt_state`` holds no :class:`ScaleState`, or ``scale`` is not
        shaped like the one it replaces.
    """
    done = []

    def visit(node):
        if isinstance(node, ScaleState) and not done:
            if jax.tree.structure(scale) != jax.tree.structure(node.scale) or any(
                    jnp.shape(a) != jnp.shape(b) for a, b in
                    zip(jax.tree.leaves(scale), jax.tree.leaves(node.scale), strict=True)):
                raise ValueError("scale: expected a pytree shaped like the params")
            done.append(True)
            return ScaleState(jax.tree.map(lambda a, b: jnp.asarray(a, jnp.result_type(b)),
                                           scale, node.scale))
        if isinstance(node, tuple) and not hasattr(node, "_fields"):
            return tuple(visit(x) for x in node)
        if isinstance(node, tuple):  # another NamedTuple state: its fields
            return type(node)(*(visit(x) for x in node))
        return node

    out = visit(opt_state)
    if not done:
        raise ValueError("opt_state: holds no ScaleState (chain scale_by_tree() into the "
                         "optimizer: make_trainer(..., grad_transform=scale_by_tree()))")
    return out


def masked(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Makes ``inner`` respect a sparsity mask passed at each update.

    Args:
      inner: any optax transformation (``optax.adam(1e-3)``, a chain with weight
        decay, ...).

    Returns:
      A ``GradientTransformationExtraArgs`` whose ``update(updates, state, params,
      *, mask, **extra)`` requires ``params`` and ``mask`` (a boolean pytree like
      ``params``); other extra arguments are forwarded to ``inner``.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> params = {"w": jnp.array([1.0, 2.0])}
      >>> mask = {"w": jnp.array([True, False])}
      >>> tx = masked(optax.sgd(0.1, momentum=0.9))
      >>> state = tx.init(params)
      >>> grads = {"w": jnp.array([1.0, 1.0])}
      >>> updates, state = tx.update(grads, state, params, mask=mask)
      >>> optax.apply_updates(params, updates)["w"]
      Array([0.9, 0. ], dtype=float32)
    """
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: Params) -> MaskedState:
        return MaskedState(inner_state=inner.init(params))

    def update_fn(updates, state: MaskedState, params=None, *, mask: Mask = None, **extra):
        if params is None:
            raise ValueError("masked.update: params is required (pass params=...)")
        if mask is None:
            raise ValueError("masked.update: mask is required (pass mask=...)")
        # Zero the incoming moments (not the outgoing ones): XLA then updates the
        # state in place instead of copying it every step (BENCHMARKS.md).
        inner_state = optax.tree_utils.tree_map_params(
            inner,
            lambda leaf, m: jnp.where(m, leaf, jnp.zeros_like(leaf)),
            state.inner_state,
            mask,
        )
        new_updates, inner_state = inner.update(
            apply_mask(updates, mask), inner_state, apply_mask(params, mask), **extra
        )
        new_updates = jax.tree.map(
            lambda u, p, m: jnp.where(m, u, -p).astype(u.dtype), new_updates, params, mask
        )
        return new_updates, MaskedState(inner_state=inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def make_step(
    loss_fn: Callable[..., Any],
    tx: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    donate: bool = True,
    jit: bool = True,
) -> Callable:
    """A masked train step: ``step(params, opt_state, mask, batch)``.

    The forward pass sees ``masks.apply(params, mask)``, gradients flow only to
    kept weights, and ``tx`` is wrapped with :func:`masked` (pass the *unwrapped*
    transformation; initialise the state with ``masked(tx).init(params)`` or with
    the ``init`` attribute of the returned step). The mask is a traced argument, so
    calling the step with new masks never retraces.

    Args:
      loss_fn: ``loss_fn(params, batch) -> loss`` or, with ``has_aux=True``,
        ``(loss, aux)`` where ``aux`` is a dict of scalar metrics.
      tx: the optax transformation to wrap.
      has_aux: whether ``loss_fn`` returns auxiliary metrics.
      donate: donate the params and optimizer state buffers (10-25 % faster
        here); the caller must not reuse the arrays it passed in.
      jit: compile the step (``False`` returns the plain function, e.g. to be
        placed inside ``lax.scan`` or ``vmap`` by the caller).

    Returns:
      ``step(params, opt_state, mask, batch) -> (params, opt_state, metrics)``
      with ``metrics = {"loss": loss, **aux}``; ``step.init(params)`` builds the
      optimizer state and ``step.tx`` is the wrapped transformation.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> loss = lambda p, b: jnp.sum((p["w"] * b) ** 2)
      >>> step = make_step(loss, optax.sgd(0.1), donate=False)
      >>> params = {"w": jnp.array([[1.0, 1.0]])}
      >>> mask = {"w": jnp.array([[True, False]])}
      >>> params, state, metrics = step(params, step.init(params), mask, jnp.ones((1, 2)))
      >>> params["w"]
      Array([[0.8, 0. ]], dtype=float32)
    """
    wrapped = masked(tx)

    def step(params, opt_state, mask, batch):
        def masked_loss(p):
            return loss_fn(apply_mask(p, mask), batch)

        out, grads = jax.value_and_grad(masked_loss, has_aux=has_aux)(params)
        loss, aux = out if has_aux else (out, {})
        updates, opt_state = wrapped.update(grads, opt_state, params, mask=mask)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, **aux}

    fn = jax.jit(step, donate_argnums=(0, 1) if donate else ()) if jit else step
    # Attributes on a wrapper keep the jitted function itself untouched.
    wrapper = functools.wraps(step)(lambda *a, **k: fn(*a, **k))
    wrapper.init = wrapped.init
    wrapper.tx = wrapped
    wrapper.jitted = fn
    return wrapper
