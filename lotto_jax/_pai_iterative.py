"""The iterative pruning loop behind every multi-round pruning-at-init method.

:func:`iterative_prune` re-scores under the current mask each round and prunes to a
density schedule (:func:`schedule_densities`); :func:`lotto_jax.pai.synflow` and
:func:`lotto_jax.pai.prune_at_init` run on it. Public through :mod:`lotto_jax.pai`.

References:
  Tanaka et al. 2020, arXiv:2006.05467 (SynFlow).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import prune
from lotto_jax._types import Mask, Prunable, Scores
from lotto_jax.masks import default_prunable

__all__ = ["SCHEDULES", "ScoreFn", "iterative_prune", "schedule_densities"]

SCHEDULES: tuple[str, ...] = ("exponential", "linear")
"""Density schedules of the iterative methods."""

ScoreFn = Callable[[Mask, jax.Array], Scores]
"""``score_fn(mask, round) -> scores``: scores under the current mask at round
``1 ... n`` (an int32 array, so a jitted score function never retraces)."""


# ----------------------------------------------------------------------------------
# checks


def _check_density(density) -> float:
    try:
        d = float(density)
    except (TypeError, ValueError):
        raise ValueError(f"density: expected a float in (0, 1], got {density!r}") from None
    if not (0 < d <= 1) or not math.isfinite(d):
        raise ValueError(f"density: expected a value in (0, 1], got {d}")
    return d


def _check_choice(name: str, value, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_rounds(rounds) -> int:
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"rounds: expected a positive int, got {rounds!r}")
    return int(rounds)


def schedule_densities(
    density: float, rounds: int, *, schedule: str = "exponential", start: float = 1.0
) -> list[float]:
    """The target density after each of ``rounds`` rounds, ending at ``density``.

    ``exponential``: round ``k`` (1-based) prunes to ``start * (density /
    start)^(k/n)``, which is SynFlow's ``ρ^(k/n)`` from the dense network
    (``start=1``). ``linear``: ``start - (start - density) k/n`` (Synaptic-Flow's
    ``"linear"``). Densities refer to all prunable weights.

    Args:
      density: the final density in (0, 1].
      rounds: ``n >= 1``.
      schedule: ``"exponential"`` or ``"linear"``.
      start: the density of the starting mask.

    Returns:
      ``n`` densities; the last is ``density``.

    Examples:
      >>> schedule_densities(0.01, 2)
      [0.1, 0.01]
      >>> schedule_densities(0.5, 2, schedule="linear")
      [0.75, 0.5]

    References:
      Tanaka et al. 2020, arXiv:2006.05467 (Algorithm 1).
    """
    density = _check_density(density)
    n = _check_rounds(rounds)
    _check_choice("schedule", schedule, SCHEDULES)
    out = []
    for k in range(1, n + 1):
        if k == n:
            out.append(density)
        elif schedule == "exponential":
            out.append(start * (density / start) ** (k / n))
        else:
            out.append(start - (start - density) * k / n)
    return out


def _prevent_collapse(new: Mask, old: Mask, scores: Scores, prunable: Prunable) -> Mask:
    """Keeps the best still-kept weight of every prunable layer that ``new`` empties."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(new)
    out = []
    for (path, m), o, s in zip(
        leaves, jax.tree.leaves(old), jax.tree.leaves(scores), strict=True
    ):
        if prunable(path, m) and not np.any(m) and np.any(o):
            ranked = np.where(np.ravel(o), np.ravel(np.asarray(s, np.float64)), -np.inf)
            keep = np.zeros(np.size(m), bool)
            keep[np.argmax(ranked)] = True
            m = jnp.asarray(keep.reshape(np.shape(m)))
        out.append(m)
    return jax.tree_util.tree_unflatten(treedef, out)


def _prunable_items(scores: Scores, mask: Mask, prunable: Prunable):
    """``[(path, score, mask)]`` of the prunable leaves, as numpy arrays."""
    return [
        (p, np.asarray(s), np.asarray(m))
        for (p, s), m in zip(
            jax.tree_util.tree_flatten_with_path(scores)[0], jax.tree.leaves(mask),
            strict=True,
        )
        if prunable(p, m)
    ]


