"""SR-STE and AST's decay ramp, for a custom train step (:mod:`lotto_jax._nm`).

SR-STE (Zhou et al. 2021) trains dense weights: every step the N:M mask is
recomputed from ``|θ|`` (:func:`srste_mask`), the loss is taken at the masked
weights, and its gradient there goes straight through to the dense weights with a
decay ``λ_W (1 - m) ⊙ θ`` on the pruned ones (:func:`srste_grad`,
:func:`srste_value_and_grad`). AST (Huang et al. 2024) ramps ``λ_W`` up linearly
(:func:`ast_decay`). Users import these names from :mod:`lotto_jax._nm`.

References:
  Zhou et al. 2021, arXiv:2102.04010; Huang et al. 2024, arXiv:2407.20584.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from lotto_jax import masks, prune
from lotto_jax._nm_groups import keep_best
from lotto_jax._types import Mask, Params, Prunable
from lotto_jax.dst import _check_step

__all__ = ["ast_decay", "srste_grad", "srste_mask", "srste_value_and_grad"]


# ----------------------------------------------------------------- SR-STE
def srste_mask(params: Params, *, n: int, m: int,
               prunable: Prunable = masks.default_prunable) -> Mask:
    """SR-STE's forward mask: the ``n`` largest ``|θ|`` of every group of the dense
    weights, recomputed at every step (:func:`nm_mask` of ``|params|``).

    Args:
      params: the dense weights.
      n, m, prunable: as :func:`nm_mask`.

    Returns:
      The N:M mask (all ``True`` on leaves that are not prunable).

    Raises:
      ValueError: as :func:`nm_mask`.

    References:
      Zhou et al. 2021, arXiv:2102.04010.
    """
    return keep_best(jax.tree.map(jnp.abs, params), masks.init(params, prunable), n, m,
                     prunable)


def srste_grad(grads: Params, params: Params, mask: Mask, *, decay) -> Params:
    """SR-STE's gradient on the dense weights: ``grads + decay * (1 - mask) * params``.

    ``grads`` is the straight-through gradient (the loss's gradient at the masked
    weights, applied to the dense ones); the sparse-refined term pulls the pruned
    weights towards 0 so the mask settles. On kept weights the result is
    ``grads`` exactly.

    Args:
      grads: the gradient pytree.
      params: the dense weights.
      mask: the step's mask (:func:`srste_mask`).
      decay: λ_W >= 0 (the paper: 2e-4; :func:`ast_decay` ramps it); may be traced.

    Returns:
      The refined gradient, dtypes of ``grads``.

    Raises:
      ValueError: trees that do not match, or a negative or non-finite ``decay``.

    Examples:
      >>> import jax.numpy as jnp
      >>> g = srste_grad({"w": jnp.array([1.0, 1.0])}, {"w": jnp.array([3.0, 5.0])},
      ...                {"w": jnp.array([True, False])}, decay=0.1)
      >>> g["w"].tolist()
      [1.0, 1.5]

    References:
      Zhou et al. 2021, arXiv:2102.04010, section 4 (λ_W = 2e-4).
    """
    masks.validate(params, mask)
    masks.validate(params, jax.tree.map(lambda g: jnp.zeros(jnp.shape(g), bool), grads),
                   name="grads")
    if prune._is_concrete(decay) and not (math.isfinite(float(decay)) and float(decay) >= 0):
        raise ValueError(f"decay: expected a finite value >= 0, got {decay!r}")
    return jax.tree.map(
        lambda g, p, k: (g + decay * jnp.where(k, 0, p)).astype(jnp.result_type(g)),
        grads, params, mask)


def srste_value_and_grad(loss_fn: Callable, params: Params, *args, n: int, m: int, decay,
                         prunable: Prunable = masks.default_prunable):
    """One SR-STE gradient: ``(loss, grads, mask)`` for a custom train step.

    ``mask = srste_mask(params)``; ``loss = loss_fn(params * mask, *args)``; the
    straight-through gradient ``∂loss/∂(params * mask)`` (the dense gradient at
    the sparse weights, pruned positions included) goes to the dense ``params``
    through :func:`srste_grad`. Step the dense weights with any optax optimizer;
    the sparse network is ``masks.apply(params, mask)``.

    Args:
      loss_fn: ``loss_fn(params, *args) -> scalar``.
      params: the dense weights.
      *args: passed to ``loss_fn`` (a batch).
      n, m, prunable: as :func:`nm_mask`.
      decay: λ_W of :func:`srste_grad`.

    Returns:
      ``(loss, grads, mask)``: the loss of the N:M network, the refined gradient for
      the dense weights and the step's mask.

    Raises:
      ValueError: as :func:`nm_mask` and :func:`srste_grad`.

    Examples:
      >>> import jax.numpy as jnp
      >>> p = {"w": jnp.array([[1.0], [-3.0], [0.5], [2.0]])}
      >>> loss, g, k = srste_value_and_grad(lambda q: q["w"].sum(), p, n=2, m=4,
      ...                                   decay=0.1)
      >>> float(loss), [round(x, 4) for x in g["w"].ravel().tolist()]
      (-1.0, [1.1, 1.0, 1.05, 1.0])
      >>> k["w"].ravel().tolist()
      [False, True, False, True]

    References:
      Zhou et al. 2021, arXiv:2102.04010.
    """
    mask = srste_mask(params, n=n, m=m, prunable=prunable)
    loss, grads = jax.value_and_grad(loss_fn)(masks.apply(params, mask), *args)
    return loss, srste_grad(grads, params, mask, decay=decay), mask


def ast_decay(step, *, final: float, increase_steps: int):
    """AST's annealed SR-STE decay: ``final * min(1, step / increase_steps)``.

    A linear ramp from 0 so that early training explores masks freely (AST's code:
    ``srste_decay`` 6e-5 over ``increase_step`` 10,000). Only the annealing is
    here; what AST adds beyond it is not: its AdamW variant (the decay term kept
    out of the first moment), Wanda scoring (needs activations), distillation from
    the dense teacher (a second model in the step) and SLoRB (extra low-rank
    parameters, a change to the model's architecture) -- they target LLM
    fine-tuning and do not fit the library's small classifiers yet.

    Args:
      step: the step (int or traced).
      final: the decay reached at ``increase_steps`` (>= 0).
      increase_steps: length of the ramp (an int >= 1).

    Returns:
      The decay, float32.

    Raises:
      ValueError: a negative or non-finite ``final``, or a bad ``increase_steps``.

    Examples:
      >>> [float(ast_decay(s, final=2.0, increase_steps=4)) for s in (0, 1, 4, 9)]
      [0.0, 0.5, 2.0, 2.0]

    References:
      Huang et al. 2024, arXiv:2407.20584, "Annealing SR-STE".
    """
    if not (math.isfinite(float(final)) and float(final) >= 0):
        raise ValueError(f"final: expected a finite value >= 0, got {final!r}")
    _check_step("increase_steps", increase_steps, low=1)
    t = jnp.asarray(step, jnp.float32)
    return jnp.float32(final) * jnp.minimum(1.0, t / increase_steps)
