"""Supermask variants: Lottery Jackpots (pretrained weights, short restriction) and
signed supermasks ({-1, 0, +1} over frozen random weights).

Public through :mod:`lotto_jax.supermask`; the searches themselves are
:func:`lotto_jax.supermask.jackpot` and :func:`lotto_jax.supermask.signed`, whose
forward passes call the leaf functions here.

**Lottery Jackpots** (Zhang et al. 2021, code ``zyxxmu/lottery-jackpots``). The
start: one global ``|w|`` threshold over every prunable leaf but the classifier gives
the per-layer rates (:func:`jackpot_mask`: ``prune.to_density`` with
``scope="global"``, the classifier kept dense); scores are 1 where kept and 0.99
where pruned (:func:`jackpot_scores`). Forward ``W_eff = W ⊙ M`` with the *current*
binary mask ``M`` (carried in ``SearchState.mask``); backward straight-through,
``∂L/∂s = (∂L/∂W_eff) ⊙ W``. After each score step the mask changes only by the
*short restriction* (:func:`short_restriction`, the code's ``final_pop_up`` with its
rate ``ceil((1 − e/E)⁴) = 1``).

**Signed supermask** (Koster et al. 2022, "Signing the Supermask: Keep, Hide,
Invert"). ``W_eff = M ⊙ θ0`` with ``M ∈ {−1, 0, +1}``. The paper's rule for turning
real scores into three levels is not documented in the summary we work from; ours
(:func:`signed_leaf`): per layer keep the top-k of ``|s|`` (edge-popup's count and
tie rule) and give each kept entry ``sign(s)`` (``sign(0) := +1``); the gradient is
the identity straight-through estimator ``∂L/∂s = ∂L/∂M = (∂L/∂W_eff) ⊙ θ0``, so
``s`` moves along ``+1 → 0 → −1`` (keep, hide, invert) as the loss asks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import prune
from lotto_jax._supermask_ops import (
    _check_keep,
    _n_keep,
    _sign,
    _straight_through,
    _topk_bisect,
    _topk_flat,
)
from lotto_jax._types import Mask, Params, Prunable, Scores
from lotto_jax.masks import default_prunable, path_str, validate

__all__ = ["JACKPOT_SCORES", "jackpot_mask", "jackpot_scores", "short_restriction"]

JACKPOT_SCORES: tuple[float, float] = (1.0, 0.99)
"""The Jackpots code's initial scores: kept entries, pruned entries."""


def _dense_predicate(params: Params, dense: Sequence[str], prunable: Prunable):
    """``prunable`` minus the leaves whose path matches a ``dense`` pattern."""
    paths = [
        path_str(p) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
        if prunable(p, x)
    ]
    for pattern in dense:
        if not any(re.search(pattern, q) for q in paths):
            raise ValueError(
                f"dense: pattern {pattern!r} matches no prunable leaf; prunable leaves "
                f"are {paths}"
            )

    def pruned(path, leaf) -> bool:
        return prunable(path, leaf) and not any(
            re.search(p, path_str(path)) for p in dense
        )

    return pruned


def jackpot_mask(
    weights: Params,
    keep: float,
    *,
    dense: Sequence[str] = ("output",),
    prunable: Prunable = default_prunable,
) -> Mask:
    """The Jackpots start mask: global magnitude pruning, the classifier kept dense.

    ``round(keep · n)`` of the ``n`` prunable weights outside ``dense`` are kept, the
    largest ``|w|`` over all those leaves together (one global threshold; ties by
    position as :func:`lotto_jax.prune.to_density`), so each layer's rate follows
    from the one threshold, as the reference's ``generate_pr_cfg(layerwise="l1")``.
    Leaves matching ``dense`` (the classifier) and unprunable leaves are all-True.

    Args:
      weights: the (pretrained) weights.
      keep: fraction kept of the pruned leaves' weights, in (0, 1].
      dense: regular expressions (``re.search`` on ``path_str``) of prunable leaves
        kept whole; each must match one.
      prunable: which leaves are weights.

    Returns:
      The boolean mask.

    Raises:
      ValueError: ``keep`` outside (0, 1], a ``dense`` pattern matching nothing, or
        nothing left to prune.

    Examples:
      >>> import jax.numpy as jnp
      >>> w = {"a": {"kernel": jnp.array([[4.0, -1.0]])},
      ...      "b": {"kernel": jnp.array([[-3.0, 2.0]])},
      ...      "output": {"kernel": jnp.array([[0.0, 0.1]])}}
      >>> m = jackpot_mask(w, 0.5)
      >>> m["a"]["kernel"].tolist(), m["b"]["kernel"].tolist(), m["output"]["kernel"].tolist()
      ([[True, False]], [[True, False]], [[True, True]])

    References:
      Zhang et al. 2021, "Lottery Jackpots Exist in Pre-trained Models",
      arXiv:2104.08700.
    """
    keep = _check_keep("keep", keep)
    pruned = _dense_predicate(weights, tuple(dense), prunable)
    if not any(pruned(p, x) for p, x in jax.tree_util.tree_flatten_with_path(weights)[0]):
        raise ValueError("dense: every prunable leaf is kept dense; nothing to prune")
    magnitude = jax.tree.map(jnp.abs, weights)
    ones = jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), weights)
    return prune.to_density(magnitude, ones, keep, scope="global", prunable=pruned)