def _check_finite(scores: Scores, mask: Mask, prunable: Prunable) -> None:
    for path, s, m in _prunable_items(scores, mask, prunable):
        bad = m & ~np.isfinite(s)
        if bad.any():
            raise ValueError(
                f"scores{jax.tree_util.keystr(path)}: {int(bad.sum())} kept weights have "
                "NaN or infinite scores; scores must be finite where the mask keeps a weight"
            )


def _density(mask: Mask, prunable: Prunable) -> float:
    items = [np.asarray(m) for p, m in jax.tree_util.tree_flatten_with_path(mask)[0]
             if prunable(p, m)]
    total = sum(m.size for m in items)
    return sum(int(m.sum()) for m in items) / total if total else 1.0


# One-shot pruning compiles to_density once (much cheaper than its eager ops); the
# iterative loop runs it eagerly, where every op compiles once for all rounds, instead
# of once per round's (static) density.
_to_density_jit = jax.jit(
    prune.to_density, static_argnames=("density", "scope", "distribution", "prunable")
)


# ----------------------------------------------------------------------------------
# the loop


def iterative_prune(
    score_fn: ScoreFn,
    mask: Mask,
    *,
    density: float,
    rounds: int = 1,
    schedule: str = "exponential",
    scope: str = "global",
    invert: bool = False,
    prevent_collapse: bool = False,
    prunable: Prunable = default_prunable,
    callback: Callable[[int, float, Mask], None] | None = None,
    prune_fn: Callable[[Scores, Mask, float], Mask] | None = None,
) -> Mask:
    """Prunes ``mask`` to ``density`` over ``rounds`` rounds, re-scoring each round.

    Round ``k = 1 ... n`` computes ``score_fn(mask, k)`` under the current mask and
    prunes with :func:`lotto_jax.prune.to_density` to ``schedule_densities(...)[k-1]``
    (exact counts: ``round(d * N)`` prunable weights kept globally, or per layer with
    ``scope="layerwise"``; pruned weights never come back). Pass a jitted
    ``score_fn``: the mask and round are arrays, so it compiles once.

    Args:
      score_fn: ``score_fn(mask, round) -> scores``.
      mask: the starting mask (its density is the schedule's start).
      density: final density of prunable weights, in (0, 1].
      rounds: number of rounds ``n``.
      schedule: ``"exponential"`` or ``"linear"``.
      scope: ``"global"`` or ``"layerwise"``.
      invert: keep the lowest scores instead (the inversion control).
      prevent_collapse: when a round would empty a prunable layer, keep that
        layer's highest-scoring weight (first of equal scores) among those kept
        before the round; the network then keeps up to one weight per such layer
        more than ``round(density * N)``.
      prunable: which leaves are pruned.
      callback: ``callback(round, target_density, mask)`` after each round.
      prune_fn: ``prune_fn(scores, mask, target) -> mask`` instead of
        :func:`lotto_jax.prune.to_density` (structured pruning: the target is then a
        unit or block density, :func:`lotto_jax.structured.prune_density`); the
        schedule still starts at ``mask``'s weight density (1 from a full mask).

    Returns:
      The final mask.

    Raises:
      ValueError: bad ``density``/``rounds``/``schedule``/``scope``, or non-finite
        scores on kept weights.
    """
    density = _check_density(density)
    rounds = _check_rounds(rounds)
    _check_choice("schedule", schedule, SCHEDULES)
    _check_choice("scope", scope, ("global", "layerwise"))
    start = _density(mask, prunable)
    targets = schedule_densities(density, rounds, schedule=schedule, start=max(start, density))
    for k, target in enumerate(targets, start=1):
        scores = score_fn(mask, jnp.asarray(k, jnp.int32))
        if invert:
            scores = jax.tree.map(jnp.negative, scores)
        if prune_fn is not None:
            _check_finite(scores, mask, prunable)
            new = prune_fn(scores, mask, target)
        elif rounds == 1:
            _check_finite(scores, mask, prunable)
            new = _to_density_jit(scores, mask, density=target, scope=scope,
                                  prunable=prunable)
        else:
            new = prune.to_density(scores, mask, target, scope=scope, prunable=prunable)
        if prevent_collapse:
            new = _prevent_collapse(new, mask, scores, prunable)
        mask = new
        if callback is not None:
            callback(k, target, mask)
    return mask
