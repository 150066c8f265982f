"""Unit groups: score, select and expand whole neurons and channels. Re-exported by
:mod:`lotto_jax.structured` (import the names from there).

A unit's *members* are the slices that produce it (kernel slice, bias, normalisation
scale and offset), its *consumers* the next layers' input slices that read it
(:mod:`lotto_jax._topology`). A unit is kept while any of its kernel weights is kept.

References:
  Li et al. 2017, "Pruning Filters for Efficient ConvNets", arXiv:1608.08710.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from lotto_jax import masks, prune
from lotto_jax._topology import Topology, UnitGroup, check_slices, view
from lotto_jax._types import Mask, Scores

__all__ = ["by_fraction", "empty_groups", "expand", "to_density", "unit_scores", "units_of"]

NORMS: tuple[str, ...] = ("l1", "l2", "sum")
"""How :func:`unit_scores` reduces a unit's scores."""


def _flat(tree: Any) -> dict[str, Any]:
    return {masks.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _rows(x, s) -> jax.Array:
    """Leaf ``x`` as ``(units, rest)``: slice ``j`` of ``s`` is row ``j``."""
    v = jnp.moveaxis(view(jnp.asarray(x), s), s.axis, 0)
    return v.reshape(v.shape[0], -1)


def _is_weight(x) -> bool:
    """A kernel (dense or conv): the member slices that decide whether a unit lives."""
    return jnp.ndim(x) >= 2


def _checked_flat(tree: Any, topo: Topology, name: str) -> dict[str, Any]:
    flat = _flat(tree)
    for g in topo.units:
        try:
            check_slices(flat, g)
        except ValueError as e:
            raise ValueError(f"{name}: {str(e).removeprefix('params: ')}") from None
    return flat


def _same_structure(a: Any, b: Any, name: str) -> None:
    fa, fb = _flat(a), _flat(b)
    if jax.tree.structure(a) != jax.tree.structure(b):
        raise ValueError(
            f"{name}: tree structure differs from scores: "
            f"{sorted(set(fa) ^ set(fb))[:5] or 'same paths, other containers'}"
        )
    for path, x in fa.items():
        if jnp.shape(x) != jnp.shape(fb[path]):
            raise ValueError(
                f"{name}[{path!r}]: shape {tuple(jnp.shape(fb[path]))} != scores shape "
                f"{tuple(jnp.shape(x))}"
            )


def unit_scores(
    scores: Scores, params_or_mask: Any, topology: Topology, *, norm: str = "l2"
) -> dict[str, jax.Array]:
    """One score per unit: ``{group name: (size,) float32}``.

    ``norm="l1"`` / ``"l2"`` is the L1 / L2 norm of the unit's *kernel* slices
    (member leaves with ``ndim >= 2``; MNIST-1D's residual group has two): with
    ``scores.magnitude(params)`` (= ``|θ|``) that is Li et al. 2017's filter norm.
    Biases and normalisation parameters do not enter a norm (their scale differs
    from a kernel's). ``norm="sum"`` sums any score pytree (SNIP, GraSP, SynFlow)
    over *every* member slice: kernel, bias, normalisation scale and offset.
    Consumer slices (the next layer's inputs) never count.

    Args:
      scores: a pytree like the params (higher = more important).
      params_or_mask: a mask (boolean leaves): pruned entries count 0; or the
        params (any other dtype): used only to check the tree.
      topology: from :func:`lotto_jax._topology.topology` (or :func:`topology_for`).
      norm: one of :data:`NORMS`.

    Returns:
      ``{group name: (size,) float32}``.

    Raises:
      ValueError: an unknown ``norm``, trees that differ, or leaves that do not fit
        the topology (naming the path).

    Examples:
      >>> import jax.numpy as jnp
      >>> from lotto_jax import models
      >>> from lotto_jax._topology import topology
      >>> m = models.build("mlp", features=(2,), num_classes=1)
      >>> p = {"Dense_0": {"kernel": jnp.array([[3.0, 1.0], [4.0, 1.0]]),
      ...                  "bias": jnp.zeros(2)},
      ...      "output": {"kernel": jnp.ones((2, 1)), "bias": jnp.zeros(1)}}
      >>> unit_scores(p, p, topology(m, p))["Dense_0"].tolist()
      [5.0, 1.4142135381698608]
    """
    if norm not in NORMS:
        raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
    _same_structure(scores, params_or_mask, "params_or_mask")
    flat = _checked_flat(scores, topology, "scores")
    other = _flat(params_or_mask)
    is_mask = all(jnp.result_type(x) == jnp.bool_ for x in other.values())
    out = {}
    for g in topology.units:
        parts = []
        for s in g.members:
            x = flat[s.path]
            if norm != "sum" and not _is_weight(x):
                continue
            x = jnp.asarray(x, jnp.float32)
            if is_mask:
                x = jnp.where(other[s.path], x, jnp.zeros_like(x))
            parts.append(_rows(x, s))
        rows = jnp.concatenate(parts, axis=1)
        if norm == "l1":
            out[g.name] = jnp.sum(jnp.abs(rows), axis=1)
        elif norm == "l2":
            out[g.name] = jnp.sqrt(jnp.sum(jnp.square(rows), axis=1))
        else:
            out[g.name] = jnp.sum(rows, axis=1)
    return out


def units_of(mask: Mask, topology: Topology) -> dict[str, jax.Array]:
    """Which units ``mask`` keeps: ``{group: bool (size,)}``.

    A unit is kept while any of its kernel weights is kept (its bias or
    normalisation parameters alone do not keep it).

    Args:
      mask: a weight mask (boolean leaves, shaped like all params).
      topology: the model's topology.

    Returns:
      ``{group name: bool (size,)}``.

    Raises:
      ValueError: leaves that do not fit the topology, or non-boolean ones.
    """
    flat = _checked_flat(mask, topology, "mask")
    out = {}
    for g in topology.units:
        kept = []
        for s in g.members:
            x = flat[s.path]
            if jnp.result_type(x) != jnp.bool_:
                raise ValueError(f"mask[{s.path!r}]: expected a boolean leaf, got "
                                 f"{jnp.result_type(x)}")
            if _is_weight(x):
                kept.append(jnp.any(_rows(x, s), axis=1))
        out[g.name] = functools.reduce(jnp.logical_or, kept)
    return out


def _group(topo: Topology, name: str) -> UnitGroup:
    for g in topo.units:
        if g.name == name:
            return g
    raise ValueError(
        f"unit_mask: unknown unit group {name!r}; the groups are "
        f"{[g.name for g in topo.units]}"
    )


def expand(
    unit_mask: Mapping[str, Any], mask: Mask, topology: Topology, *, consumers: bool = True
) -> Mask:
    """A unit mask as a weight mask, AND-ed with ``mask``.

    Every member slice of a removed unit (kernel slice, bias, normalisation scale
    and offset) becomes ``False`` and, with ``consumers=True``, so do the next
    layers' input slices that read it (they would only ever read 0). Groups absent
    from ``unit_mask`` are left as they are.

    Args:
      unit_mask: ``{group name: bool (size,)}`` (``True`` = kept).
      mask: the weight mask (shaped like all params).
      topology: the model's topology.
      consumers: also clear the consumers' input slices.

    Returns:
      The new weight mask, a subset of ``mask``.

    Raises:
      ValueError: an unknown group or a unit vector of the wrong shape.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(mask)
    index = {masks.path_str(p): i for i, (p, _) in enumerate(leaves)}
    _checked_flat(mask, topology, "mask")
    out = [m for _, m in leaves]
    for name, units in unit_mask.items():
        g = _group(topology, name)
        if jnp.shape(units) != (g.size,):
            raise ValueError(f"unit_mask[{name!r}]: expected shape ({g.size},), got "
                             f"{tuple(jnp.shape(units))}")
        units = jnp.asarray(units, bool)
        for s in (*g.members, *(g.consumers if consumers else ())):
            i = index[s.path]
            v = view(out[i], s)
            shape = [1] * v.ndim
            shape[s.axis] = g.size
            out[i] = jnp.logical_and(v, units.reshape(shape)).reshape(jnp.shape(out[i]))
    return jax.tree_util.tree_unflatten(treedef, out)


def empty_groups(mask: Mask, topology: Topology) -> list[str]:
    """The unit groups in which a concrete ``mask`` keeps no unit (for callers that
    prune under ``jit``, where :func:`by_fraction` cannot raise)."""
    return [g for g, u in units_of(mask, topology).items() if not bool(jnp.any(u))]


def _refuse_emptied(new: Mapping[str, Any], kept: Mapping[str, Any], what: str) -> None:
    for g, u in new.items():
        if prune._is_concrete(u) and prune._is_concrete(kept[g]) \
                and bool(jnp.any(kept[g])) and not bool(jnp.any(u)):
            raise ValueError(
                f"{what}: pruning would remove every unit of group {g!r} "
                f"({int(jnp.sum(kept[g]))} kept); a layer needs at least one unit "
                "(prune fewer units, or use scope='layerwise')"
            )


def by_fraction(
    scores: Scores, mask: Mask, fraction: float, *, topology: Topology,
    scope: str = "layerwise", norm: str = "l2",
) -> Mask:
    """Removes ``fraction`` of the kept units with the lowest unit scores (an IMP step).

    ``round(fraction * kept units)`` (half up, exact) per group
    (``scope="layerwise"``) or over all groups (``"global"``); ties by position
    (the unit that comes first is removed first; globally, groups in sorted name
    order). Global compares the raw norms, unnormalised: under fan-in-scaled inits
    (weights ~ 1/sqrt(fan-in): PyTorch's default, Kaiming, LeCun) a unit's L2 norm
    has the same scale in every layer, its L1 norm grows with sqrt(fan-in) and a
    sum with fan-in; under Glorot (``MLP``/``lenet300``) L2 norms still grow with
    fan-in (a 40-input layer of ``mlp`` on MNIST-1D loses its units first). Prefer
    ``"layerwise"`` unless that bias is wanted.

    Args:
      scores: a pytree like the params (``scores.magnitude(params)`` for IMP).
      mask: the current weight mask.
      fraction: in [0, 1).
      topology: the model's topology.
      scope: ``"layerwise"`` or ``"global"``.
      norm: see :func:`unit_scores`.

    Returns:
      The new weight mask (:func:`expand` of the kept units, consumers included).

    Raises:
      ValueError: bad arguments, or (on concrete inputs) a group left without units.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from lotto_jax import masks, models
      >>> from lotto_jax._topology import topology
      >>> m = models.build("mlp", features=(4,), num_classes=1)
      >>> p = models.init(m, jax.random.key(0), (3,))["params"]
      >>> s = jax.tree.map(jnp.abs, p)
      >>> new = by_fraction(s, masks.init(p), 0.5, topology=topology(m, p))
      >>> new["Dense_0"]["kernel"].any(axis=0).sum(), new["Dense_0"]["bias"].sum()
      (Array(2, dtype=int32), Array(2, dtype=int32))
    """
    u = unit_scores(scores, mask, topology, norm=norm)
    kept = units_of(mask, topology)
    new = prune.by_fraction(u, kept, fraction, scope=scope, groups="leaf",
                            prunable=masks.all_leaves)
    _refuse_emptied(new, kept, "fraction")
    return expand(new, mask, topology)


def to_density(
    scores: Scores, mask: Mask, density: float, *, topology: Topology,
    scope: str = "layerwise", norm: str = "l2",
) -> Mask:
    """Keeps ``round(density * units)`` units per group (``"layerwise"``) or over all
    groups (``"global"``), the best-scoring first; removed units stay removed.

    Args:
      scores: a pytree like the params.
      mask: the current weight mask.
      density: the fraction of units kept, in (0, 1].
      topology: the model's topology.
      scope: ``"layerwise"`` or ``"global"`` (raw unit scores compared; see
        :func:`by_fraction`).
      norm: see :func:`unit_scores`.

    Returns:
      The new weight mask.

    Raises:
      ValueError: bad arguments, or (on concrete inputs) a group left without units.
    """
    u = unit_scores(scores, mask, topology, norm=norm)
    kept = units_of(mask, topology)
    new = prune.to_density(u, kept, density, scope=scope, groups="leaf",
                           prunable=masks.all_leaves)
    _refuse_emptied(new, kept, "density")
    return expand(new, mask, topology)
