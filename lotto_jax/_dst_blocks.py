"""The pure building blocks of dynamic sparse training (:mod:`lotto_jax.dst`).

Schedules (:func:`gmp_density`, :func:`cosine_fraction`), the per-group densities of
a target distribution (:func:`group_densities`), a random mask at those densities
(:func:`random_mask`) and the two mask moves every method is made of: magnitude
pruning to a count (:func:`prune_to`) and the drop-and-grow exchange
(:func:`drop_and_grow`). All run under ``jit`` and ``vmap`` with traced steps and
fractions; counts are exact per group and ties are broken by position.

Selections use :func:`lotto_jax.prune._top_mask`, an O(32 n) bitwise search for the
k-th largest key (XLA's CPU sort of 235k floats takes ~65 ms, this ~1.3 ms), so an
update every 100 steps stays cheap next to the training it interrupts.

Users import these names from :mod:`lotto_jax.dst`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import masks, prune
from lotto_jax._types import Groups, Mask, Params, PRNGKey, Prunable, Scores

__all__ = [
    "cosine_fraction",
    "drop_and_grow",
    "gmp_density",
    "group_densities",
    "group_sizes",
    "keep_counts",
    "prune_to",
    "random_mask",
]

DISTRIBUTIONS = ("uniform", "erk")


def _check_range(name: str, value, low: float, high: float, *, low_open: bool) -> None:
    v = float(value)
    ok = (v > low if low_open else v >= low) and v <= high and math.isfinite(v)
    if not ok:
        raise ValueError(f"{name}: expected a value in {'(' if low_open else '['}"
                         f"{low}, {high}], got {value!r}")


def gmp_density(step, *, initial: float, final: float, start: int, end: int):
    """The density of gradual magnitude pruning at ``step`` (Zhu & Gupta 2017).

    ``final + (initial - final) * (1 - p)^3`` with ``p = clip((step - start) /
    (end - start), 0, 1)``: ``initial`` up to ``start``, ``final`` from ``end`` on,
    the cubic in between (the continuous progress of the reference code, written
    in densities: the same curve as the paper's sparsities).

    Args:
      step: the step (int or traced array).
      initial: density at ``start`` (1.0: dense).
      final: density from ``end`` on.
      start: first step of pruning.
      end: last step of pruning (> ``start``).

    Returns:
      The density, float32 (a traced step gives a traced value).

    Examples:
      >>> round(float(gmp_density(50, initial=1.0, final=0.1, start=0, end=100)), 6)
      0.2125

    References:
      Zhu & Gupta 2017, "To prune, or not to prune", arXiv:1710.01878.
    """
    if not end > start:
        raise ValueError(f"end: expected a step after start={start}, got {end}")
    p = jnp.clip((jnp.asarray(step, jnp.float32) - start) / (end - start), 0.0, 1.0)
    return jnp.float32(final) + (jnp.float32(initial) - final) * (1.0 - p) ** 3


def cosine_fraction(step, *, initial: float, end: int, final: float = 0.0):
    """RigL's drop fraction at ``step``: ``final + (initial - final) * (1 + cos(pi *
    t / end)) / 2`` with ``t = min(step, end)``; ``initial`` at step 0, ``final``
    (0, RigL) from ``end`` on. GraNet's regeneration rate is the same curve with
    ``final=0.005`` and ``end`` the whole run.

    Examples:
      >>> [round(float(cosine_fraction(s, initial=0.3, end=100)), 4) for s in (0, 50, 100, 200)]
      [0.3, 0.15, 0.0, 0.0]

    References:
      Evci et al. 2020, "Rigging the Lottery", arXiv:1911.11134;
      Liu et al. 2021, "Sparse Training via Boosting Pruning Plasticity with
      Neuroregeneration", arXiv:2106.10404.
    """
    if not end >= 1:
        raise ValueError(f"end: expected a step >= 1, got {end}")
    t = jnp.minimum(jnp.asarray(step, jnp.float32), end)
    return jnp.float32(final) + (initial - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * t / end))


# ------------------------------------------------------------------ groups
def _members(tree, groups: Groups, prunable: Prunable) -> dict[str, list[int]]:
    """Group name -> indices of its prunable leaves (tree-flatten order)."""
    out: dict[str, list[int]] = {}
    for i, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(tree)[0]):
        if prunable(path, leaf):
            out.setdefault(masks.group_name(path, groups), []).append(i)
    if not out:
        raise ValueError("prunable: the predicate selects no leaf of the params")
    return out


def _concat(leaves, idx) -> jax.Array:
    return jnp.concatenate([jnp.ravel(leaves[i]) for i in idx])


def _scatter(flat: jax.Array, leaves: list, idx) -> None:
    """Writes the pieces of a group's flat array back into ``leaves`` (in place)."""
    offset = 0
    for i in idx:
        size = int(np.size(leaves[i]))
        leaves[i] = flat[offset : offset + size].reshape(jnp.shape(leaves[i]))
        offset += size


