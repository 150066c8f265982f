"""The mask-making primitives of the supermask searches.

Argument checks shared by the searches and their initialisers, per-leaf keep
fractions, the exact top-k without a sort (:func:`topk_mask`), the Bernoulli draws
(:func:`sample_mask`) and the straight-through estimator. Public through
:mod:`lotto_jax.supermask`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax._types import Mask, Params, PRNGKey, Prunable, Scores
from lotto_jax.masks import default_prunable, path_str

__all__ = ["sample_mask", "topk_mask"]

_OTHER = ("neutral", "keep")
"""What :func:`lotto_jax.supermask.init_weights` does with unprunable leaves."""


def _choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    """Canonical spelling of an option (``_`` and ``-`` both accepted)."""
    canon = value.replace("_", "-") if isinstance(value, str) else value
    if canon not in options:
        raise ValueError(
            f"{name}: expected one of {', '.join(map(repr, options))}, got {value!r}"
        )
    return canon


def _check_keep(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a fraction kept in (0, 1], got {value!r}") from None
    if not (0.0 < v <= 1.0):
        raise ValueError(f"{name}: expected a fraction kept in (0, 1], got {v}")
    return v


def _check_like(reference: Params, tree: Any, name: str) -> None:
    """``tree`` has the structure and leaf shapes of ``reference``."""
    r_leaves, r_def = jax.tree_util.tree_flatten_with_path(reference)
    t_leaves, t_def = jax.tree_util.tree_flatten_with_path(tree)
    if r_def != t_def:
        r_paths = {jax.tree_util.keystr(p) for p, _ in r_leaves}
        t_paths = {jax.tree_util.keystr(p) for p, _ in t_leaves}
        raise ValueError(
            f"{name}: tree structure does not match the weights: missing leaves "
            f"{sorted(r_paths - t_paths)[:5]}, unexpected leaves "
            f"{sorted(t_paths - r_paths)[:5]}"
        )
    for (path, r), (_, t) in zip(r_leaves, t_leaves, strict=True):
        if jnp.shape(r) != jnp.shape(t):
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)}: shape {tuple(jnp.shape(t))} != "
                f"weight shape {tuple(jnp.shape(r))}"
            )


def _fan_in(path, leaf) -> int:
    shape = jnp.shape(leaf)
    if len(shape) < 2:
        raise ValueError(
            f"params{jax.tree_util.keystr(path)}: a prunable leaf needs ndim >= 2 to "
            f"have a fan-in (kernel (in, out) or (h, w, in, out)), got shape {shape}"
        )
    return math.prod(shape[:-1])


def _n_keep(keep: float, size: int) -> int:
    """``round(keep * size)``, rounded half up: the rule of :mod:`lotto_jax.prune`."""
    return math.floor(keep * size + 0.5)


def _leaf_keeps(
    tree: Any,
    keep: float,
    layer_keep: Mapping[str, float] | None,
    prunable: Prunable,
) -> dict[tuple, float]:
    """Key path -> fraction kept, for every prunable leaf of ``tree``."""
    leaves = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if prunable(p, x)]
    if not leaves:
        raise ValueError(
            "params: the prunable predicate selects no leaf; pass prunable= a predicate "
            "that selects the weights to mask"
        )
    out: dict[tuple, float] = {}
    for pattern, frac in (layer_keep or {}).items():
        frac = _check_keep(f"layer_keep[{pattern!r}]", frac)
        regex = re.compile(pattern)
        hits = [p for p, _ in leaves if regex.search(path_str(p))]
        if not hits:
            raise ValueError(
                f"layer_keep: pattern {pattern!r} matches no prunable leaf; prunable "
                f"leaves are {[path_str(p) for p, _ in leaves]}"
            )
        for p in hits:
            out.setdefault(p, frac)  # the first matching pattern wins
    return {p: out.get(p, keep) for p, _ in leaves}


def _order_keys(values: jax.Array) -> jax.Array:
    """uint32 keys with the order of the float32 ``values`` (``-0.0`` as ``+0.0``)."""
    v = values.astype(jnp.float32)
    v = jnp.where(v == 0, jnp.zeros_like(v), v)
    bits = jax.lax.bitcast_convert_type(v, jnp.uint32)
    negative = (bits >> 31) == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


@jax.jit
def _topk_bisect(values: jax.Array, n_keep: jax.Array) -> jax.Array:
    keys = _order_keys(values)

    def body(_, bounds):
        lo, hi = bounds  # invariant: count(keys >= lo) >= n_keep > count(keys > hi)
        mid = lo + (hi - lo) // 2 + (hi - lo) % 2
        ok = jnp.sum(keys >= mid) >= n_keep
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    start = (jnp.uint32(0), jnp.uint32(0xFFFFFFFF))
    threshold, _ = jax.lax.fori_loop(0, 32, body, start)
    above = keys > threshold
    tie = keys == threshold
    need = n_keep - jnp.sum(above)
    from_end = jnp.cumsum(tie[::-1].astype(jnp.int32))[::-1]
    return above | (tie & (from_end <= need))


def _topk_flat(values: jax.Array, n_keep: int) -> jax.Array:
    """Boolean: the ``n_keep`` largest of 1-D ``values``; ties keep the later index.

    The rule of :func:`lotto_jax.prune.to_density` (a stable ascending sort whose
    lowest ranks are dropped), computed without a sort: a 32-step bisection over
    the order-preserving integer image of the float32 values finds the
    ``n_keep``-th largest value ``t``; everything above ``t`` is kept, and of the
    entries equal to ``t`` the ones with the highest indices fill the rest. On CPU
    this is ~25x faster than XLA's sort for a 250k-weight layer, and it is exact.
    ``n_keep`` is a traced argument: one compilation per layer shape.
    """
    n = values.shape[0]
    if n_keep <= 0:
        return jnp.zeros(n, bool)
    if n_keep >= n:
        return jnp.ones(n, bool)
    return _topk_bisect(values, jnp.asarray(n_keep, jnp.int32))


def topk_mask(
    scores: Scores,
    keep: float = 0.5,
    *,
    layer_keep: Mapping[str, float] | None = None,
    prunable: Prunable = default_prunable,
) -> Mask:
    """Per layer, keeps the ``round(keep * n)`` highest ``scores`` (edge-popup's top-k).

    Each prunable leaf of ``n`` entries keeps exactly ``floor(k * n + 0.5)`` of them
    (round half up: the count rule of :mod:`lotto_jax.prune`), where ``k`` is
    ``keep`` or the leaf's ``layer_keep`` override. Ties are broken by position:
    among equal scores the entries with the higher flat (row-major) index are kept,
    as in :func:`lotto_jax.prune.to_density`. Unprunable leaves get all-``True``.
    Jittable (``keep`` and the patterns are static).

    Args:
      scores: a pytree of real arrays (pass ``|s|`` for edge-popup's ranking).
      keep: fraction kept per layer, in (0, 1].
      layer_keep: optional ``{pattern: keep}``; a leaf whose path (``path_str``,
        e.g. ``"output/kernel"``) matches the regular expression (``re.search``)
        keeps that fraction instead. The first matching pattern wins; every
        pattern must match at least one prunable leaf.
      prunable: which leaves are masked.

    Returns:
      The boolean mask pytree.

    Raises:
      ValueError: ``keep`` or a layer keep outside (0, 1], a pattern that matches
        nothing, or no prunable leaf.

    Examples:
      >>> import jax.numpy as jnp
      >>> s = {"w": jnp.array([[3.0, 1.0, 1.0], [1.0, 0.0, 2.0]])}
      >>> topk_mask(s, 0.5)["w"]   # round(3.0) = 3 kept; of the three 1.0s the last
      Array([[ True, False, False],
             [ True, False,  True]], dtype=bool)
    """
    keep = _check_keep("keep", keep)
    keeps = _leaf_keeps(scores, keep, layer_keep, prunable)

    def leaf(path, s):
        if path not in keeps:
            return jnp.ones(jnp.shape(s), bool)
        size = int(np.size(s))
        return _topk_flat(jnp.ravel(s), _n_keep(keeps[path], size)).reshape(jnp.shape(s))

    return jax.tree_util.tree_map_with_path(leaf, scores)


@jax.custom_vjp
def _straight_through(soft: jax.Array, hard: jax.Array) -> jax.Array:
    """Returns ``hard``; the cotangent goes to ``soft`` unchanged (identity STE)."""
    del soft
    return hard


def _st_fwd(soft, hard):
    del soft
    return hard, None


def _st_bwd(_, g):
    return g, jnp.zeros_like(g)


_straight_through.defvjp(_st_fwd, _st_bwd)


def _sign(s: jax.Array) -> jax.Array:
    """``+1`` where ``s >= 0``, ``-1`` elsewhere (no zeros), in ``s``'s dtype."""
    return jnp.where(s >= 0, jnp.ones_like(s), -jnp.ones_like(s))


def _draws(key: PRNGKey, tree: Any, prunable: Prunable, sampler) -> list[Any]:
    """One float32 draw over all prunable entries (concatenated in leaf order,
    row-major), cut back into leaf shapes; ``None`` for unprunable leaves.

    One generator call per tree, not per leaf: the same numbers, far less to compile.
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    sizes = [int(np.size(x)) if prunable(p, x) else -1 for p, x in leaves]
    flat = sampler(key, (sum(n for n in sizes if n > 0),), jnp.float32)
    out, offset = [], 0
    for (_, x), n in zip(leaves, sizes, strict=True):
        if n < 0:
            out.append(None)
            continue
        out.append(flat[offset : offset + n].reshape(jnp.shape(x)))
        offset += n
    return out


def _bernoulli_draws(key: PRNGKey, scores: Scores, prunable: Prunable) -> list[Any]:
    """``U < sigmoid(s)`` per prunable leaf, ``U`` from :func:`_draws` (uniform)."""
    uniforms = _draws(key, scores, prunable, jax.random.uniform)
    return [
        None if u is None else u < jax.nn.sigmoid(s.astype(jnp.float32))
        for u, s in zip(uniforms, jax.tree.leaves(scores), strict=True)
    ]


def sample_mask(
    scores: Scores, *, key: PRNGKey, prunable: Prunable = default_prunable
) -> Mask:
    """Draws ``M ~ Bernoulli(sigmoid(s))`` on every prunable leaf (Zhou et al. 2019).

    ``M = U < sigmoid(s)`` with ``U`` one ``jax.random.uniform(key, (n,))`` draw over
    the ``n`` prunable entries, concatenated in leaf order (row-major). The
    Bernoulli supermask's training forward pass at counter ``t`` draws exactly
    ``sample_mask(scores, key=jax.random.fold_in(state.key, t))``.

    Args:
      scores: real-valued logits of the keep probabilities.
      key: a PRNG key.
      prunable: which leaves are sampled (the others are all-``True``).

    Returns:
      A boolean mask pytree.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> m = sample_mask({"w": jnp.full((100, 100), 2.0)}, key=jax.random.key(0))
      >>> 0.85 < float(m["w"].mean()) < 0.91   # sigmoid(2) = 0.881
      True

    References:
      Zhou et al. 2019, "Deconstructing Lottery Tickets", arXiv:1905.01067.
    """
    leaves, treedef = jax.tree.flatten(scores)
    draws = _bernoulli_draws(key, scores, prunable)
    out = [
        jnp.ones(jnp.shape(s), bool) if m is None else m
        for m, s in zip(draws, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, out)
