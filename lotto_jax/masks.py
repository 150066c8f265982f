"""Mask pytrees: create, apply, measure, validate and combine.

A mask has exactly the tree structure of the params it masks, with boolean leaves of
the same shapes (``True`` = the weight is kept). Leaves that pruning may not touch
(biases, normalisation scales by default) get all-``True`` masks, never ``None``, so
every ``jax.tree.map`` over ``(params, mask)`` just works.

Which leaves are prunable is decided by a *predicate* on ``(key_path, leaf)``. The
same predicate is passed to every function that needs to tell prunable from
unprunable leaves (density, summary, shuffle, pruning); the leaf it sees may be a
param, a mask or a score leaf — they share path and shape. The default,
:func:`default_prunable`, selects leaves with ``ndim >= 2`` (dense kernels and conv
kernels).

Everything here is a pure function and works on any pytree: Flax linen
``variables['params']``, the ``State`` from ``flax.nnx.split``, plain dicts and lists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax._types import Groups, KeyPath, Mask, Params, PRNGKey, Prunable

__all__ = [
    "GROUPINGS",
    "LayerSummary",
    "Summary",
    "all_leaves",
    "apply",
    "default_prunable",
    "density",
    "group_leaves",
    "group_name",
    "init",
    "intersect",
    "is_prunable_tree",
    "overlap",
    "path_str",
    "shuffle",
    "summary",
    "union",
    "validate",
]


def path_str(path: KeyPath) -> str:
    """Renders a key path as ``'Dense_0/kernel'``: the names layer patterns match.

    Args:
      path: a key path from ``jax.tree_util.tree_flatten_with_path``.

    Returns:
      The path's keys joined by ``/`` (dict keys, attribute names, sequence indices).

    Examples:
      >>> import jax
      >>> [path_str(p) for p, _ in
      ...  jax.tree_util.tree_flatten_with_path({"a": {"kernel": 1}, "b": [2]})[0]]
      ['a/kernel', 'b/0']
    """
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:  # pragma: no cover - unknown key type
            parts.append(str(key))
    return "/".join(parts)


def default_prunable(path: KeyPath, leaf: Any) -> bool:
    """The default predicate: weight matrices and conv kernels (``ndim >= 2``).

    Biases, normalisation scales and other vectors are left unpruned, as in
    Frankle & Carbin 2019 and most of the pruning literature.
    """
    del path
    return jnp.ndim(leaf) >= 2


def all_leaves(path: KeyPath, leaf: Any) -> bool:
    """A predicate that makes every leaf prunable (biases too, as in MNIST-1D)."""
    del path, leaf
    return True


GROUPINGS: tuple[str, ...] = ("leaf", "layer")
"""The named pruning groupings (:func:`group_name`)."""


def group_name(path: KeyPath, groups: Groups = "leaf") -> str:
    """The pruning group of the leaf at ``path``.

    * ``"leaf"``: the leaf on its own, named by its path (``"Dense_0/kernel"``).
    * ``"layer"``: every leaf of one module pooled, named by the module's path: the
      path without its last key (``"Dense_0"`` for ``Dense_0/kernel`` and
      ``Dense_0/bias``); a trailing ``value`` key (nnx ``State``) is dropped
      first. A top-level leaf is its own group.
    * a function ``(key_path) -> str``: any grouping, e.g. by a regular expression.

    Args:
      path: a key path from ``jax.tree_util.tree_flatten_with_path``.
      groups: ``"leaf"``, ``"layer"`` or a function of the key path.

    Returns:
      The group's name; ``layer_fractions`` patterns and per-layer densities refer
      to these names.

    Raises:
      ValueError: an unknown grouping, or a function that does not return a
        non-empty ``str`` (naming the leaf).

    Examples:
      >>> import jax
      >>> paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(
      ...     {"Dense_0": {"bias": 0, "kernel": 0}})[0]]
      >>> [group_name(p) for p in paths], [group_name(p, "layer") for p in paths]
      (['Dense_0/bias', 'Dense_0/kernel'], ['Dense_0', 'Dense_0'])
    """
    if callable(groups):
        name = groups(path)
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"groups: the grouping function returned {name!r} for leaf "
                f"{path_str(path)!r}; expected a non-empty str (the group's name)"
            )
        return name
    if groups == "leaf":
        return path_str(path)
    if groups == "layer":
        keys = path_str(path).split("/")
        if len(keys) > 1 and keys[-1] == "value":  # nnx State: .../kernel/value
            keys = keys[:-1]
        return "/".join(keys[:-1]) if len(keys) > 1 else keys[0]
    raise ValueError(
        f"groups: expected 'leaf', 'layer' or a function (key_path) -> group name, "
        f"got {groups!r}"
    )


def group_leaves(
    tree: Mask, groups: Groups = "leaf", *, prunable: Prunable = default_prunable
) -> dict[str, list[str]]:
    """The pruning groups of a mask (or params) pytree: ``{group: [leaf paths]}``.

    Args:
      tree: a mask or params pytree.
      groups: ``"leaf"``, ``"layer"`` or a function (:func:`group_name`).
      prunable: which leaves are pruned; the others belong to no group.

    Returns:
      Group name -> the ``path_str`` of its prunable leaves, in tree-flatten order.

    Examples:
      >>> import jax.numpy as jnp
      >>> p = {"Dense_0": {"bias": jnp.zeros(3), "kernel": jnp.zeros((2, 3))}}
      >>> group_leaves(p, "layer", prunable=all_leaves)
      {'Dense_0': ['Dense_0/bias', 'Dense_0/kernel']}
    """
    out: dict[str, list[str]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if prunable(path, leaf):
            out.setdefault(group_name(path, groups), []).append(path_str(path))
    return out


def _flat(tree: Any) -> tuple[list[tuple[KeyPath, Any]], Any]:
    return jax.tree_util.tree_flatten_with_path(tree)


def is_prunable_tree(tree: Any, prunable: Prunable = default_prunable) -> Any:
    """Evaluates ``prunable`` on every leaf: a pytree of Python bools.

    Args:
      tree: params, a mask or scores.
      prunable: predicate on ``(key_path, leaf)``.

    Returns:
      A pytree with the structure of ``tree`` and ``bool`` leaves.
    """
    return jax.tree_util.tree_map_with_path(lambda p, x: bool(prunable(p, x)), tree)


def init(params: Params, prunable: Prunable = default_prunable) -> Mask:
    """Creates the all-kept mask for ``params``.

    Args:
      params: any pytree of arrays.
      prunable: predicate on ``(key_path, leaf)``; see :func:`default_prunable`.
        It does not change the values (all ``True``); it is checked here so that
        a predicate that selects nothing fails early.

    Returns:
      A pytree like ``params`` with all-``True`` boolean leaves, created with
      ``jnp.ones_like`` so that each leaf keeps its param's sharding.

    Raises:
      ValueError: if ``prunable`` selects no leaf at all.

    Examples:
      >>> import jax.numpy as jnp
      >>> params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
      >>> mask = init(params)
      >>> mask["dense"]["kernel"].dtype, bool(mask["dense"]["bias"].all())
      (dtype('bool'), True)
    """
    flags = jax.tree.leaves(is_prunable_tree(params, prunable))
    if not any(flags):
        raise ValueError(
            "params: the prunable predicate selects no leaf "
            f"(leaves: {[path_str(p) for p, _ in _flat(params)[0]]}); "
            "pass prunable= a predicate that selects the weights to prune"
        )
    return jax.tree.map(lambda p: jnp.ones_like(p, dtype=bool), params)


def validate(params: Params, mask: Mask, *, name: str = "mask") -> None:
    """Checks that ``mask`` fits ``params``: same tree, same shapes, boolean leaves.

    Args:
      params: the params pytree.
      mask: the candidate mask.
      name: how the mask is called in error messages.

    Raises:
      ValueError: naming the first offending key path and what was expected.

    Examples:
      >>> import jax.numpy as jnp
      >>> params = {"w": jnp.ones((3, 2))}
      >>> validate(params, {"w": jnp.ones((2, 3), bool)})
      Traceback (most recent call last):
      ...
      ValueError: mask['w']: shape (2, 3) != param shape (3, 2)
    """
    p_leaves, p_def = _flat(params)
    m_leaves, m_def = _flat(mask)
    if p_def != m_def:
        p_paths = {jax.tree_util.keystr(p) for p, _ in p_leaves}
        m_paths = {jax.tree_util.keystr(p) for p, _ in m_leaves}
        missing = sorted(p_paths - m_paths)
        extra = sorted(m_paths - p_paths)
        detail = []
        if missing:
            detail.append(f"missing leaves {missing[:5]}")
        if extra:
            detail.append(f"unexpected leaves {extra[:5]}")
        if not detail:
            detail.append(f"tree {m_def} != params tree {p_def}")
        raise ValueError(
            f"{name}: tree structure does not match params: " + "; ".join(detail)
        )
    for (path, p), (_, m) in zip(p_leaves, m_leaves, strict=True):
        where = f"{name}{jax.tree_util.keystr(path)}"
        if jnp.shape(m) != jnp.shape(p):
            raise ValueError(
                f"{where}: shape {tuple(jnp.shape(m))} != param shape "
                f"{tuple(jnp.shape(p))}"
            )
        if jnp.result_type(m) != jnp.bool_:
            raise ValueError(
                f"{where}: mask leaves must be boolean, got dtype {jnp.result_type(m)}"
            )


def apply(params: Params, mask: Mask) -> Params:
    """Zeroes the pruned entries of ``params``; dtypes and shapes are kept.

    Args:
      params: any pytree of arrays.
      mask: a boolean pytree like ``params``.

    Returns:
      A new pytree with ``where(mask, param, 0)`` in every leaf.

    Examples:
      >>> import jax.numpy as jnp
      >>> apply({"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([True, False])})
      {'w': Array([1., 0.], dtype=float32)}
    """
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, mask)


def _prunable_leaves(
    mask: Mask, prunable: Prunable | None
) -> list[tuple[KeyPath, jax.Array]]:
    leaves, _ = _flat(mask)
    if prunable is None:
        return leaves
    return [(p, m) for p, m in leaves if prunable(p, m)]


def density(
    mask: Mask, prunable_only: bool = True, *, prunable: Prunable = default_prunable
) -> float:
    """The fraction of weights kept.

    Args:
      mask: a boolean pytree.
      prunable_only: count only leaves selected by ``prunable`` (the usual
        "percent of weights remaining"); ``False`` counts every leaf.
      prunable: the predicate used when ``prunable_only`` is true.

    Returns:
      ``kept / total`` as a Python float.

    Raises:
      ValueError: if no leaf is counted.

    Examples:
      >>> import jax.numpy as jnp
      >>> mask = {"w": jnp.array([[True, False], [False, False]]),
      ...         "b": jnp.array([True, True])}
      >>> density(mask), density(mask, prunable_only=False)
      (0.25, 0.5)
    """
    leaves = _prunable_leaves(mask, prunable if prunable_only else None)
    total = sum(int(np.size(m)) for _, m in leaves)
    if total == 0:
        raise ValueError("mask: no prunable leaves to measure density over")
    kept = sum(int(jnp.sum(m)) for _, m in leaves)
    return kept / total


@dataclasses.dataclass(frozen=True)
class LayerSummary:
    """One row of :func:`summary`."""

    path: str
    shape: tuple[int, ...]
    kept: int
    total: int
    prunable: bool

    @property
    def density(self) -> float:
        return self.kept / self.total if self.total else 1.0


class Summary(tuple):
    """Rows of :class:`LayerSummary`; ``str()`` renders a table."""

    def __str__(self) -> str:
        header = ("layer", "shape", "kept", "total", "density")
        rows = [
            (
                r.path + ("" if r.prunable else " (not pruned)"),
                "x".join(map(str, r.shape)) or "scalar",
                str(r.kept),
                str(r.total),
                f"{100 * r.density:.2f}%",
            )
            for r in self
        ]
        kept = sum(r.kept for r in self if r.prunable)
        total = sum(r.total for r in self if r.prunable)
        rows.append(
            ("prunable total", "", str(kept), str(total), f"{100 * kept / max(total, 1):.2f}%")
        )
        widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
        line = lambda cells: "  ".join(  # noqa: E731
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        out = [line(header), line(["-" * w for w in widths])]
        out += [line(r) for r in rows[:-1]]
        out += [line(["-" * w for w in widths]), line(rows[-1])]
        return "\n".join(out)


def summary(mask: Mask, *, prunable: Prunable = default_prunable) -> Summary:
    """Per-layer kept counts and densities.

    Args:
      mask: a boolean pytree.
      prunable: marks which rows are prunable (others are reported as
        "not pruned" and left out of the total).

    Returns:
      A :class:`Summary` (a tuple of :class:`LayerSummary` rows with fields
      ``path, shape, kept, total, prunable`` and a ``density`` property);
      ``print(summary(mask))`` shows a table.

    Examples:
      >>> import jax.numpy as jnp
      >>> rows = summary({"w": jnp.array([[True, False]]), "b": jnp.ones(2, bool)})
      >>> [(r.path, r.kept, r.total, r.prunable) for r in rows]
      [('b', 2, 2, False), ('w', 1, 2, True)]
    """
    return Summary(
        LayerSummary(
            path=path_str(p),
            shape=tuple(np.shape(m)),
            kept=int(jnp.sum(m)),
            total=int(np.size(m)),
            prunable=bool(prunable(p, m)),
        )
        for p, m in _flat(mask)[0]
    )


def _check_same(masks: Sequence[Mask]) -> None:
    validate(masks[0], masks[0], name="masks[0]")
    for i, m in enumerate(masks[1:], start=1):
        validate(masks[0], m, name=f"masks[{i}]")


def intersect(*masks: Mask) -> Mask:
    """Keeps a weight only where every mask keeps it (logical and)."""
    if not masks:
        raise ValueError("intersect: needs at least one mask")
    _check_same(masks)
    return jax.tree.map(lambda *ms: jnp.logical_and.reduce(jnp.stack(ms)), *masks)


def union(*masks: Mask) -> Mask:
    """Keeps a weight where any mask keeps it (logical or)."""
    if not masks:
        raise ValueError("union: needs at least one mask")
    _check_same(masks)
    return jax.tree.map(lambda *ms: jnp.logical_or.reduce(jnp.stack(ms)), *masks)


def overlap(
    a: Mask,
    b: Mask,
    *,
    metric: str = "jaccard",
    prunable: Prunable = default_prunable,
) -> float:
    """How much two masks agree on the kept weights of prunable leaves.

    Args:
      a: a mask.
      b: a mask with the same structure.
      metric: ``"jaccard"`` = |a ∧ b| / |a ∨ b|; ``"shared"`` = |a ∧ b| / |a|,
        the fraction of ``a``'s kept weights that ``b`` keeps too.
      prunable: which leaves count.

    Returns:
      A float in [0, 1] (1.0 when both masks keep nothing, for jaccard).

    Examples:
      >>> import jax.numpy as jnp
      >>> a = {"w": jnp.array([[True, True, False, False]])}
      >>> b = {"w": jnp.array([[True, False, True, False]])}
      >>> overlap(a, b), overlap(a, b, metric="shared")
      (0.3333333333333333, 0.5)
    """
    validate(a, b, name="b")
    if metric not in ("jaccard", "shared"):
        raise ValueError(f"metric: expected 'jaccard' or 'shared', got {metric!r}")
    la = _prunable_leaves(a, prunable)
    lb = _prunable_leaves(b, prunable)
    both = sum(int(jnp.sum(x & y)) for (_, x), (_, y) in zip(la, lb, strict=True))
    if metric == "jaccard":
        either = sum(int(jnp.sum(x | y)) for (_, x), (_, y) in zip(la, lb, strict=True))
        return both / either if either else 1.0
    kept_a = sum(int(jnp.sum(x)) for _, x in la)
    return both / kept_a if kept_a else 1.0


def shuffle(
    mask: Mask,
    key: PRNGKey,
    *,
    prunable: Prunable = default_prunable,
    groups: Groups = "leaf",
) -> Mask:
    """Permutes each prunable group's mask at random, keeping its kept count.

    The layerwise-shuffle control of Frankle et al. 2021 (arXiv:2009.08576) and the
    "shuffle" IMP control. With ``groups="leaf"`` each leaf is permuted on its own;
    with pooled groups (``"layer"``: kernel and bias together) the group's leaves
    are permuted as one vector, so only the group's total count is kept.
    Unprunable leaves are returned unchanged. Works under ``jit`` and ``vmap``
    (over ``key``).

    Args:
      mask: a boolean pytree.
      key: a PRNG key; each group gets its own subkey.
      prunable: which leaves to shuffle.
      groups: ``"leaf"``, ``"layer"`` or a function (:func:`group_name`).

    Returns:
      A new mask with the same kept count in every group.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> m = {"w": jnp.arange(12).reshape(3, 4) < 5}
      >>> int(shuffle(m, jax.random.key(0))["w"].sum())
      5
    """
    leaves, treedef = _flat(mask)
    members: dict[str, list[int]] = {}
    for i, (path, m) in enumerate(leaves):
        if prunable(path, m):
            members.setdefault(group_name(path, groups), []).append(i)
    out = [m for _, m in leaves]
    keys = jax.random.split(key, len(leaves))
    for idx in members.values():
        flat = jnp.concatenate([jnp.ravel(out[i]) for i in idx])
        flat = jax.random.permutation(keys[idx[0]], flat)
        offset = 0
        for i in idx:
            size = int(np.size(out[i]))
            out[i] = flat[offset : offset + size].reshape(jnp.shape(out[i]))
            offset += size
    return jax.tree_util.tree_unflatten(treedef, out)