def group_densities(
    params: Params,
    density: float,
    *,
    distribution: str = "uniform",
    overrides: Mapping[str, float] | None = None,
    groups: Groups = "leaf",
    prunable: Prunable = masks.default_prunable,
) -> dict[str, float]:
    """Per-group densities: ``distribution`` at ``density``, then ``overrides``.

    ``overrides`` maps regular expressions (searched in group names, the first
    matching pattern wins) to densities, e.g. ``{"Dense_0": 1.0}`` keeps the first
    layer dense. As in RigL's ``custom_sparsity_map``, overridden groups are outside
    the budget: the others share ``density`` among themselves (ERK solved over
    them alone), so the overall density moves by the overrides.

    Raises:
      ValueError: a density outside (0, 1], an unknown distribution, a pattern
        that matches no group, or a group that would keep no weight (naming it).
    """
    _check_range("density", density, 0.0, 1.0, low_open=True)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution: expected one of {DISTRIBUTIONS}, got {distribution!r}")
    leaves = jax.tree.leaves(params)
    members = _members(params, groups, prunable)
    sizes = {g: sum(int(np.size(leaves[i])) for i in idx) for g, idx in members.items()}
    fixed: dict[str, float] = {}
    for pattern, value in (overrides or {}).items():
        _check_range(f"overrides[{pattern!r}]", value, 0.0, 1.0, low_open=True)
        hits = [g for g in members if re.search(pattern, g)]
        if not hits:
            raise ValueError(f"overrides: pattern {pattern!r} matches no pruning group; "
                             f"the groups are {list(members)}")
        for g in hits:
            fixed.setdefault(g, float(value))
    free = [g for g in members if g not in fixed]
    if distribution == "uniform" or not free:
        out = dict.fromkeys(free, float(density))
    else:
        shapes = {g: max((tuple(np.shape(leaves[i])) for i in members[g]), key=np.prod)
                  for g in free}
        out = prune.erk_densities(shapes, density, sizes={g: sizes[g] for g in free})
    out.update(fixed)
    out = {g: out[g] for g in members}
    for g, d in out.items():
        if prune._count(d, sizes[g]) < 1:
            raise ValueError(
                f"density: group {g!r} ({sizes[g]} weights) would keep no weight at "
                f"density {d:.4g}; raise the density or override the group"
            )
    return out


def _keep_counts(params, densities: Mapping[str, float], groups, prunable) -> dict[str, int]:
    leaves = jax.tree.leaves(params)
    members = _members(params, groups, prunable)
    return {g: prune._count(densities[g], sum(int(np.size(leaves[i])) for i in idx))
            for g, idx in members.items()}


def random_mask(
    params: Params,
    densities: Mapping[str, float],
    *,
    key: PRNGKey,
    groups: Groups = "leaf",
    prunable: Prunable = masks.default_prunable,
) -> Mask:
    """A uniformly random mask keeping exactly ``round(d_g * size_g)`` weights of
    each group ``g`` (``densities`` from :func:`group_densities`); other leaves
    all ``True``. The static masks of SET, RigL and the ``static`` baseline.
    """
    counts = _keep_counts(params, densities, groups, prunable)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    draws = [jax.random.normal(keys[i], jnp.shape(x)) for i, x in enumerate(leaves)]
    out = [jnp.ones(jnp.shape(x), bool) for x in leaves]
    for g, idx in _members(params, groups, prunable).items():
        flat = prune._top_mask(_concat(draws, idx), None, counts[g], prefer="first")
        _scatter(flat, out, idx)
    return jax.tree.unflatten(treedef, out)