def jackpot_scores(mask: Mask, *, prunable: Prunable = default_prunable) -> Scores:
    """The Jackpots start scores: 1 where ``mask`` keeps, 0.99 where it prunes.

    Unprunable leaves get zeros (they carry no score). Float32.

    Examples:
      >>> import jax.numpy as jnp
      >>> jackpot_scores({"w": jnp.array([[True, False]])})["w"].tolist()
      [[1.0, 0.9900000095367432]]
    """
    kept, pruned = JACKPOT_SCORES

    def leaf(path, m):
        if not prunable(path, m):
            return jnp.zeros(jnp.shape(m), jnp.float32)
        return jnp.where(m, jnp.float32(kept), jnp.float32(pruned))

    return jax.tree_util.tree_map_with_path(leaf, mask)


def _restrict_leaf(s: jax.Array, m: jax.Array) -> jax.Array:
    """:func:`short_restriction` on one leaf."""
    flat_s, flat_m = jnp.ravel(s), jnp.ravel(m)
    n_kept = jnp.sum(flat_m.astype(jnp.int32))
    top = _topk_bisect(flat_s, n_kept)  # exactly n_kept, ties by position
    low = jnp.max(jnp.where(top, -jnp.inf, flat_s.astype(jnp.float32)))
    high = jnp.min(jnp.where(top, flat_s.astype(jnp.float32), jnp.inf))
    clean = high > low  # no tie across the k-th smallest score: |P| == |K|
    return jnp.where(clean, top, flat_m).reshape(jnp.shape(m))


def short_restriction(
    scores: Scores, mask: Mask, *, prunable: Prunable = default_prunable
) -> Mask:
    """The Jackpots swap after a score step: pruned ↔ kept, per layer, exact counts.

    Per prunable leaf with ``p`` pruned entries, let ``t`` be the ``p``-th smallest
    score. The reference code (``final_pop_up``) collects the pruned entries with a
    score ``> t`` (P) and the kept entries with a score ``≤ t`` (K) and, only when
    ``|P| = |K| > 0``, swaps them all. ``|P| = |K|`` holds exactly when ``t`` is not
    tied with the ``(p+1)``-th smallest score, and the swapped mask is then
    ``s > t``: the top ``n − p`` scores. So: the new mask is the top-``(n − p)`` of
    the scores if they are strictly separated from the rest, and ``mask`` unchanged
    otherwise. The kept count of every leaf never changes. Jittable; vmaps.

    Args:
      scores: real scores shaped like ``mask``.
      mask: the current boolean mask.
      prunable: which leaves swap (others are returned unchanged).

    Returns:
      The new mask.

    Raises:
      ValueError: trees that do not fit (naming the key path).

    Examples:
      >>> import jax.numpy as jnp
      >>> m = {"w": jnp.array([[True, True, False, False]])}
      >>> short_restriction({"w": jnp.array([[0.2, 1.0, 0.99, 0.1]])}, m)["w"].tolist()
      [[False, True, True, False]]
      >>> short_restriction({"w": jnp.array([[0.5, 1.0, 0.5, 0.1]])}, m)["w"].tolist()
      [[True, True, False, False]]

    References:
      Zhang et al. 2021, arXiv:2104.08700; code ``zyxxmu/lottery-jackpots``,
      ``utils/conv_type.py`` ``PretrainConv.final_pop_up``.
    """
    validate(scores, mask, name="mask")

    def leaf(path, s, m):
        return _restrict_leaf(s, m) if prunable(path, s) else m

    return jax.tree_util.tree_map_with_path(leaf, scores, mask)


def jackpot_leaf(w: jax.Array, s: jax.Array, m: jax.Array) -> jax.Array:
    """``W ⊙ M`` with the (already restricted) mask ``m``; ``∂/∂s`` straight through."""
    hard = jax.lax.stop_gradient(m.astype(s.dtype))
    return w * _straight_through(s, hard).astype(w.dtype)


def signed_hard(s: jax.Array, keep: float) -> jax.Array:
    """The ternary mask of one leaf: ``sign(s)`` on the top-k of ``|s|``, else 0."""
    kept = _topk_flat(jnp.ravel(jnp.abs(s)), _n_keep(keep, int(np.size(s))))
    return jnp.where(kept.reshape(jnp.shape(s)), _sign(s), jnp.zeros_like(s))


def signed_leaf(w: jax.Array, s: jax.Array, keep: float) -> jax.Array:
    """``M ⊙ θ0`` with ``M`` = :func:`signed_hard`; identity straight-through to ``s``."""
    hard = jax.lax.stop_gradient(signed_hard(s, keep))
    return w * _straight_through(s, hard).astype(w.dtype)
