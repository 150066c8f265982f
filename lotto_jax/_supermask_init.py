"""Supermask search: the frozen random weights and the initial scores.

Public through :mod:`lotto_jax.supermask`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from lotto_jax._supermask_ops import (
    _OTHER,
    _check_keep,
    _choice,
    _draws,
    _fan_in,
    _leaf_keeps,
)
from lotto_jax._types import Params, PRNGKey, Prunable, Scores
from lotto_jax.masks import default_prunable, path_str

__all__ = ["SCORE_INITS", "WEIGHT_INITS", "init_scores", "init_weights"]

WEIGHT_INITS = ("kaiming-normal", "signed-constant", "scaled-signed-constant")
"""Weight initialisers of :func:`init_weights`."""
SCORE_INITS = ("kaiming-uniform", "magnitude")
"""Score initialisers of :func:`init_scores`."""


def init_weights(
    params: Params,
    *,
    key: PRNGKey,
    method: str = "signed-constant",
    keep: float = 0.5,
    layer_keep: Mapping[str, float] | None = None,
    other: str = "neutral",
    prunable: Prunable = default_prunable,
) -> Params:
    """Random frozen weights for a supermask search (Ramanujan et al. 2020, §4).

    Every prunable leaf is redrawn; its fan-in is the product of all but the last
    axis (``in`` of a dense ``(in, out)`` kernel, ``h·w·in`` of a conv kernel), and
    ``σ = sqrt(2 / fan_in)`` (He et al.'s ReLU gain, fan-in mode):

    * ``"kaiming-normal"``: ``N(0, σ²)``, untruncated (PyTorch's ``kaiming_normal_``).
    * ``"signed-constant"``: ``σ · r`` with ``r`` i.i.d. uniform on ``{−1, +1}``
      (the reference code takes the sign of a fresh draw, the same distribution).
    * ``"scaled-signed-constant"``: ``σ_k · r`` with ``σ_k = sqrt(2 / (k · fan_in))
      = σ / sqrt(k)``, ``k`` the layer's fraction kept: the fan-in of the *kept*
      subnetwork, as the paper intends. (The reference code's ``scale_fan`` writes
      ``fan * (1 - prune_rate)`` while its top-k treats ``prune_rate`` as the kept
      fraction; the two agree only at k = 0.5.)

    Unprunable leaves (biases, normalisation scales and offsets): ``other="neutral"``
    sets leaves named ``scale`` to 1 and every other one to 0, i.e. the paper's
    bias-free layers and non-affine normalisation; ``other="keep"`` keeps
    ``params``' values. They are never masked or trained either way.

    Args:
      params: the model's params (structure, shapes, dtypes; values of kept leaves).
      key: a PRNG key; one draw covers all prunable entries in leaf order.
      method: one of :data:`WEIGHT_INITS` (``_`` accepted for ``-``).
      keep: the fraction kept, for the scaled variant.
      layer_keep: per-layer overrides of ``keep`` as in :func:`edge_popup`.
      other: ``"neutral"`` or ``"keep"``.
      prunable: which leaves are weights.

    Returns:
      The frozen weights.

    Raises:
      ValueError: an unknown ``method``/``other``, ``keep`` outside (0, 1].

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> p = {"k": jnp.zeros((8, 3)), "b": jnp.ones(3)}
      >>> w = init_weights(p, key=jax.random.key(0))
      >>> sorted(set(jnp.abs(w["k"]).ravel().tolist())), w["b"].tolist()
      ([0.5], [0.0, 0.0, 0.0])

    References:
      Ramanujan et al. 2020, arXiv:1911.13299; He et al. 2015, arXiv:1502.01852.
    """
    method = _choice("method", method, WEIGHT_INITS)
    other = _choice("other", other, _OTHER)
    keep = _check_keep("keep", keep)
    patterns = tuple((layer_keep or {}).items())
    return _init_weights_jit(params, key, method, keep, patterns, other, prunable)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _init_weights_jit(params, key, method, keep, patterns, other, prunable):
    """:func:`init_weights` in one compilation (per model and options)."""
    keeps = _leaf_keeps(params, keep, dict(patterns), prunable)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    sampler = jax.random.normal if method == "kaiming-normal" else jax.random.rademacher
    draws = _draws(key, params, lambda path, _: path in keeps, sampler)
    out = []
    for r, (path, p) in zip(draws, leaves, strict=True):
        dtype = jnp.result_type(p)
        if path not in keeps:
            if other == "keep":
                out.append(p)
            else:
                last = path_str(path).rsplit("/", 1)[-1]
                out.append(jnp.ones_like(p) if last == "scale" else jnp.zeros_like(p))
            continue
        fan = _fan_in(path, p)
        if method == "scaled-signed-constant":
            fan = fan * keeps[path]
        out.append(r.astype(dtype) * jnp.asarray(math.sqrt(2.0 / fan), dtype))
    return jax.tree.unflatten(treedef, out)


def init_scores(
    params: Params,
    *,
    key: PRNGKey | None = None,
    method: str = "kaiming-uniform",
    prunable: Prunable = default_prunable,
) -> Scores:
    """Initial scores shaped like ``params`` (zeros on unprunable leaves).

    * ``"kaiming-uniform"``: ``U(−b, b)`` with ``b = 1/sqrt(fan_in)``: PyTorch's
      ``kaiming_uniform_(a=sqrt(5))`` that the edge-popup code applies to its
      scores (gain ``sqrt(2/(1+5))``, bound ``gain·sqrt(3/fan_in)``).
    * ``"magnitude"``: ``|W|`` of ``params``, for pretrained weights ("Lottery
      Jackpots Exist in Pre-trained Models", Zhang et al. 2021): the first
      edge-popup mask is then the magnitude-pruned network, and the sign method
      starts from the weights' own signs.

    Args:
      params: the frozen weights.
      key: PRNG key (required for ``"kaiming-uniform"``).
      method: one of :data:`SCORE_INITS`.
      prunable: which leaves get scores.

    Returns:
      The scores, in the params' floating dtypes.

    Raises:
      ValueError: an unknown ``method`` or a missing ``key``.

    References:
      Ramanujan et al. 2020, arXiv:1911.13299; Zhang et al. 2021, "Lottery
      Jackpots Exist in Pre-trained Models", arXiv:2104.08700.
    """
    method = _choice("method", method, SCORE_INITS)
    if method == "kaiming-uniform" and key is None:
        raise ValueError("key: init_scores(method='kaiming-uniform') needs a PRNG key")
    return _init_scores_jit(params, key, method, prunable)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _init_scores_jit(params, key, method, prunable):
    """:func:`init_scores` in one compilation (per model and options)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    if method == "magnitude":
        draws = [None] * len(leaves)
    else:
        unit = functools.partial(jax.random.uniform, minval=-1.0, maxval=1.0)
        draws = _draws(key, params, prunable, unit)
    out = []
    for u, (path, p) in zip(draws, leaves, strict=True):
        dtype = jnp.result_type(p)
        if not prunable(path, p):
            out.append(jnp.zeros_like(p))
        elif method == "magnitude":
            out.append(jnp.abs(p))
        else:
            bound = jnp.asarray(1.0 / math.sqrt(_fan_in(path, p)), dtype)
            out.append(u.astype(dtype) * bound)
    return jax.tree.unflatten(treedef, out)