# ------------------------------------------------------------ mask moves
def prune_to(
    params: Params,
    mask: Mask,
    n_keep: Mapping[str, jax.Array],
    *,
    groups: Groups = "leaf",
    prunable: Prunable = masks.default_prunable,
) -> Mask:
    """Keeps the ``n_keep[g]`` largest-|θ| kept weights of each group ``g`` (all of
    them if it keeps fewer); never revives a pruned weight. Ties: the weight first
    in flattened order is pruned first (as :mod:`lotto_jax.prune`)."""
    p_leaves = jax.tree.leaves(params)
    m_leaves, treedef = jax.tree.flatten(mask)
    out = list(m_leaves)
    for g, idx in _members(mask, groups, prunable).items():
        score = jnp.abs(_concat(p_leaves, idx).astype(jnp.float32))
        kept = _concat(m_leaves, idx)
        _scatter(prune._top_mask(score, kept, n_keep[g], prefer="last"), out, idx)
    return jax.tree.unflatten(treedef, out)


def drop_and_grow(
    params: Params,
    mask: Mask,
    grow_scores: Scores,
    fraction,
    *,
    groups: Groups = "leaf",
    prunable: Prunable = masks.default_prunable,
) -> Mask:
    """Exchanges ``round(fraction * kept)`` weights of each group: the smallest |θ|
    out, the highest ``grow_scores`` in.

    Per group: ``n = round(fraction * kept)`` (half up; exact for a Python
    ``fraction``, float32 for a traced one); drop the ``n`` kept weights with the
    smallest ``|params|``; grow the ``n`` weights with the highest ``grow_scores``
    among those not kept after the drop. The kept count never changes.

    A just-dropped weight may be grown back in the same exchange, as in RigL's and
    GraNet's code: its mask entry then never changed, so it keeps its value and
    optimizer moments. Ties are broken by position: among equal ``|θ|`` the weight
    first in flattened order (tree-flatten order of a group's leaves, row-major
    inside a leaf) is dropped first; among equal ``grow_scores`` it is grown first.
    Grown weights are the caller's to zero (the trainer sets them and their moments
    to 0, see :mod:`lotto_jax.dst`).

    Args:
      params: the weights (their magnitudes rank the drop).
      mask: the current mask.
      grow_scores: a pytree like ``params``: |gradient| (RigL, GraNet) or uniform
        noise (SET).
      fraction: the share of each group's kept weights exchanged, in [0, 1].
      groups: ``"leaf"``, ``"layer"`` or a function (:func:`lotto_jax.masks.group_name`).
      prunable: which leaves change; the others are returned as they are.

    Returns:
      The new mask.

    Examples:
      >>> import jax.numpy as jnp
      >>> p = {"w": jnp.array([[0.5, -0.1, 0.0, 2.0]])}
      >>> m = {"w": jnp.array([[True, True, False, True]])}
      >>> g = {"w": jnp.array([[0.0, 0.0, 3.0, 0.0]])}
      >>> drop_and_grow(p, m, g, 0.34)["w"].tolist()
      [[True, False, True, True]]

    References:
      Evci et al. 2020, "Rigging the Lottery", arXiv:1911.11134.
    """
    if not isinstance(fraction, jax.core.Tracer):
        _check_range("fraction", fraction, 0.0, 1.0, low_open=False)
    p_leaves = jax.tree.leaves(params)
    s_leaves = jax.tree.leaves(grow_scores)
    m_leaves, treedef = jax.tree.flatten(mask)
    if not len(p_leaves) == len(s_leaves) == len(m_leaves):
        raise ValueError("grow_scores: expected a pytree with the params' leaves")
    out = list(m_leaves)
    for idx in _members(mask, groups, prunable).values():
        kept = _concat(m_leaves, idx)
        n = prune._removed_count(fraction, jnp.sum(kept, dtype=jnp.int32))
        small = -jnp.abs(_concat(p_leaves, idx).astype(jnp.float32))
        drop = prune._top_mask(small, kept, n, prefer="first")
        stay = kept & ~drop
        grow = prune._top_mask(_concat(s_leaves, idx).astype(jnp.float32), ~stay, n,
                               prefer="first")
        _scatter(stay | grow, out, idx)
    return jax.tree.unflatten(treedef, out)


def keep_counts(params, densities, *, groups: Groups = "leaf",
                prunable: Prunable = masks.default_prunable) -> dict[str, int]:
    """``{group: round(d_g * size_g)}``: the kept count of each group at ``densities``."""
    return _keep_counts(params, densities, groups, prunable)


def group_sizes(params, *, groups: Groups = "leaf",
                prunable: Prunable = masks.default_prunable) -> dict[str, int]:
    """``{group: number of weights}`` of the prunable groups."""
    leaves = jax.tree.leaves(params)
    return {g: sum(int(np.size(leaves[i])) for i in idx)
            for g, idx in _members(params, groups, prunable).items()}
