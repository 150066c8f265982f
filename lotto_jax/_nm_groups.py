"""The groups of N:M sparsity (:mod:`lotto_jax._nm`): the checks, the ``(G, m)``
view of a kernel along its input axis and the per-group ranks.

Ranks are counted with an ``m x m`` comparison inside each group: exact, no sort,
O(m) work per weight; ties go to the lower position.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import masks, prune
from lotto_jax._types import KeyPath

__all__ = ["input_axis"]

_AXIS = {2: 0, 4: 2}  # kernel rank -> input axis (flax Dense (in, out), Conv HWIO)


# ------------------------------------------------------------------ checks
def _check_nm(n, m) -> None:
    for name, v in (("n", n), ("m", m)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    if n > m:
        raise ValueError(f"n: expected n <= m (at most m kept of every m), got n={n}, m={m}")


def input_axis(path: KeyPath, leaf, m: int) -> int:
    """The axis of ``leaf`` that N:M groups run along, checked for group size ``m``.

    Args:
      path: the leaf's key path (for the error message).
      leaf: a kernel: rank 2 (Dense ``(in, out)``: axis 0) or 4 (Conv HWIO: axis 2).
      m: the group size.

    Returns:
      The input axis.

    Raises:
      ValueError: another rank, or ``m`` not dividing the input axis (naming the
        leaf, its shape and the axis size).

    Examples:
      >>> import jax.numpy as jnp
      >>> input_axis((), jnp.zeros((3, 3, 8, 16)), 4)
      2
    """
    shape = tuple(jnp.shape(leaf))
    where = masks.path_str(path) or "<root>"
    if len(shape) not in _AXIS:
        raise ValueError(
            f"prunable: leaf {where!r} has shape {shape} (rank {len(shape)}); N:M groups "
            "need a Dense kernel (in, out) or a Conv kernel (h, w, in, out); leave the "
            "leaf out of the prunable predicate")
    axis = _AXIS[len(shape)]
    if shape[axis] % m:
        raise ValueError(
            f"m: {m} does not divide the input axis of leaf {where!r} (axis {axis}, size "
            f"{shape[axis]}, shape {shape}); choose m dividing it or leave the leaf out")
    return axis


def _items(scores, mask, n, m, prunable):
    """``[(path, score, mask, axis)]`` of the prunable leaves, all checked.

    The checks of :func:`lotto_jax.prune.by_fraction`, with the finite-score test
    done in numpy: under ``jit`` a closed-over concrete score is concrete but a
    ``jnp`` operation on it is traced (``bool`` of it would fail).
    """
    _check_nm(n, m)
    masks.validate(scores, mask)
    items = []
    for (p, s), k in zip(jax.tree_util.tree_flatten_with_path(scores)[0],
                         jax.tree.leaves(mask), strict=True):
        if not prunable(p, k):
            continue
        where = f"scores{jax.tree_util.keystr(p)}"
        if not jnp.issubdtype(jnp.result_type(s), jnp.number):
            raise ValueError(f"{where}: expected a numeric array, got dtype "
                             f"{jnp.result_type(s)}")
        if prune._is_concrete(s) and prune._is_concrete(k):
            bad = int(np.sum(np.asarray(k) & ~np.isfinite(np.asarray(s))))
            if bad:
                raise ValueError(f"{where}: {bad} kept weights have NaN or infinite "
                                 "scores; scores must be finite where the mask keeps a weight")
        items.append((p, s, k, input_axis(p, k, m)))
    if not items:
        raise ValueError("prunable: the predicate selects no leaf of the mask")
    return items


# --------------------------------------------------------------- groups
def _grouped(x, axis: int, m: int):
    """``(G, m)`` view: M consecutive inputs per row, for each output and position."""
    moved = jnp.moveaxis(x, axis, -1)
    return moved.reshape(-1, m), moved.shape


def _ungrouped(g, shape, axis: int):
    return jnp.moveaxis(g.reshape(shape), -1, axis)


def _rank(s, valid):
    """Per entry of ``(G, m)`` ``s``: how many valid entries of its row outrank it
    (a higher score, or an equal one at a lower position)."""
    pos = jnp.arange(s.shape[-1])
    earlier = (pos[None, :] < pos[:, None])[None]  # [., i, j]: j comes before i
    si, sj = s[:, :, None], s[:, None, :]
    beats = valid[:, None, :] & ((sj > si) | ((sj == si) & earlier))
    return jnp.sum(beats, axis=-1, dtype=jnp.int32)


def _top(s, valid, t):
    """The ``t`` (per row, ``(G, 1)`` or scalar) best valid entries of each row."""
    return valid & (_rank(s, valid) < t)


# Leaf kernels, jitted so that eager callers compile once per shape and pattern.
_STATIC = ("axis", "m", "n")


@functools.partial(jax.jit, static_argnames=_STATIC)
def keep_n(s, k, *, axis: int, m: int, n: int):
    """The mask leaf keeping the ``n`` best kept entries of every group."""
    g, shape = _grouped(s, axis, m)
    return _ungrouped(_top(g, _grouped(k, axis, m)[0], n), shape, axis)


@functools.partial(jax.jit, static_argnames=_STATIC)
def keep_fraction(s, k, removed, *, axis: int, m: int, n: int):
    """IMP's N:M step on one leaf: a group keeping ``c`` removes ``removed[c]``
    (an ``(m + 1,)`` table), never going below ``n``."""
    g, shape = _grouped(s, axis, m)
    kept = _grouped(k, axis, m)[0]
    c = jnp.sum(kept, axis=-1, keepdims=True, dtype=jnp.int32)
    keep = jnp.maximum(c - removed[c], jnp.minimum(c, n))
    return _ungrouped(_top(g, kept, keep), shape, axis)


@functools.partial(jax.jit, static_argnames=_STATIC)
def exchange(p, grow, k, fraction, *, axis: int, m: int, n: int):
    """:func:`lotto_jax._nm.nm_exchange` on one leaf (``fraction`` in float32)."""
    absp, shape = _grouped(jnp.abs(p).astype(jnp.float32), axis, m)
    kept = _grouped(k, axis, m)[0]
    base = jnp.minimum(jnp.sum(kept, axis=-1, keepdims=True, dtype=jnp.int32), n)
    d = prune._round_half_up(fraction * base)
    stay = _top(absp, kept, base - d)
    new = stay | _top(_grouped(grow, axis, m)[0], ~stay, n - (base - d))
    return _ungrouped(new, shape, axis)


def keep_best(scores, mask, n: int, m: int, prunable):
    """:func:`lotto_jax._nm.nm_mask` (checked)."""
    items = _items(scores, mask, n, m, prunable)
    return map_leaves(lambda s, k, axis: keep_n(s, k, axis=axis, m=m, n=n), [scores], mask,
                      items)


def map_leaves(fn, trees, mask, items):
    """The mask with ``fn(*leaves of trees, mask leaf, axis)`` on each item's leaf."""
    leaves, treedef = jax.tree.flatten(mask)
    index = prune._leaf_index(mask)
    flat = [jax.tree.leaves(t) for t in trees]
    for path, _, _, axis in items:
        i = index[path]
        leaves[i] = fn(*(f[i] for f in flat), leaves[i], axis)
    return jax.tree.unflatten(treedef, leaves)
