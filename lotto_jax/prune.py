"""From scores to masks: exact counts, stable ties, never reviving a pruned weight.

Two entry points:

* :func:`by_fraction` removes a fraction of the weights that are *still kept*
  (IMP semantics: ``0.2`` removes 20 % of the survivors each round).
* :func:`to_density` prunes in one shot to a target fraction of *all* prunable
  weights, with a global threshold or per-layer densities (uniform or ERK).

Counting rule (both functions): a count ``x`` is rounded half up,
``round(x) = floor(x + 0.5)``, computed exactly for the fraction as written in
decimal (0.35 of 90 weights is 31.5 -> 32, where float64 says 31.499999999999996 and
float32 goes wrong from ~10M weights); see :func:`_removed_count`. Ties between
equal scores are broken by position: the weight that comes first in the flattened
order (tree-flatten order of the leaves, row-major inside a leaf) is removed first.
Pruned weights sort below every kept weight whatever their score, so they never win
a place back.

Both functions are pure ``jnp`` code: they run eagerly, under ``jit`` and under
``vmap`` (e.g. over replicates). Finite-score checks happen only on concrete inputs.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax._types import Groups, KeyPath, Mask, Prunable, Scores
from lotto_jax.masks import default_prunable, group_name, path_str, validate

__all__ = ["by_fraction", "erk_densities", "layer_densities", "to_density"]


def _round_half_up(x):
    return jnp.floor(x + 0.5).astype(jnp.int32)


def _fixed_point(frac) -> int:
    return min(math.floor(Fraction(float(frac)) * 2**64) + 2**12, 2**64 - 1)


def _count(frac, n: int) -> int:
    """:func:`_removed_count` for a Python ``n``: the same integer formula."""
    return (_fixed_point(frac) * int(n) + 2**63) >> 64


def _removed_count(frac, n_kept: jax.Array) -> jax.Array:
    """``round_half_up(frac * n_kept)`` without float32 error, for a concrete ``frac``.

    float32 was off by one once ``frac * n_kept`` passed ~2^21 (0.2 of 11,259,422
    weights removed 2,251,885, not 2,251,884). Here ``F = floor(frac * 2^64) + 2^12``
    is computed in Python and ``(F * n_kept + 2^63) >> 64`` in 16-bit digits held in
    uint32. The ``+ 2^12`` (about 2^-52, four times the float64 representation error
    of ``frac``) makes the count that of ``frac`` as written in decimal: 0.3 of 25 is
    7.5 -> 8 and 0.35 of 90 is 31.5 -> 32, exactly, for fractions with up to 6
    decimal places. A traced ``frac`` falls back to float32.
    """
    if not _is_concrete(frac):
        return _round_half_up(frac * n_kept)
    big = _fixed_point(frac)
    n = jnp.asarray(n_kept).astype(jnp.uint32)
    cols = [jnp.zeros_like(n) for _ in range(6)]
    cols[3] = cols[3] + jnp.uint32(1 << 15)  # + 2^63 = 2^(16*3) * 2^15
    for i in range(4):
        for j, n_j in enumerate((n & 0xFFFF, n >> 16)):
            prod = jnp.uint32((big >> (16 * i)) & 0xFFFF) * n_j  # < 2^32
            cols[i + j] = cols[i + j] + (prod & 0xFFFF)
            cols[i + j + 1] = cols[i + j + 1] + (prod >> 16)
    for k in range(5):
        cols[k + 1] = cols[k + 1] + (cols[k] >> 16)
    return ((cols[4] & 0xFFFF) | (cols[5] << 16)).astype(jnp.int32)


def _sort_keys(s: jax.Array) -> jax.Array:
    """uint32 keys of float32 ``s`` ordered like ``jnp.sort`` orders ``s``: -0 ties
    with 0, every NaN ties with every other and sorts last."""
    s = jnp.where(s == 0, jnp.zeros_like(s), s)
    s = jnp.where(jnp.isnan(s), jnp.full_like(s, jnp.nan), s)
    bits = jax.lax.bitcast_convert_type(s, jnp.uint32)
    # negative floats flip every bit (more negative, smaller key); the others set the
    # sign bit (above every negative one)
    return jnp.where((bits >> 31) == 1, ~bits, bits | jnp.uint32(1 << 31))


@functools.partial(jax.jit, static_argnames="prefer")  # eager callers compile once per shape
def _top_mask(scores: jax.Array, valid: jax.Array | None, k, *, prefer: str) -> jax.Array:
    """The ``k`` largest ``valid`` entries of flat float32 ``scores`` (all valid ones
    if there are fewer), ties at the threshold broken by position: ``prefer="first"``
    keeps the lower positions, ``"last"`` the higher ones.

    An O(32 n) selection instead of a sort (XLA's CPU sort of 235k entries takes
    ~65 ms, this ~1.3 ms): the k-th largest key is built bit by bit, from the most
    significant, as the largest ``t`` with ``count(key >= t) >= k``, stopping once
    exactly ``k`` keys are ``>= t`` (after ~20 of the 32 bits on distinct scores).
    """
    # an invalid entry's key is 0, which no real score has (the smallest, -NaN, is
    # canonicalised above) and no candidate below reaches (each has a bit set)
    u = _sort_keys(scores) if valid is None else jnp.where(valid, _sort_keys(scores), 0)
    k = jnp.asarray(k, jnp.int32)
    # float32 sums of 0/1 are exact below 2^24 and ~1.4x faster than int32 on XLA:CPU
    acc = jnp.float32 if u.size < (1 << 24) else jnp.int32

    def count(t):
        return jnp.sum(u >= t, dtype=acc).astype(jnp.int32)

    def go_on(c):
        i, _, n_t = c
        return (i < 32) & (n_t != k)

    def step(c):
        i, t, n_t = c
        candidate = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        n_c = count(candidate)
        enough = n_c >= k
        return i + 1, jnp.where(enough, candidate, t), jnp.where(enough, n_c, n_t)

    # the largest t with count(key >= t) >= k, bit by bit from the top (t = 0 counts
    # the valid keys); it stops early once exactly k keys are >= t (t then lies
    # between the k-th and (k+1)-th key: no tie to split)
    _, t, _ = jax.lax.while_loop(go_on, step, (jnp.int32(0), jnp.uint32(0), count(1)))
    valid = u > 0
    above, ties = valid & (u > t), valid & (u == t)
    need = k - jnp.sum(above, dtype=jnp.int32)

    def first_need(ties):
        # a running count (an associative scan: ~2x faster than cumsum on XLA:CPU)
        seq = ties if prefer == "first" else ties[::-1]
        rank = jax.lax.associative_scan(jnp.add, seq.astype(jnp.int32))
        return ties & ((rank if prefer == "first" else rank[::-1]) <= need)

    # usually every tie at the threshold is taken (distinct scores): no running count
    taken = jax.lax.cond(jnp.sum(ties, dtype=jnp.int32) <= need, lambda x: x, first_need, ties)
    return above | taken


def _keep_top(scores: jax.Array, kept: jax.Array, n_keep) -> jax.Array:
    """Keeps the ``n_keep`` best kept entries of flat ``scores``."""
    if scores.dtype == jnp.float32:  # the same set as the sort below, without it
        return _top_mask(scores, kept, n_keep, prefer="last")
    n = scores.shape[0]
    # lexsort: last key is primary. Pruned (kept=0) first, then by score, then by
    # position (the sort is stable), so the lowest ranks are removed first.
    order = jnp.lexsort((scores, kept.astype(jnp.int32)))
    ranks = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return kept & (ranks >= n - n_keep)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_inputs(scores: Scores, mask: Mask, prunable: Prunable):
    """Validates trees and returns ``[(path, score, mask)]`` of prunable leaves."""
    validate(scores, mask, name="mask")
    s_leaves = jax.tree_util.tree_flatten_with_path(scores)[0]
    m_leaves = jax.tree.leaves(mask)
    items = [
        (p, s, m)
        for (p, s), m in zip(s_leaves, m_leaves, strict=True)
        if prunable(p, m)
    ]
    if not items:
        raise ValueError(
            "mask: the prunable predicate selects no leaf "
            f"(leaves: {[path_str(p) for p, _ in s_leaves]})"
        )
    for path, s, m in items:
        if not jnp.issubdtype(jnp.result_type(s), jnp.number):
            raise ValueError(
                f"scores{jax.tree_util.keystr(path)}: expected a numeric array, "
                f"got dtype {jnp.result_type(s)}"
            )
        if _is_concrete(s) and _is_concrete(m):
            # numpy, not jnp: under jit, jnp on concrete arrays would be staged
            bad = np.logical_and(np.asarray(m), ~np.isfinite(np.asarray(s)))
            if bool(np.any(bad)):
                raise ValueError(
                    f"scores{jax.tree_util.keystr(path)}: {int(np.sum(bad))} kept "
                    "weights have NaN or infinite scores; scores must be finite "
                    "where the mask keeps a weight"
                )
    return items


def _check_fraction(name: str, value, *, low_open: bool, high_open: bool, low, high):
    if not _is_concrete(value):
        return
    v = float(value)
    ok_low = v > low if low_open else v >= low
    ok_high = v < high if high_open else v <= high
    if not (ok_low and ok_high and math.isfinite(v)):
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{name}: expected a value in {lo}{low}, {high}{hi}, got {v}")


def _rebuild(mask: Mask, new: dict[int, jax.Array]) -> Mask:
    """Puts new flat masks (by leaf index) back into the mask tree."""
    leaves, treedef = jax.tree.flatten(mask)
    out = [new[i].reshape(jnp.shape(m)) if i in new else m for i, m in enumerate(leaves)]
    return jax.tree.unflatten(treedef, out)


def _leaf_index(mask: Mask) -> dict[KeyPath, int]:
    return {p: i for i, (p, _) in enumerate(jax.tree_util.tree_flatten_with_path(mask)[0])}


def _group_items(items, groups: Groups) -> dict[str, list[int]]:
    """Group name -> indices into ``items``, in order of first appearance."""
    out: dict[str, list[int]] = {}
    for j, (path, _, _) in enumerate(items):
        out.setdefault(group_name(path, groups), []).append(j)
    return out


def _prune_groups(items, groups, index) -> dict[int, jax.Array]:
    """Applies ``n_keep(kept_count)`` per group of leaves; returns new flat masks."""
    new = {}
    for members, n_keep_fn in groups:
        dtype = jnp.result_type(*[items[j][1] for j in members])
        scores = jnp.concatenate([jnp.ravel(items[j][1]).astype(dtype) for j in members])
        kept = jnp.concatenate([jnp.ravel(items[j][2]) for j in members])
        flat = _keep_top(scores, kept, n_keep_fn(jnp.sum(kept, dtype=jnp.int32)))
        offset = 0
        for j in members:
            size = int(np.size(items[j][2]))
            new[index[items[j][0]]] = flat[offset : offset + size]
            offset += size
    return new


def _match_patterns(names: Sequence[str], patterns: Mapping[str, float]) -> dict[str, float]:
    """Group name -> its fraction, for groups whose name matches a pattern."""
    assigned: dict[str, float] = {}
    for pattern, frac in patterns.items():
        _check_fraction(
            f"layer_fractions[{pattern!r}]", frac,
            low_open=False, high_open=True, low=0, high=1,
        )
        regex = re.compile(pattern)
        hits = [g for g in names if regex.search(g)]
        if not hits:
            raise ValueError(
                f"layer_fractions: pattern {pattern!r} matches no pruning group; "
                f"the groups are {list(names)}"
            )
        for g in hits:
            assigned.setdefault(g, float(frac))  # the first matching pattern wins
    return assigned


def by_fraction(
    scores: Scores,
    mask: Mask,
    fraction: float,
    *,
    scope: str = "global",
    groups: Groups = "leaf",
    layer_fractions: Mapping[str, float] | None = None,
    prunable: Prunable = default_prunable,
) -> Mask:
    """Removes ``fraction`` of the still-kept prunable weights with the lowest scores.

    One IMP round: with ``n`` kept weights in a group, ``round(fraction * n)`` of
    them are removed (rounded half up), the lowest-scoring first, ties by position.
    A group is all prunable leaves together (``scope="global"``) or, with
    ``scope="layerwise"``, each group of ``groups``: every leaf on its own
    (``"leaf"``) or the leaves of one module pooled (``"layer"``: a Dense layer's
    kernel and bias ranked together, as the MNIST-1D lottery notebook does). The
    new mask is always a subset of ``mask``.

    Args:
      scores: a pytree like ``mask`` with finite scores where the mask keeps a
        weight (higher = more important).
      mask: the current mask.
      fraction: fraction of the survivors to remove, in [0, 1).
      scope: ``"global"`` (one threshold over all prunable leaves) or
        ``"layerwise"`` (one per group).
      groups: ``"leaf"``, ``"layer"`` or a function ``(key_path) -> group name``
        (:func:`lotto_jax.masks.group_name`); with ``scope="global"`` it only names the groups
        that ``layer_fractions`` matches.
      layer_fractions: optional ``{pattern: fraction}``; groups whose name (e.g.
        ``"output/kernel"`` for leaf groups, ``"output"`` for layer groups)
        matches the regular expression ``pattern`` (``re.search``) are pruned on
        their own at that fraction, like Frankle & Carbin 2019's output layer at
        half the rate. The first matching pattern wins. Every pattern must match
        at least one group.
      prunable: which leaves may be pruned; the others are returned unchanged.

    Returns:
      The new mask.

    Raises:
      ValueError: tree/shape/dtype mismatch (naming the key path), ``fraction`` or a
        layer fraction outside [0, 1), an unknown ``scope`` or ``groups``, a
        pattern that matches nothing, non-finite scores on kept weights, or no
        prunable leaf.

    Examples:
      >>> import jax.numpy as jnp
      >>> scores = {"w": jnp.array([[0.5, 0.1, 0.9, 0.3]])}
      >>> mask = {"w": jnp.array([[True, True, True, False]])}
      >>> by_fraction(scores, mask, 0.5)["w"]   # 3 kept -> round(1.5) = 2 removed
      Array([[False, False,  True, False]], dtype=bool)

      Pooled per layer, a large bias outranks the kernel's weights:

      >>> from lotto_jax.masks import all_leaves
      >>> s = {"d": {"bias": jnp.array([5.0]), "kernel": jnp.array([[1.0], [2.0]])}}
      >>> m = {"d": {"bias": jnp.array([True]), "kernel": jnp.ones((2, 1), bool)}}
      >>> new = by_fraction(s, m, 0.5, scope="layerwise", groups="layer",
      ...                   prunable=all_leaves)
      >>> new["d"]["bias"].tolist(), new["d"]["kernel"].tolist()
      ([True], [[False], [False]])

    References:
      Frankle & Carbin 2019, "The Lottery Ticket Hypothesis", arXiv:1803.03635.
    """
    _check_fraction("fraction", fraction, low_open=False, high_open=True, low=0, high=1)
    _check_scope(scope)
    items = _check_inputs(scores, mask, prunable)
    index = _leaf_index(mask)
    by_group = _group_items(items, groups)
    per_group = _match_patterns(list(by_group), layer_fractions or {})

    def remove(frac):
        return lambda n_kept: n_kept - _removed_count(frac, n_kept)

    plan = [(by_group[g], remove(f)) for g, f in per_group.items()]
    rest = [g for g in by_group if g not in per_group]
    if rest and scope == "global":
        plan.append((sorted(j for g in rest for j in by_group[g]), remove(fraction)))
    elif rest:
        plan += [(by_group[g], remove(fraction)) for g in rest]
    return _rebuild(mask, _prune_groups(items, plan, index))


def _check_scope(scope: str) -> None:
    if scope not in ("global", "layerwise"):
        raise ValueError(f"scope: expected 'global' or 'layerwise', got {scope!r}")


def erk_densities(
    shapes: Mapping[str, tuple[int, ...]],
    density: float,
    *,
    power_scale: float = 1.0,
    sizes: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """Per-layer densities of the Erdős–Rényi-Kernel distribution (Evci et al. 2020).

    A layer of shape ``(d_1, ..., d_k)`` gets density ``ε · (Σ d_i / Π d_i)^power``
    with ``ε`` solved so the total kept count is ``density`` of all weights. A layer
    that would exceed density 1 is made dense and ``ε`` is solved again over the
    others, until no layer exceeds 1.

    Args:
      shapes: layer name -> shape (of the layer's kernel).
      density: overall target density in (0, 1].
      power_scale: exponent on the raw ERK ratio (1.0 = ERK).
      sizes: layer name -> number of weights, when a layer holds more than its
        kernel (a pooled group: kernel and bias); default ``prod(shape)``.

    Returns:
      Layer name -> density in (0, 1].

    Examples:
      >>> d = erk_densities({"a": (100, 100), "b": (100, 10)}, 0.5)
      >>> round(d["a"] * 10000 + d["b"] * 1000), d["b"]
      (5500, 1.0)

    References:
      Evci et al. 2020, "Rigging the Lottery", arXiv:1911.11134.
    """
    _check_fraction("density", density, low_open=True, high_open=False, low=0, high=1)
    sizes = {k: float(np.prod(s) if sizes is None else sizes[k]) for k, s in shapes.items()}
    raw = {k: (sum(s) / np.prod(s)) ** power_scale for k, s in shapes.items()}
    total = sum(sizes.values())
    dense: set[str] = set()
    while True:
        budget = density * total - sum(sizes[k] for k in dense)
        denom = sum(raw[k] * sizes[k] for k in sizes if k not in dense)
        eps = budget / denom if denom > 0 else 0.0
        over = [k for k in sizes if k not in dense and eps * raw[k] > 1.0]
        if not over:
            break
        dense.add(max(over, key=lambda k: raw[k]))
    return {k: 1.0 if k in dense else eps * raw[k] for k in sizes}


def layer_densities(
    mask: Mask,
    density: float,
    *,
    distribution: str = "uniform",
    groups: Groups = "leaf",
    prunable: Prunable = default_prunable,
) -> dict[str, float]:
    """Per-group target densities for :func:`to_density` with ``scope="layerwise"``.

    Args:
      mask: gives the prunable leaves and their shapes.
      density: the overall target density in (0, 1].
      distribution: ``"uniform"`` (every group at ``density``) or ``"erk"``. ERK
        rates a pooled group by the shape of its largest leaf (the kernel) and
        budgets all of its weights.
      groups: ``"leaf"``, ``"layer"`` or a function (:func:`lotto_jax.masks.group_name`).
      prunable: which leaves are pruned.

    Returns:
      ``{group name: density}`` for every group (with ``"leaf"``: every prunable
      leaf's ``path_str``).
    """
    shapes: dict[str, tuple[int, ...]] = {}
    sizes: dict[str, int] = {}
    for p, m in jax.tree_util.tree_flatten_with_path(mask)[0]:
        if prunable(p, m):
            g = group_name(p, groups)
            sizes[g] = sizes.get(g, 0) + int(np.size(m))
            if g not in shapes or np.size(m) > np.prod(shapes[g]):
                shapes[g] = tuple(np.shape(m))
    if distribution == "uniform":
        _check_fraction("density", density, low_open=True, high_open=False, low=0, high=1)
        return dict.fromkeys(shapes, float(density))
    if distribution == "erk":
        return erk_densities(shapes, density, sizes=sizes)
    raise ValueError(f"distribution: expected 'uniform' or 'erk', got {distribution!r}")


def to_density(
    scores: Scores,
    mask: Mask,
    density: float,
    *,
    scope: str = "global",
    distribution: str = "uniform",
    groups: Groups = "leaf",
    prunable: Prunable = default_prunable,
) -> Mask:
    """Prunes in one shot so that ``density`` of all prunable weights remain.

    The target counts refer to all prunable weights (pruned ones included):
    ``round(density * total)`` over all prunable leaves (``scope="global"``) or
    ``round(d_g * size_g)`` per group (``scope="layerwise"``, ``d_g`` from
    ``distribution``; groups from ``groups``, see :func:`by_fraction`).
    Already-pruned weights stay pruned, so a group that already keeps fewer
    weights than its target is left as it is.

    Args:
      scores: a pytree like ``mask``, finite where the mask keeps a weight.
      mask: the current mask (``masks.init(params)`` for pruning at initialisation).
      density: target fraction of prunable weights kept, in (0, 1].
      scope: ``"global"`` or ``"layerwise"``.
      distribution: per-group densities for ``scope="layerwise"``: ``"uniform"``
        or ``"erk"`` (Evci et al. 2020). ``"erk"`` with ``scope="global"`` is an
        error.
      groups: ``"leaf"``, ``"layer"`` or a function (:func:`lotto_jax.masks.group_name`); used by
        ``scope="layerwise"``.
      prunable: which leaves may be pruned.

    Returns:
      The new mask.

    Raises:
      ValueError: as :func:`by_fraction`, and for ``density`` outside (0, 1].

    Examples:
      >>> import jax.numpy as jnp
      >>> scores = {"a": jnp.array([[4.0, 3.0]]), "b": jnp.array([[2.0, 1.0]])}
      >>> mask = {"a": jnp.ones((1, 2), bool), "b": jnp.ones((1, 2), bool)}
      >>> g = to_density(scores, mask, 0.5)
      >>> l = to_density(scores, mask, 0.5, scope="layerwise")
      >>> g["b"].tolist(), l["b"].tolist()
      ([[False, False]], [[True, False]])
    """
    _check_fraction("density", density, low_open=True, high_open=False, low=0, high=1)
    _check_scope(scope)
    if scope == "global" and distribution != "uniform":
        raise ValueError(
            f"distribution={distribution!r} sets per-layer densities; "
            "use it with scope='layerwise'"
        )
    items = _check_inputs(scores, mask, prunable)
    index = _leaf_index(mask)

    def keep(target: int):
        return lambda n_kept: jnp.minimum(n_kept, target)

    if scope == "global":
        total = sum(int(np.size(m)) for _, _, m in items)
        plan = [(list(range(len(items))), keep(_count(density, total)))]
    else:
        by_group = _group_items(items, groups)
        dens = layer_densities(mask, density, distribution=distribution, groups=groups,
                               prunable=prunable)
        plan = [
            (members, keep(_count(dens[g], sum(int(np.size(items[j][2])) for j in members))))
            for g, members in by_group.items()
        ]
    return _rebuild(mask, _prune_groups(items, plan, index))
