"""BiP: pruning as bi-level optimisation (Zhang et al., NeurIPS 2022), as pure functions.

BiP finds a sparse network in one run, from a (pretrained) dense one:

* **Lower level** (the weights): ``θ*(m) = argmin_θ ℓ(m ⊙ θ) + (γ/2)‖θ‖²``,
  approximated by SGD steps on ``θ`` under the current mask (the weight decay of
  the weight optimizer is ``γ``'s role).
* **Upper level** (the mask): ``min_m ℓ(m ⊙ θ*(m))`` over masks keeping ``keep``
  of the weights. Its gradient is the *implicit gradient*
  ``dℓ/dm = ∇_m ℓ + (dθ*/dm)ᵀ ∇_θ ℓ``. The implicit-function theorem gives
  ``dθ*/dmᵀ = −∇²_mθ ℓ [∇²_θθ ℓ + γI]⁻¹``; with the paper's Hessian-free
  assumption ``∇²ℓ = 0`` and the bi-linearity of ``m ⊙ θ``
  (``∇²_mθ ℓ = diag(∇_z ℓ)`` at ``z = m ⊙ θ``) this is first order:

  ``dℓ/dm ≈ ∇_m ℓ(m ⊙ θ) − (1/γ) ∇_z ℓ(z) ⊙ ∇_θ ℓ(m ⊙ θ)``
  ``       = θ ⊙ g − (1/γ) m ⊙ g²``,  ``g = ∇_z ℓ(z)|_{z = m ⊙ θ}``

  (:func:`hypergradient`). For a binary mask ``m ⊙ g² = (∇_θ ℓ)²``, so one
  backward pass gives both terms.

As in the reference code, the mask is parametrised by real scores ``s`` (one per
prunable weight, initialised to the pretrained weights): ``m = top-k(|s|)``
*globally* over all prunable leaves (:func:`mask_of`), with a straight-through
gradient ``∂ℓ/∂|s| = ∂ℓ/∂m``. The trained tree is ``{"theta": params, "scores":
scores}`` (:func:`init`); :func:`apply` is an ``ApplyFn`` over it, so the project's
trainer, engine, checkpoints and replicate ``vmap`` run BiP unchanged.
:func:`alternating` is the optimiser: even steps are θ-steps (the weight optimiser
on ``∂ℓ/∂θ``; scores frozen), odd steps are m-steps (the score optimiser on the
implicit gradient; weights frozen), each on its own batch. The reference code's
iteration, a θ-step on one batch then an m-step on another at the updated θ, is two
of our steps.

Correction term (``correction=``): ``"paper"`` is the derivation above,
``−c · sign(s) ⊙ (∂ℓ/∂θ)²`` on the scores (``c`` = ``ig_scale`` = 1/γ; the sign is
the chain rule through ``|s|``). ``"code"`` is the reference implementation's
(``trainer/bilevel.py``): ``−c · (∂ℓ/∂s)² = −c · (θ ⊙ g)²`` added to the score
gradient (its product of the two score-gradient passes; ``c`` = its ``lr2``,
1e-4). With ``ig_scale = 0`` BiP is alternating HYDRA-style score and weight
training (the code's ``accelerate`` path).

References:
  Zhang, Yao, Ram, Zhao, Chen, Hong, Wang & Liu 2022, "Advancing Model Pruning via
  Bi-level Optimization", NeurIPS, arXiv:2210.04092; reference code OPTML-Group/BiP
  (``trainer/bilevel.py``, ``models/layers.py``, ``utils/model.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lotto_jax import masks, prune
from lotto_jax._supermask_ops import _straight_through
from lotto_jax._types import Mask, Params, Prunable
from lotto_jax.masks import default_prunable

__all__ = [
    "CORRECTIONS",
    "AlternatingState",
    "alternating",
    "apply",
    "correction",
    "export_weights",
    "hypergradient",
    "init",
    "mask_of",
]

CORRECTIONS: tuple[str, ...] = ("paper", "code")
"""The implicit-gradient correction terms (module docs)."""


def _check_keep(keep: Any) -> float:
    if isinstance(keep, bool) or not isinstance(keep, int | float) or not 0 < keep <= 1:
        raise ValueError(f"keep: expected a fraction in (0, 1], got {keep!r}")
    return float(keep)


def _check_joint(tree: Any, name: str) -> None:
    if not isinstance(tree, dict) or set(tree) != {"theta", "scores"}:
        keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        raise ValueError(f"{name}: expected a dict with keys 'theta' and 'scores' "
                         f"(bip.init), got {keys}")


def init(params: Params, *, prunable: Prunable = default_prunable) -> dict[str, Params]:
    """The trained tree of BiP from (pretrained) ``params``.

    ``{"theta": params, "scores": s}`` with ``s`` equal to ``params`` on prunable
    leaves (the reference's ``initialize_scaled_score``: the first mask is global
    magnitude pruning) and 0 elsewhere (unused).
    """
    scores = jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.array(p) if prunable(path, p) else jnp.zeros_like(p), params)
    return {"theta": params, "scores": scores}


def mask_of(scores: Params, keep: float, *, prunable: Prunable = default_prunable) -> Mask:
    """``top-k(|s|)`` over all prunable leaves together: ``round(keep * N)`` of the
    ``N`` prunable weights kept (:func:`lotto_jax.prune.to_density`, global scope;
    ties to the later position); other leaves all ``True``. Jittable.

    BiP ranks every score at every step; on a small network this ranking dominates
    the step (LeNet-300-100 on CPU: ~3x a masked training step,
    ``benchmarks/bip_cost.py``; a bisection over the scores' integer image, which
    wins per layer in :func:`lotto_jax.supermask.topk_mask`, was 2-3x slower here
    than ``to_density`` over the 266,200 scores at once).
    """
    keep = _check_keep(keep)
    magnitude = jax.tree.map(jnp.abs, scores)
    return prune.to_density(magnitude, masks.init(scores), keep, scope="global",
                            prunable=prunable)


def apply(
    apply_fn: Callable, keep: float, *, prunable: Prunable = default_prunable
) -> Callable:
    """BiP's ``ApplyFn`` over ``{"theta", "scores"}``: ``apply_fn`` on
    ``θ ⊙ top-k(|s|)`` (:func:`mask_of`), straight-through to ``|s|``.

    Returns ``apply(joint, model_state, x, train) -> (logits, model_state)``:
    the gradient reaches ``θ`` as ``m ⊙ ∂ℓ/∂z`` and ``s`` as
    ``sign(s) ⊙ θ ⊙ ∂ℓ/∂z``.
    """
    keep = _check_keep(keep)

    def bip_apply(joint, model_state, x, train):
        theta, scores = joint["theta"], joint["scores"]
        hard = mask_of(jax.lax.stop_gradient(scores), keep, prunable=prunable)

        def leaf(path, w, s, m):
            if not prunable(path, w):
                return w
            return w * _straight_through(jnp.abs(s), m.astype(w.dtype))

        weights = jax.tree_util.tree_map_with_path(leaf, theta, scores, hard)
        return apply_fn(weights, model_state, x, train)

    return bip_apply


def export_weights(joint: dict[str, Params], keep: float, *,
                   prunable: Prunable = default_prunable) -> tuple[Params, Mask]:
    """``(θ ⊙ m, m)``: the found sparse network as ordinary params and its mask."""
    _check_joint(joint, "joint")
    mask = mask_of(joint["scores"], keep, prunable=prunable)
    return masks.apply(joint["theta"], mask), mask


def hypergradient(loss_fn: Callable[[Params], jax.Array], mask: Params, theta: Params,
                  *, gamma: float) -> Params:
    """The paper's first-order implicit gradient ``dℓ(m ⊙ θ*(m))/dm`` at ``θ = θ*``.

    ``θ ⊙ g − (1/γ) g ⊙ (m ⊙ g)`` with ``g = ∇ loss_fn`` at ``z = m ⊙ θ``: exact
    when ``loss_fn`` is linear in ``z`` and ``θ`` solves the lower level
    ``min_θ loss_fn(m ⊙ θ) + (γ/2)‖θ‖²``; its error grows with the curvature
    of ``loss_fn`` relative to ``γ`` (the Hessian-free assumption). ``mask`` may be
    real-valued (the paper's relaxation).
    """
    if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not gamma > 0:
        raise ValueError(f"gamma: expected a number > 0, got {gamma!r}")
    g = jax.grad(loss_fn)(jax.tree.map(jnp.multiply, mask, theta))
    return jax.tree.map(lambda t, gi, m: t * gi - gi * (m * gi) / gamma, theta, g, mask)


def correction(grads: dict[str, Params], scores: Params, *, ig_scale: float,
               form: str = "paper", prunable: Prunable = default_prunable) -> Params:
    """The implicit-gradient term added to the score gradient (module docs).

    Args:
      grads: the gradient of the loss over ``{"theta", "scores"}`` through
        :func:`apply` (one backward pass).
      scores: the current scores.
      ig_scale: ``c`` (the paper's ``1/γ``, the code's ``lr2``), >= 0.
      form: ``"paper"`` (``−c sign(s) (∂ℓ/∂θ)²``) or ``"code"`` (``−c (∂ℓ/∂s)²``).
      prunable: the masked leaves; the others get 0.
    """
    if form not in CORRECTIONS:
        raise ValueError(f"form: expected one of {CORRECTIONS}, got {form!r}")
    if isinstance(ig_scale, bool) or not isinstance(ig_scale, int | float) \
            or not ig_scale >= 0:
        raise ValueError(f"ig_scale: expected a number >= 0, got {ig_scale!r}")

    def leaf(path, s, g_theta, g_s):
        if not prunable(path, s):
            return jnp.zeros_like(s)
        if form == "paper":
            sign = jnp.where(s >= 0, 1.0, -1.0).astype(s.dtype)
            return -ig_scale * sign * jnp.square(g_theta)
        return -ig_scale * jnp.square(g_s)

    return jax.tree_util.tree_map_with_path(leaf, scores, grads["theta"], grads["scores"])


class AlternatingState(NamedTuple):
    """The state of :func:`alternating`: the step count (its parity picks the
    level) and the two optimisers' states."""

    count: jax.Array
    weights: Any
    scores: Any


def alternating(
    weight_tx: optax.GradientTransformation,
    score_tx: optax.GradientTransformation,
    *,
    score_scale: float = 1.0,
    ig_scale: float = 1e-4,
    form: str = "paper",
    prunable: Prunable = default_prunable,
) -> optax.GradientTransformation:
    """BiP's alternating optimiser over ``{"theta", "scores"}`` (module docs).

    Step ``t`` (from 0, counted in the state): even ``t`` is a θ-step,
    ``weight_tx`` on ``∂ℓ/∂θ`` (scores' update 0, their optimiser state
    untouched); odd ``t`` an m-step, ``score_tx`` on ``∂ℓ/∂s`` plus
    :func:`correction`, times ``score_scale`` (weights' update 0, state untouched).
    The updates follow ``weight_tx`` / ``score_tx``'s own sign convention: with the
    project's trainer (which subtracts ``lr × update``) give it unsigned directions
    (``train.optimizer`` of an SGD config) and set ``score_scale`` to
    ``mask_lr / lr``.
    """
    for name, v in (("score_scale", score_scale),):
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
            raise ValueError(f"{name}: expected a number > 0, got {v!r}")
    correction({"theta": {}, "scores": {}}, {}, ig_scale=ig_scale, form=form)  # checks

    def init_fn(params):
        # Both states are shaped like the whole tree (optax.tree_utils.tree_map_params,
        # which the trainer uses, needs whole copies); the half a level does not
        # train stays exactly 0 (its gradient and params are passed as 0).
        if type(params).__name__ != "_ParamsPlaceholder":
            _check_joint(params, "params")
        return AlternatingState(jnp.zeros((), jnp.int32), weight_tx.init(params),
                                score_tx.init(params))

    def update_fn(grads, state, params=None):
        if params is None:
            raise ValueError("params: bip.alternating needs the params (its scores' signs)")
        _check_joint(grads, "grads")
        zeros = lambda t: jax.tree.map(jnp.zeros_like, t)  # noqa: E731
        theta, scores = params["theta"], params["scores"]

        def theta_step(_):
            d, w = weight_tx.update({"theta": grads["theta"], "scores": zeros(scores)},
                                    state.weights, {"theta": theta, "scores": zeros(scores)})
            return {"theta": d["theta"], "scores": zeros(scores)}, w, state.scores

        def mask_step(_):
            g = jax.tree.map(jnp.add, grads["scores"], correction(
                grads, scores, ig_scale=ig_scale, form=form, prunable=prunable))
            d, s = score_tx.update({"theta": zeros(theta), "scores": g}, state.scores,
                                   {"theta": zeros(theta), "scores": scores})
            d = jax.tree.map(lambda x: x * score_scale, d["scores"])
            return {"theta": zeros(theta), "scores": d}, state.weights, s

        updates, w, s = jax.lax.cond(state.count % 2 == 0, theta_step, mask_step, None)
        return updates, AlternatingState(state.count + 1, w, s)

    return optax.GradientTransformation(init_fn, update_fn)
