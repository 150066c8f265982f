"""Supermask search over frozen weights: the search state, the search transforms
(edge-popup, Bernoulli, sign, jackpot, signed) and the exports.

Public through :mod:`lotto_jax.supermask`; see its module docstring for the methods.
The mask-making primitives (top-k, Bernoulli draws, straight-through) are in
``lotto_jax._supermask_ops``; the jackpot and signed leaves in
``lotto_jax._supermask_variants``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lotto_jax._supermask_ops import (  # noqa: F401  (_OTHER: runs.supermask)
    _OTHER,
    _bernoulli_draws,
    _check_keep,
    _check_like,
    _choice,
    _leaf_keeps,
    _n_keep,
    _sign,
    _straight_through,
    _topk_flat,
    sample_mask,
    topk_mask,
)
from lotto_jax._supermask_variants import (
    jackpot_leaf,
    short_restriction,
    signed_leaf,
)
from lotto_jax._types import Mask, Params, PRNGKey, Prunable, Scores
from lotto_jax.masks import default_prunable, path_str, validate

__all__ = [
    "METHODS",
    "SearchState",
    "Supermask",
    "bernoulli",
    "edge_popup",
    "export_mask",
    "export_signs",
    "export_weights",
    "init_state",
    "sample_mask",
    "sign",
    "topk_mask",
]

METHODS = ("edge-popup", "bernoulli", "sign", "jackpot", "signed")
"""Search methods: :func:`edge_popup`, :func:`bernoulli`, :func:`sign`,
:func:`jackpot`, :func:`signed`."""
_MASKED = ("sign", "jackpot")  # the methods whose SearchState carries a mask
_RANKS = ("abs", "signed")
_EVALUATIONS = ("expected", "threshold")


class SearchState(struct.PyTreeNode):
    """What a supermask forward pass needs besides the scores; a pytree.

    Passed as ``model_state`` to :func:`lotto_jax.train.make_trainer` / ``fit``, so
    the optimizer only sees the scores (the trainer's ``params``) and everything
    here passes through training unchanged, except ``model_state`` (BatchNorm
    statistics) and ``count``.

    Attributes:
      weights: the frozen weights, a params pytree (never trained).
      model_state: the model's other collections, e.g. ``{"batch_stats": ...}``.
      mask: the fixed mask of the sign method; the jackpot method's current binary
        mask (replaced by each training pass); ``None`` for the others.
      key: the base PRNG key of the Bernoulli method (``None`` for the others).
      count: int32 number of training forward passes so far; the Bernoulli method's
        pass ``t`` samples with ``jax.random.fold_in(key, t)``.
    """

    weights: Params
    model_state: Any
    mask: Mask | None
    key: PRNGKey | None
    count: jax.Array


def init_state(
    weights: Params,
    model_state: Any = None,
    *,
    key: PRNGKey | None = None,
    mask: Mask | None = None,
    count: int = 0,
) -> SearchState:
    """Builds a :class:`SearchState` around frozen ``weights``.

    Args:
      weights: the frozen weights (``init_weights(...)``, ``variables["params"]``, a
        pretrained params pytree).
      model_state: the model's non-param collections (``{}`` if ``None``).
      key: base key for the Bernoulli method's per-step samples (required there).
      mask: the fixed pruning mask of the sign method, e.g. from
        :func:`lotto_jax.prune.to_density`, or the jackpot method's start mask
        (:func:`lotto_jax.supermask.jackpot_mask`); required there.
      count: the starting value of the training forward-pass counter.

    Returns:
      The state.

    Raises:
      ValueError: a ``mask`` that does not fit ``weights`` (naming the key path).
    """
    if mask is not None:
        validate(weights, mask, name="mask")
    return SearchState(
        weights=weights,
        model_state={} if model_state is None else model_state,
        mask=mask,
        key=key,
        count=jnp.asarray(count, jnp.int32),
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Supermask:
    """A supermask search: an apply function over ``(scores, state)``.

    Build one with :func:`edge_popup`, :func:`bernoulli`, :func:`sign`,
    :func:`jackpot` or :func:`signed`. Calling it
    as ``search(scores, state, x, train) -> (logits, state)`` computes ``W_eff`` from
    the scores and the frozen ``state.weights`` leaf by leaf, then calls the
    wrapped ``apply_fn(W_eff, state.model_state, x, train)``. That is the
    :data:`lotto_jax.train.ApplyFn` signature with the scores as params, so
    ``train.make_trainer(search, ...)`` trains the scores and nothing else.

    Attributes:
      method: one of :data:`METHODS`.
      apply_fn: the model's ``apply_fn(params, model_state, x, train)`` (e.g.
        ``train.classifier(module)``).
      keep: edge-popup's and the signed method's fraction kept per layer.
      layer_keep: their per-layer overrides ``{pattern: keep}``.
      rank: edge-popup's ranking, ``"abs"`` (by ``|s|``, the reference code) or
        ``"signed"`` (by ``s``, the paper's text).
      evaluation: the Bernoulli method's ``train=False`` network: ``"expected"``
        (``W ⊙ sigmoid(s)``) or ``"threshold"`` (``W ⊙ [sigmoid(s) > 0.5]``).
      prunable: which leaves are masked; the others pass unchanged.
    """

    method: str
    apply_fn: Any
    keep: float = 0.5
    layer_keep: Mapping[str, float] | None = None
    rank: str = "abs"
    evaluation: str = "expected"
    prunable: Prunable = default_prunable

    def __post_init__(self):
        object.__setattr__(self, "method", _choice("method", self.method, METHODS))
        object.__setattr__(self, "keep", _check_keep("keep", self.keep))
        object.__setattr__(self, "rank", _choice("rank", self.rank, _RANKS))
        object.__setattr__(
            self, "evaluation", _choice("evaluation", self.evaluation, _EVALUATIONS)
        )
        for pattern, frac in (self.layer_keep or {}).items():
            _check_keep(f"layer_keep[{pattern!r}]", frac)
        if not callable(self.apply_fn):
            raise ValueError(f"apply_fn: expected a callable, got {self.apply_fn!r}")

    def _check(self, scores: Scores, state: SearchState) -> None:
        if not isinstance(state, SearchState):
            raise ValueError(
                f"state: expected a SearchState (supermask.init_state), got "
                f"{type(state).__name__}"
            )
        _check_like(state.weights, scores, "scores")
        if self.method in _MASKED:
            if state.mask is None:
                raise ValueError(
                    f"state.mask: the {self.method} method needs a mask "
                    "(init_state(weights, mask=...))"
                )
            validate(state.weights, state.mask, name="state.mask")
        elif state.mask is not None:
            raise ValueError(
                f"state.mask: only the sign and jackpot methods take a mask, not "
                f"{self.method!r}"
            )
        if self.method == "bernoulli" and state.key is None:
            raise ValueError(
                "state.key: the bernoulli method samples its masks; pass "
                "init_state(weights, key=...)"
            )

    def effective_weights(
        self, scores: Scores, state: SearchState, *, train: bool
    ) -> Params:
        """``W_eff`` of the forward pass; differentiable in ``scores`` (STE).

        Args:
          scores: real scores shaped like ``state.weights``.
          state: the :class:`SearchState`.
          train: training pass (the Bernoulli method samples) or evaluation.

        Returns:
          The weights the model is run with.
        """
        return self._forward(scores, state, train=train)[0]

    def _forward(self, scores: Scores, state: SearchState, *, train: bool):
        """``(W_eff, mask)``; ``mask`` is the jackpot's restricted mask (else
        ``state.mask``)."""
        self._check(scores, state)
        if self.method == "jackpot":
            state = state.replace(
                mask=short_restriction(jax.lax.stop_gradient(scores), state.mask,
                                       prunable=self.prunable)
            )
        w_leaves, treedef = jax.tree_util.tree_flatten_with_path(state.weights)
        s_leaves = jax.tree.leaves(scores)
        if self.method in ("edge-popup", "signed"):
            keeps = _leaf_keeps(state.weights, self.keep, self.layer_keep, self.prunable)
        if self.method == "bernoulli" and train:
            key = jax.random.fold_in(state.key, state.count)
            samples = _bernoulli_draws(key, scores, self.prunable)
        m_leaves = jax.tree.leaves(state.mask) if self.method in _MASKED else None
        out = []
        for i, ((path, w), s) in enumerate(zip(w_leaves, s_leaves, strict=True)):
            if not self.prunable(path, w):
                out.append(w if m_leaves is None else jnp.where(m_leaves[i], w, 0))
                continue
            if self.method == "jackpot":
                out.append(jackpot_leaf(w, s, m_leaves[i]))
            elif self.method == "signed":
                out.append(signed_leaf(w, s, keeps[path]))
            elif self.method == "edge-popup":
                soft = s * jax.lax.stop_gradient(_sign(s)) if self.rank == "abs" else s
                hard = _topk_flat(jnp.ravel(soft), _n_keep(keeps[path], int(np.size(s))))
                hard = hard.reshape(jnp.shape(s)).astype(soft.dtype)
                m = _straight_through(soft, jax.lax.stop_gradient(hard))
                out.append(w * m.astype(w.dtype))
            elif self.method == "bernoulli":
                p = jax.nn.sigmoid(s)
                if train:
                    hard = samples[i].astype(p.dtype)
                    m = _straight_through(p, jax.lax.stop_gradient(hard))
                elif self.evaluation == "expected":
                    m = p
                else:
                    m = (s > 0).astype(p.dtype)
                out.append(w * m.astype(w.dtype))
            else:  # sign
                sg = _straight_through(s, jax.lax.stop_gradient(_sign(s)))
                out.append(jnp.where(m_leaves[i], w, 0) * sg.astype(w.dtype))
        return jax.tree.unflatten(treedef, out), state.mask

    def __call__(self, scores: Scores, state: SearchState, x: jax.Array, train: bool):
        """``(logits, new_state)``: the model run with :meth:`effective_weights`.

        A training pass of the jackpot method stores its restricted mask in the new
        state: the swap after score step ``t`` is applied (and kept) by the forward
        pass of step ``t + 1``; an evaluation pass applies it without storing it
        (the swap is idempotent).
        """
        w_eff, mask = self._forward(scores, state, train=train)
        logits, model_state = self.apply_fn(w_eff, state.model_state, x, train)
        return logits, state.replace(
            model_state=model_state, count=state.count + (1 if train else 0),
            mask=mask if train else state.mask,
        )

    def layer_keeps(self, params: Params) -> dict[str, float]:
        """``{path_str: keep}`` of every prunable leaf (edge-popup's per-layer k)."""
        keeps = _leaf_keeps(params, self.keep, self.layer_keep, self.prunable)
        return {path_str(p): k for p, k in keeps.items()}


def edge_popup(
    apply_fn: Any,
    *,
    keep: float = 0.5,
    layer_keep: Mapping[str, float] | None = None,
    rank: str = "abs",
    prunable: Prunable = default_prunable,
) -> Supermask:
    """edge-popup (Ramanujan et al. 2020): top-k of the scores per layer, STE.

    Forward: on each prunable leaf, ``W_eff = W ⊙ M`` with ``M`` =
    :func:`topk_mask` of ``|s|`` (exactly ``round(k·n)`` kept, ties by position).
    Backward (straight-through): ``∂L/∂M = (∂L/∂W_eff) ⊙ W`` is passed to the
    ranked quantity unchanged. With ``rank="abs"`` (the reference code, which ranks
    ``scores.abs()``) that quantity is ``|s|``, so ``∂L/∂s = sign(s) ⊙ ∂L/∂M``
    (``sign(0) := +1``), which is ``∂L/∂M`` exactly wherever ``s > 0``. With
    ``rank="signed"`` (the paper's Algorithm 1: top-k of ``s``) ``∂L/∂s = ∂L/∂M``
    everywhere. Passing ``∂L/∂M`` to a negative ``s`` ranked by ``|s|`` would push
    helpful edges *out*, which is why the sign is kept.

    Args:
      apply_fn: ``apply_fn(params, model_state, x, train) -> (logits,
        model_state)``, e.g. ``train.classifier(module)``; any Flax model.
      keep: fraction of each prunable leaf kept, in (0, 1] (the paper's k; the same
        for every layer, first and last included, unless overridden).
      layer_keep: ``{pattern: keep}`` overrides by key-path regular expression.
      rank: ``"abs"`` or ``"signed"`` (see above).
      prunable: which leaves are masked (default: ``ndim >= 2``).

    Returns:
      A :class:`Supermask`: ``search(scores, state, x, train) -> (logits, state)``.

    Raises:
      ValueError: ``keep`` outside (0, 1] or an unknown ``rank``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> apply_fn = lambda p, ms, x, train: (x @ p["w"], ms)
      >>> search = edge_popup(apply_fn, keep=0.5)
      >>> state = init_state({"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])})
      >>> scores = {"w": jnp.array([[0.1, 0.9], [0.8, 0.2]])}
      >>> logits, _ = search(scores, state, jnp.ones((1, 2)), False)
      >>> logits   # keeps w[0, 1] and w[1, 0]
      Array([[3., 2.]], dtype=float32)

    References:
      Ramanujan et al. 2020, "What's Hidden in a Randomly Weighted Neural
      Network?", arXiv:1911.13299.
    """
    return Supermask(
        "edge-popup", apply_fn, keep=keep, layer_keep=layer_keep, rank=rank,
        prunable=prunable,
    )


def bernoulli(
    apply_fn: Any,
    *,
    evaluation: str = "expected",
    prunable: Prunable = default_prunable,
) -> Supermask:
    """Bernoulli supermask (Zhou et al. 2019): ``M ~ Bernoulli(sigmoid(s))``.

    Training pass ``t`` (counted in ``state.count``) samples ``M`` with
    :func:`sample_mask` under ``jax.random.fold_in(state.key, t)``; the gradient is
    straight-through the sample into ``sigmoid(s)``: ``∂L/∂s = (∂L/∂W_eff ⊙ W) ⊙
    sigmoid'(s)``. Evaluation (``train=False``) is deterministic: ``"expected"``
    runs ``W ⊙ sigmoid(s)`` (the expected weights), ``"threshold"`` the mask
    ``sigmoid(s) > 0.5`` (i.e. ``s > 0``). A sampled network is obtained with
    :func:`export_mask` and an explicit key. The density is learned, not set.

    Args:
      apply_fn: the model's ``apply_fn(params, model_state, x, train)``.
      evaluation: ``"expected"`` or ``"threshold"``.
      prunable: which leaves are masked.

    Returns:
      A :class:`Supermask`.

    References:
      Zhou et al. 2019, "Deconstructing Lottery Tickets: Zeros, Signs, and the
      Supermask", arXiv:1905.01067.
    """
    return Supermask("bernoulli", apply_fn, evaluation=evaluation, prunable=prunable)


def sign(apply_fn: Any, *, prunable: Prunable = default_prunable) -> Supermask:
    """Sign supermask: a fixed mask plus learned signs ``sign(s) ∈ {−1, +1}``.

    ``W_eff = (W ⊙ M_fixed) ⊙ sign(s)`` on prunable leaves with ``M_fixed =
    state.mask`` (any boolean mask, e.g. pruning at initialisation with
    :func:`lotto_jax.prune.to_density` over magnitude or random scores) and
    ``sign(0) := +1``. The gradient is straight-through the sign: ``∂L/∂s =
    (∂L/∂W_eff) ⊙ W ⊙ M_fixed``. Unprunable leaves run as ``W ⊙ M_fixed``.

    Args:
      apply_fn: the model's ``apply_fn(params, model_state, x, train)``.
      prunable: which leaves get learned signs.

    Returns:
      A :class:`Supermask`; its state needs ``init_state(weights, mask=...)``.

    References:
      Vallapuram et al. 2022, "HideNseek: Federated Lottery Ticket via Server-side
      Pruning and Sign Supermask", arXiv:2206.04385; Zhou et al. 2019,
      arXiv:1905.01067 (signs matter).
    """
    return Supermask("sign", apply_fn, prunable=prunable)


def export_mask(
    search: Supermask, scores: Scores, state: SearchState, *, key: PRNGKey | None = None
) -> Mask:
    """The found mask as an ordinary boolean pytree like the weights.

    ``masks.apply(state.weights, mask)`` (times :func:`export_signs` for the sign
    method) is the network the search found: :func:`export_weights`.

    Args:
      search: the :class:`Supermask`.
      scores: the trained scores.
      state: its :class:`SearchState`.
      key: Bernoulli only: ``None`` exports the deterministic mask ``sigmoid(s) >
        0.5``; a key exports :func:`sample_mask` under that key (the training pass
        at counter ``t`` used ``fold_in(state.key, t)``).

    Returns:
      edge-popup: the top-k mask; Bernoulli: thresholded or sampled; sign: the
      fixed mask ``state.mask``; jackpot: the short restriction of the scores
      applied to ``state.mask``; signed: the nonzeros of the ternary mask.

    Raises:
      ValueError: a ``key`` for a method that does not sample, or scores that do not
        fit the weights.
    """
    search._check(scores, state)
    if key is not None and search.method != "bernoulli":
        raise ValueError(f"key: only the bernoulli method samples, not {search.method!r}")
    if search.method == "jackpot":
        return short_restriction(scores, state.mask, prunable=search.prunable)
    if search.method in ("edge-popup", "signed"):
        soft = (jax.tree.map(jnp.abs, scores) if search.rank == "abs" or
                search.method == "signed" else scores)
        return topk_mask(
            soft, search.keep, layer_keep=search.layer_keep, prunable=search.prunable
        )
    if search.method == "bernoulli":
        if key is not None:
            return sample_mask(scores, key=key, prunable=search.prunable)
        return jax.tree_util.tree_map_with_path(
            lambda p, s: (s > 0) if search.prunable(p, s) else jnp.ones(jnp.shape(s), bool),
            scores,
        )
    return state.mask


def export_signs(search: Supermask, scores: Scores, state: SearchState) -> Params:
    """The learned signs (``±1`` in the weights' dtypes); all ``+1`` unless sign/signed.

    Args:
      search: the :class:`Supermask`.
      scores: the trained scores.
      state: its :class:`SearchState`.

    Returns:
      A pytree like the weights: ``sign(s)`` (``sign(0) := +1``) on the prunable
      leaves of the sign and signed methods, ``1`` everywhere else.
    """
    search._check(scores, state)

    def leaf(path, w, s):
        if search.method in ("sign", "signed") and search.prunable(path, w):
            return _sign(s).astype(jnp.result_type(w))
        return jnp.ones_like(w)

    return jax.tree_util.tree_map_with_path(leaf, state.weights, scores)


def export_weights(
    search: Supermask, scores: Scores, state: SearchState, *, key: PRNGKey | None = None
) -> Params:
    """The found network's weights: ``masks.apply(W, export_mask(...)) * signs``.

    Run them with the plain model (``apply_fn(weights, state.model_state, x,
    False)``): the logits equal the search's own forward pass (edge-popup, sign,
    Bernoulli with the same sample key or thresholded).
    """
    mask = export_mask(search, scores, state, key=key)
    signs = export_signs(search, scores, state)
    return jax.tree.map(
        lambda w, m, g: jnp.where(m, w, jnp.zeros_like(w)) * g, state.weights, mask, signs
    )
