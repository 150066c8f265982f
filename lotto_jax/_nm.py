"""N:M sparsity: at most N kept weights in every M consecutive inputs of a kernel.

A *group* is M consecutive weights along a kernel's input (reduction) axis, for one
output unit (and one spatial position of a conv window): a flax ``Dense`` kernel
``(in, out)`` is grouped along axis 0, a ``Conv`` kernel ``(h, w, in, out)`` (HWIO)
along axis 2. NVIDIA's sparse tensor cores run 2:4 (Mishra et al. 2021). Other
kernel ranks (a 1-D or 3-D conv, a ``DenseGeneral`` kernel) are refused with an
error naming the leaf: their input axis is ambiguous; leave them out with
``prunable``.

Masks (any ``prunable`` leaf; the others are returned as they are):

* :func:`nm_mask`: the ``n`` highest scores of each group among the kept weights.
* :func:`by_fraction`: IMP's step under the N:M scope (never below ``n`` per group);
  :func:`to_density`: one shot to ``n`` per group (density ``n / m``).
* :func:`is_nm`: whether every group keeps at most ``n``.

Training:

* :func:`nm_rigl`: a DST updater (:mod:`lotto_jax.dst`) that keeps exactly ``n``
  per group at every update, exchanging weights inside each group (RigL's drop by
  |θ| and grow by |gradient|, Evci et al. 2020, restricted to N:M groups);
  :func:`nm_exchange` is its pure mask move; :func:`nm_set` grows at random
  instead (SET, Mocanu et al. 2018) and :func:`nm_static` is a fixed random N:M
  mask (the baseline).
* SR-STE (Zhou et al. 2021) for a custom train step: :func:`srste_mask` (the mask of
  |θ| recomputed every step), :func:`srste_grad` (the gradient plus
  ``decay * (1 - m) * θ``), :func:`srste_value_and_grad` (both, with the
  straight-through gradient), and AST's linear ramp of the decay :func:`ast_decay`.

Ties are broken by position, the lower position kept first (and grown first):
among equal scores in a group, the weight with the lower input index wins. (This
is the order of a stable descending sort; :mod:`lotto_jax.prune` removes the first
position first.) Ranks are counted with an ``m x m`` comparison inside each group:
exact, no sort, O(m) work per weight. Everything runs under ``jit`` and ``vmap``;
``fraction`` and ``step`` may be traced, ``n`` and ``m`` are Python ints.

References:
  Zhou et al. 2021, "Learning N:M Fine-grained Structured Sparse Neural Networks
  From Scratch", arXiv:2102.04010 (SR-STE);
  Huang et al. 2024, "Pruning Large Language Models with Semi-Structural Adaptive
  Sparse Training", arXiv:2407.20584 (AST);
  Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks",
  arXiv:2104.08378 (2:4 on NVIDIA Ampere).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from lotto_jax import masks, prune
from lotto_jax._nm_groups import (
    _check_nm,
    _grouped,
    _items,
    exchange,
    input_axis,
    keep_best,
    keep_fraction,
    map_leaves,
)
from lotto_jax._nm_srste import ast_decay, srste_grad, srste_mask, srste_value_and_grad
from lotto_jax._types import Mask, Params, Prunable, Scores
from lotto_jax.dst import (
    Updater,
    _check_every,
    _check_step,
    _every,
    _init,
    cosine_fraction,
)

__all__ = [
    "ast_decay",
    "by_fraction",
    "input_axis",
    "is_nm",
    "nm_exchange",
    "nm_mask",
    "nm_rigl",
    "nm_set",
    "nm_static",
    "srste_grad",
    "srste_mask",
    "srste_value_and_grad",
    "to_density",
]


# ------------------------------------------------------------------ masks
def nm_mask(scores: Scores, mask: Mask, *, n: int, m: int,
            prunable: Prunable = masks.default_prunable) -> Mask:
    """Keeps, in every group of ``m`` consecutive inputs, the ``n`` highest-scoring
    weights among those ``mask`` keeps (all of them where it keeps fewer).

    Args:
      scores: a pytree like ``mask``, finite where the mask keeps a weight (higher
        = more important; ``|θ|`` for magnitude N:M).
      mask: the current mask; the result is a subset of it.
      n: kept per group, ``1 <= n <= m``.
      m: group size; it must divide every prunable kernel's input axis.
      prunable: which leaves are grouped (rank-2 or rank-4 kernels only).

    Returns:
      The N:M mask (non-prunable leaves unchanged).

    Raises:
      ValueError: ``n`` or ``m`` not ints with ``1 <= n <= m``; a prunable leaf of
        another rank or whose input axis ``m`` does not divide (naming the leaf
        and its size); the checks of :func:`lotto_jax.prune.by_fraction` (tree
        mismatch, non-finite kept scores).

    Examples:
      >>> import jax.numpy as jnp
      >>> s = {"w": jnp.array([[4.0], [1.0], [3.0], [2.0], [5.0], [5.0], [5.0], [0.0]])}
      >>> m = {"w": jnp.ones((8, 1), bool)}
      >>> nm_mask(s, m, n=2, m=4)["w"].ravel().tolist()
      [True, False, True, False, True, True, False, False]

    References:
      Zhou et al. 2021, arXiv:2102.04010; Mishra et al. 2021, arXiv:2104.08378.
    """
    return keep_best(scores, mask, n, m, prunable)


def to_density(scores: Scores, mask: Mask, density: float | None = None, *, n: int,
               m: int, prunable: Prunable = masks.default_prunable) -> Mask:
    """One-shot N:M pruning: :func:`nm_mask`. Each group keeps ``n`` of its ``m``
    weights, so a prunable leaf's density is exactly ``n / m`` from a dense mask
    (less where ``mask`` already keeps fewer than ``n`` of a group). The structure
    fixes the density: ``density`` (for callers that pass one, as pruning at
    initialisation does) must be ``None`` or ``n / m`` (to 1e-6).

    Args:
      scores, mask, n, m, prunable: as :func:`nm_mask`.
      density: ``None`` or ``n / m``.

    Returns:
      The N:M mask.

    Raises:
      ValueError: as :func:`nm_mask`, and a ``density`` other than ``n / m``.

    Examples:
      >>> import jax.numpy as jnp
      >>> s = {"w": jnp.arange(16.0).reshape(8, 2)}
      >>> int(to_density(s, {"w": jnp.ones((8, 2), bool)}, 0.25, n=1, m=4)["w"].sum())
      4
    """
    _check_nm(n, m)
    if density is not None and not math.isclose(float(density), n / m, abs_tol=1e-6):
        raise ValueError(f"density: {n}:{m} sparsity keeps exactly n/m = {n / m:g} of every "
                         f"prunable kernel; got {density!r} (pass {n / m:g} or none)")
    return nm_mask(scores, mask, n=n, m=m, prunable=prunable)


def by_fraction(scores: Scores, mask: Mask, fraction, *, n: int, m: int,
                prunable: Prunable = masks.default_prunable) -> Mask:
    """IMP's step under the N:M scope: in every group remove ``fraction`` of the
    kept weights, the lowest-scoring first, never going below ``n`` per group.

    A group keeping ``k > n`` weights removes ``r = max(1, round(fraction * k))``
    (rounded half up as :func:`lotto_jax.prune.by_fraction`; at least one while
    ``fraction > 0``, else small groups would stall: 0.2 of 2 rounds to 0), capped
    so that ``n`` remain; a group with ``k <= n`` is left alone. Repeated rounds
    therefore reach exactly ``n`` per group and stop there: at ``fraction=0.2``,
    2:4 takes 2 rounds (4 -> 3 -> 2), 1:4 takes 3 (4 -> 3 -> 2 -> 1) and 4:8 takes
    3 (8 -> 6 -> 5 -> 4); at 0.5, 2:4 takes 1.

    Args:
      scores: a pytree like ``mask``, finite where it keeps a weight.
      mask: the current mask; the result is a subset of it.
      fraction: share of each group's kept weights to remove, in [0, 1) (may be
        traced: its count is then computed in float32).
      n: the floor per group, ``1 <= n <= m``.
      m: group size.
      prunable: which leaves are grouped.

    Returns:
      The new mask.

    Raises:
      ValueError: as :func:`nm_mask`, and ``fraction`` outside [0, 1).

    Examples:
      >>> import jax.numpy as jnp
      >>> s = {"w": jnp.array([[4.0], [1.0], [3.0], [2.0]])}
      >>> first = by_fraction(s, {"w": jnp.ones((4, 1), bool)}, 0.2, n=2, m=4)
      >>> first["w"].ravel().tolist()
      [True, False, True, True]
      >>> by_fraction(s, first, 0.2, n=2, m=4)["w"].ravel().tolist()
      [True, False, True, False]

    References:
      Frankle & Carbin 2019, arXiv:1803.03635 (IMP); Zhou et al. 2021,
      arXiv:2102.04010 (N:M).
    """
    prune._check_fraction("fraction", fraction, low_open=False, high_open=True, low=0, high=1)
    items = _items(scores, mask, n, m, prunable)
    # removed[c]: the count a group keeping c removes (at least 1 while fraction > 0)
    if prune._is_concrete(fraction):
        removed = jnp.asarray([prune._count(fraction, c) for c in range(m + 1)], jnp.int32)
    else:
        removed = prune._round_half_up(fraction * jnp.arange(m + 1, dtype=jnp.float32))
    removed = jnp.where(jnp.asarray(fraction) > 0, jnp.maximum(removed, 1), removed)
    return map_leaves(lambda s, k, axis: keep_fraction(s, k, removed, axis=axis, m=m, n=n),
                      [scores], mask, items)


def is_nm(mask: Mask, *, n: int, m: int, prunable: Prunable = masks.default_prunable):
    """Whether every group of ``m`` consecutive inputs of every prunable leaf keeps
    at most ``n`` weights.

    Args:
      mask: a boolean mask pytree.
      n, m, prunable: as :func:`nm_mask`.

    Returns:
      A Python ``bool`` for a concrete mask (a traced bool under ``jit``).

    Raises:
      ValueError: as :func:`nm_mask` for ``n``, ``m`` and the leaves.

    Examples:
      >>> import jax.numpy as jnp
      >>> k = {"w": jnp.array([[True], [True], [False], [False]])}
      >>> is_nm(k, n=2, m=4), is_nm(k, n=1, m=4), is_nm(k, n=1, m=2)
      (True, False, False)
    """
    _check_nm(n, m)
    ok = jnp.array(True)
    for path, k in jax.tree_util.tree_flatten_with_path(mask)[0]:
        if prunable(path, k):
            if jnp.result_type(k) != jnp.bool_:
                raise ValueError(f"mask{jax.tree_util.keystr(path)}: mask leaves must be "
                                 f"boolean, got dtype {jnp.result_type(k)}")
            grouped = _grouped(k, input_axis(path, k, m), m)[0]
            ok &= jnp.all(jnp.sum(grouped, axis=-1) <= n)
    return bool(ok) if prune._is_concrete(ok) else ok


# -------------------------------------------------------------------- DST
def nm_exchange(params: Params, mask: Mask, grow_scores: Scores, fraction, *, n: int,
                m: int, prunable: Prunable = masks.default_prunable) -> Mask:
    """Drop-and-grow inside every N:M group: afterwards each group keeps exactly
    ``n`` weights.

    Per group keeping ``k`` weights: ``d = round(fraction * min(k, n))`` (half up)
    are dropped, the smallest ``|params|`` first (so a group keeping more than
    ``n`` also drops its excess), then ``n - (min(k, n) - d)`` are grown, the
    highest ``grow_scores`` first among the weights not kept after the drop (a
    just-dropped weight may come back, as in RigL's code). Ties: the lower
    position stays (and is grown) first.

    Args:
      params: the weights (their magnitudes rank the drop).
      mask: the current mask.
      grow_scores: a pytree like ``params`` (``|gradient|`` for RigL).
      fraction: share of each group's ``n`` exchanged, in [0, 1] (may be traced).
      n, m, prunable: as :func:`nm_mask`.

    Returns:
      The new mask, exactly ``n`` per group on every prunable leaf.

    Examples:
      >>> import jax.numpy as jnp
      >>> p = {"w": jnp.array([[0.5], [-0.1], [0.0], [2.0]])}
      >>> k = {"w": jnp.array([[True], [True], [False], [False]])}
      >>> g = {"w": jnp.array([[0.0], [0.0], [3.0], [1.0]])}
      >>> nm_exchange(p, k, g, 0.5, n=2, m=4)["w"].ravel().tolist()
      [True, False, True, False]
    """
    if prune._is_concrete(fraction):
        prune._check_fraction("fraction", fraction, low_open=False, high_open=False,
                              low=0, high=1)
    items = _items(params, mask, n, m, prunable)
    if jax.tree.structure(grow_scores) != jax.tree.structure(mask) or any(
            jnp.shape(g) != jnp.shape(k)
            for g, k in zip(jax.tree.leaves(grow_scores), jax.tree.leaves(mask), strict=True)):
        raise ValueError("grow_scores: expected a pytree with the params' leaves and shapes")

    frac = jnp.asarray(fraction, jnp.float32)
    return map_leaves(lambda p, g, k, axis: exchange(p, g, k, frac, axis=axis, m=m, n=n),
                      [params, grow_scores], mask, items)


def nm_rigl(n: int, m: int, *, end: int, drop_fraction: float = 0.3,
            update_every: int = 100, prunable: Prunable = masks.default_prunable) -> Updater:
    """RigL inside N:M groups: a :class:`lotto_jax.dst.Updater` whose mask keeps
    exactly ``n`` of every ``m`` consecutive inputs at every step.

    The initial mask is uniformly random N:M (``n`` of each group drawn with the
    updater's key). Every ``update_every`` steps up to ``end`` (the trainer checks
    ``end`` against the run), :func:`nm_exchange` swaps ``round(f * n)`` weights of
    each group, ``f = cosine_fraction(step, initial=drop_fraction, end=end)``:
    the smallest |θ| out, the largest |gradient| of the step's batch in (grown
    weights start at 0 with zero moments, see :mod:`lotto_jax.dst`). With ``n = 2``
    a group exchanges one weight while ``f >= 0.25`` and none after.

    This is the trainer's form of SR-STE's refresh: the trainer keeps pruned
    weights at exactly 0, so magnitudes alone (SR-STE) could never bring one back;
    the gradient does, as in RigL. SR-STE proper (dense weights, mask recomputed
    every step) is :func:`srste_value_and_grad`.

    Args:
      n, m: the N:M pattern; ``prunable`` leaves must be rank-2 or rank-4 kernels
        whose input axis ``m`` divides.
      end: last update step (>= 1).
      drop_fraction: initial share of each group's ``n`` exchanged, in [0, 1].
      update_every: steps between updates.
      prunable: which leaves are N:M.

    Returns:
      The updater (name ``"nm_rigl"``).

    Raises:
      ValueError: a bad ``n``, ``m``, ``end``, ``drop_fraction`` or
        ``update_every``; from ``init``, a leaf N:M cannot apply to.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> u = nm_rigl(2, 4, end=100, update_every=10)
      >>> k = u.initial_mask({"w": jnp.ones((8, 3))}, jax.random.key(0))
      >>> is_nm(k, n=2, m=4), int(k["w"].sum()), bool(u.fires(20))
      (True, 12, True)

    References:
      Evci et al. 2020, "Rigging the Lottery", arXiv:1911.11134; Zhou et al. 2021,
      arXiv:2102.04010.
    """
    return _nm_updater("nm_rigl", n, m, end=end, drop_fraction=drop_fraction,
                       update_every=update_every, prunable=prunable,
                       grow=lambda params, grads, key: jax.tree.map(jnp.abs, grads))


def nm_set(n: int, m: int, *, end: int, drop_fraction: float = 0.3,
           update_every: int = 100, prunable: Prunable = masks.default_prunable) -> Updater:
    """SET inside N:M groups: :func:`nm_rigl` with the grown weights drawn uniformly
    at random among each group's free positions (Mocanu et al. 2018) instead of by
    |gradient|; the same cosine-decayed fraction, exactly ``n`` per group.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> u = nm_set(1, 4, end=100, update_every=10, drop_fraction=1.0)
      >>> p = {"w": jnp.arange(8.0).reshape(8, 1)}
      >>> k = u.initial_mask(p, jax.random.key(0))
      >>> new, _ = u.update(p, k, None, 10, u.init(p, jax.random.key(0)))
      >>> is_nm(new, n=1, m=4), int(new["w"].sum())
      (True, 2)
    """
    def grow(params, grads, key):
        del grads
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(key, len(leaves))
        return jax.tree.unflatten(treedef, [jax.random.uniform(k, jnp.shape(x))
                                            for k, x in zip(keys, leaves, strict=True)])

    return _nm_updater("nm_set", n, m, end=end, drop_fraction=drop_fraction,
                       update_every=update_every, prunable=prunable, grow=grow)


def nm_static(n: int, m: int, *, prunable: Prunable = masks.default_prunable) -> Updater:
    """A random N:M mask (``n`` of every group of ``m`` drawn with the updater's key)
    that never changes: the N:M baseline of DST.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> u = nm_static(2, 4)
      >>> k = u.initial_mask({"w": jnp.ones((8, 3))}, jax.random.key(0))
      >>> is_nm(k, n=2, m=4), int(k["w"].sum()), bool(u.fires(100))
      (True, 12, False)
    """
    return _nm_updater("nm_static", n, m, end=None, drop_fraction=0.0, update_every=1,
                       prunable=prunable, grow=None)


def _nm_updater(name, n, m, *, end, drop_fraction, update_every, prunable, grow):
    """The N:M updaters: a random N:M start; with ``grow`` (``(params, grads, key)
    -> scores``), :func:`nm_exchange` every ``update_every`` steps up to ``end``."""
    _check_nm(n, m)
    if grow is not None:
        _check_step("end", end, low=1)
        _check_every(update_every)
        prune._check_fraction("drop_fraction", drop_fraction, low_open=False,
                              high_open=False, low=0, high=1)

    def init(params, key):
        _items(params, masks.init(params, prunable), n, m, prunable)
        return _init(params, key)

    def initial_mask(params, key):
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(key, len(leaves))
        noise = [jax.random.uniform(k, jnp.shape(x)) for k, x in zip(keys, leaves, strict=True)]
        return nm_mask(jax.tree.unflatten(treedef, noise), masks.init(params, prunable),
                       n=n, m=m, prunable=prunable)

    def update(params, mask, grads, step, state):
        if grow is None:
            return mask, state
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), step)
        f = cosine_fraction(step, initial=drop_fraction, end=end)
        new = nm_exchange(params, mask, grow(params, grads, key), f, n=n, m=m, prunable=prunable)
        return new, state._replace(count=state.count + 1)

    fires = (lambda step: jnp.zeros((), bool)) if grow is None else _every(update_every, 0, end)
    return Updater(init=init, update=update, fires=fires, initial_mask=initial_mask,
                   name=name, end=0 if grow is None else end,
                   uses_grads=name == "nm_rigl")
