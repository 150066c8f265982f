"""Whole residual blocks (layers): score, remove, prune. Re-exported by
:mod:`lotto_jax.structured` (import the names from there).

A block is a residual branch whose every leaf can be zeroed so that the block adds
exactly 0 (ResMLP's ``block_i``, ResNet's identity blocks): removing it leaves the
identity path. A block counts as kept while any of its weights is kept.

References:
  Jordao et al. 2023, "When Layers Play the Lottery, all Tickets Win at
  Initialization", arXiv:2301.10835.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import masks, prune
from lotto_jax._topology import Topology
from lotto_jax._types import Mask, Scores

__all__ = ["block_scores", "kept_blocks", "prune_blocks", "remove_blocks"]


def _flat(tree: Any) -> dict[str, Any]:
    return {masks.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _need_blocks(topo: Topology) -> None:
    if not topo.blocks:
        raise ValueError(
            "topology: this model has no removable residual blocks; layer pruning "
            "needs a residual model (resmlp, resnet20)"
        )


def block_scores(scores: Scores, topology: Topology) -> dict[str, jax.Array]:
    """The sum of each block's scores over all of its leaves.

    Args:
      scores: a pytree like the params (``|θ|``, or any saliency).
      topology: the model's topology (:func:`lotto_jax.structured.topology_for`).

    Returns:
      ``{block name: float32 scalar}``, in block order.

    Raises:
      ValueError: a model without removable blocks.
    """
    _need_blocks(topology)
    flat = _flat(scores)
    return {b.name: sum(jnp.sum(jnp.asarray(flat[p], jnp.float32)) for p in b.leaves)
            for b in topology.blocks}


def kept_blocks(mask: Mask, topology: Topology) -> dict[str, jax.Array]:
    """Whether each block still keeps a weight (a removed block keeps none).

    Args:
      mask: a weight mask.
      topology: the model's topology.

    Returns:
      ``{block name: bool scalar}``.

    Raises:
      ValueError: a model without removable blocks.
    """
    _need_blocks(topology)
    flat = _flat(mask)
    return {b.name: functools.reduce(jnp.logical_or, [jnp.any(flat[p]) for p in b.leaves])
            for b in topology.blocks}


def _drop_blocks(mask: Mask, topo: Topology, keep: Mapping[str, Any]) -> Mask:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(mask)
    index = {masks.path_str(p): i for i, (p, _) in enumerate(leaves)}
    out = [m for _, m in leaves]
    for b in topo.blocks:
        for p in b.leaves:
            out[index[p]] = jnp.logical_and(out[index[p]], keep[b.name])
    return jax.tree_util.tree_unflatten(treedef, out)


def remove_blocks(mask: Mask, topology: Topology, names: Sequence[str]) -> Mask:
    """Sets every leaf of each named block ``False`` (the block becomes the identity).

    Args:
      mask: a weight mask.
      topology: the model's topology.
      names: block names (``"block_1"``; ResNet's ``"block0_1"``).

    Returns:
      The new mask.

    Raises:
      ValueError: an unknown block name (naming it), or a model without blocks.

    Examples:
      >>> import jax
      >>> from lotto_jax import masks, models, structured
      >>> m = models.build("resmlp", blocks=3, width=4, hidden=2)
      >>> p = models.init(m, jax.random.key(0), (3,))["params"]
      >>> topo = structured.topology_for("layer", m, p)
      >>> new = remove_blocks(masks.init(p), topo, ["block_1"])
      >>> {k: bool(v) for k, v in kept_blocks(new, topo).items()}
      {'block_0': True, 'block_1': False, 'block_2': True}
    """
    _need_blocks(topology)
    names = (names,) if isinstance(names, str) else tuple(names)
    known = [b.name for b in topology.blocks]
    for n in names:
        if n not in known:
            raise ValueError(f"names: unknown block {n!r}; the blocks are {known}")
    return _drop_blocks(mask, topology, {b: b not in names for b in known})


def prune_blocks(
    scores: Scores, mask: Mask, topology: Topology, *, count: int | None = None,
    fraction: float | None = None, density: float | None = None,
) -> Mask:
    """Removes the lowest-scoring remaining blocks (:func:`block_scores`).

    Exactly one of: ``count`` blocks; ``fraction`` of the remaining ones
    (``round(fraction * remaining)``, half up: an IMP step); or down to ``density``
    of all blocks (``round(density * blocks)`` kept). Ties by position (the first
    block is removed first). A removed block never comes back; removing every
    block is allowed (the input feeds the output directly).

    Args:
      scores: a pytree like the params (``|θ|`` for IMP; a saliency at init).
      mask: the current weight mask.
      topology: the model's topology.
      count: blocks to remove (at most the remaining ones).
      fraction: fraction of the remaining blocks to remove, in [0, 1].
      density: fraction of all blocks to keep, in [0, 1].

    Returns:
      The new mask.

    Raises:
      ValueError: not exactly one target, a value out of range, a model without
        blocks, or (concrete inputs) non-finite scores of a remaining block.
    """
    given = [k for k, v in (("count", count), ("fraction", fraction),
                            ("density", density)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"count, fraction, density: pass exactly one, got {given or 'none'}")
    s = block_scores(scores, topology)
    names = list(s)
    vec = jnp.stack([s[n] for n in names])
    kept_map = kept_blocks(mask, topology)
    kept = jnp.stack([kept_map[n] for n in names])
    n_kept = jnp.sum(kept, dtype=jnp.int32)
    if prune._is_concrete(vec) and prune._is_concrete(kept):
        bad = [n for n, v, k in zip(names, np.asarray(vec), np.asarray(kept), strict=True)
               if k and not np.isfinite(v)]
        if bad:
            raise ValueError(f"scores: blocks {bad} have NaN or infinite scores")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count: expected an int >= 0, got {count!r}")
        if prune._is_concrete(n_kept) and count > int(n_kept):
            raise ValueError(f"count: {count} blocks to remove, but only "
                             f"{int(n_kept)} remain")
        n_keep = jnp.maximum(n_kept - count, 0)
    elif fraction is not None:
        prune._check_fraction("fraction", fraction, low_open=False, high_open=False,
                              low=0, high=1)
        n_keep = n_kept - prune._removed_count(fraction, n_kept)
    else:
        prune._check_fraction("density", density, low_open=False, high_open=False,
                              low=0, high=1)
        n_keep = jnp.minimum(n_kept, prune._count(density, len(names)))
    keep = prune._keep_top(vec, kept, n_keep)
    return _drop_blocks(mask, topology, {n: keep[i] for i, n in enumerate(names)})
