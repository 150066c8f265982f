"""Analyses of tickets: linear mode connectivity, early-bird distances, mask overlap.

* **Instability** (Frankle, Dziugaite, Roy & Carbin 2020): :func:`path_losses`
  evaluates any function of the weights along the straight line ``(1 − α)·θa +
  α·θb`` (vmapped over α: one compile); :func:`interpolate` does it for a
  classifier, giving the loss and the error (1 − accuracy) at ``points`` evenly
  spaced α on each of several datasets; :func:`instability` is the error barrier
  ``max_α E(α) − (E(0) + E(1)) / 2``. Only the weights are interpolated:
  ``apply_fn(params, x)`` must not read statistics that depend on the weights
  (BatchNorm running means would have to be recomputed at every α; the run layer
  refuses such models, see :mod:`lotto_jax.runs.stability`).
* **Early-bird tickets** (You et al. 2020): :func:`hamming`, the fraction of
  prunable weights on which two masks differ, and the draw rule of the reference
  code as pure functions over a FIFO of the last ``keep`` masks
  (:class:`EarlyBird`, :func:`early_bird_put`, :func:`early_bird_distances`,
  :func:`early_bird_emerged`, :func:`first_draw`).
* **Overlap**: per-layer Jaccard and Hamming between two masks
  (:func:`overlap_table`, wrapping :func:`lotto_jax.masks.overlap`) and a matrix
  over a list of masks (:func:`overlap_matrix`).

References:
  Frankle, Dziugaite, Roy & Carbin 2020, "Linear Mode Connectivity and the Lottery
  Ticket Hypothesis", arXiv:1912.05671. You et al. 2020, "Drawing Early-Bird
  Tickets", arXiv:1909.11957 (code: GATECH-EIC/Early-Bird-Tickets, class
  ``EarlyBird``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lotto_jax import masks
from lotto_jax._types import Mask, Params, Prunable

__all__ = [
    "EarlyBird",
    "early_bird",
    "early_bird_distances",
    "early_bird_emerged",
    "early_bird_put",
    "first_draw",
    "hamming",
    "instability",
    "interpolate",
    "overlap_matrix",
    "overlap_table",
    "path_losses",
]


def _check_points(points) -> None:
    if isinstance(points, bool) or not isinstance(points, int | np.integer) or points < 2:
        raise ValueError(f"points: expected an int >= 2, got {points!r}")


def _check_same(a: Any, b: Any, name: str) -> None:
    la, da = jax.tree_util.tree_flatten_with_path(a)
    lb, db = jax.tree_util.tree_flatten_with_path(b)
    if da != db:
        raise ValueError(f"{name}: tree structure {db} differs from {da}")
    for (path, x), (_, y) in zip(la, lb, strict=True):
        if jnp.shape(x) != jnp.shape(y):
            raise ValueError(f"{name}{jax.tree_util.keystr(path)}: shape "
                             f"{tuple(jnp.shape(y))}, expected {tuple(jnp.shape(x))}")


def _lerp(a: Params, b: Params, alpha) -> Params:
    return jax.tree.map(lambda x, y: (1 - alpha) * x + alpha * y, a, b)


def path_losses(loss_fn: Callable[[Params], Any], params_a: Params, params_b: Params, *,
                points: int = 30) -> tuple[jax.Array, Any]:
    """``loss_fn`` along the line from ``params_a`` to ``params_b``.

    Args:
      loss_fn: ``loss_fn(params) -> value`` (any pytree of arrays); traced once,
        vmapped over α.
      params_a: θa (α = 0).
      params_b: θb (α = 1), the same tree and shapes.
      points: how many evenly spaced α in [0, 1] (both ends included).

    Returns:
      ``(alphas, values)``: ``alphas`` of shape ``(points,)``, ``values`` the
      outputs of ``loss_fn((1 − α)·θa + α·θb)`` stacked along a leading axis.

    Raises:
      ValueError: ``points`` below 2, or trees that differ (naming the leaf).

    Examples:
      >>> alphas, f = path_losses(lambda w: (w**2 - 1) ** 2, -1.0, 1.0, points=3)
      >>> alphas.tolist(), f.tolist()
      ([0.0, 0.5, 1.0], [0.0, 1.0, 0.0])
    """
    _check_points(points)
    _check_same(params_a, params_b, "params_b")
    alphas = jnp.linspace(0.0, 1.0, points)
    return alphas, jax.vmap(lambda t: loss_fn(_lerp(params_a, params_b, t)))(alphas)


@functools.partial(jax.jit, static_argnums=0)
def _sums(apply_fn, a, b, mask, alphas, xs, ys, ws):
    """Per α: the summed cross-entropy and the number of correct predictions of
    the masked interpolated weights over the chunks ``(xs, ys)`` (a leading chunk
    axis, scanned), weighted by ``ws`` (0: padding)."""

    def one(t):
        params = _lerp(a, b, t)
        if mask is not None:
            params = masks.apply(params, mask)

        def chunk(carry, inp):
            x, y, w = inp
            logits = apply_fn(params, x)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            right = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
            return (carry[0] + jnp.sum(ce * w), carry[1] + jnp.sum(right * w)), None

        return jax.lax.scan(chunk, (jnp.float32(0), jnp.float32(0)), (xs, ys, ws))[0]

    return jax.vmap(one)(alphas)


def _check_batches(batches) -> list[tuple[jax.Array, jax.Array]]:
    if not isinstance(batches, Sequence) or not batches:
        raise ValueError("batches: expected a non-empty sequence of (x, y) pairs")
    out = []
    for i, pair in enumerate(batches):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(f"batches[{i}]: expected an (x, y) pair")
        x, y = jnp.asarray(pair[0]), jnp.asarray(pair[1])
        if y.ndim != 1 or x.ndim < 1 or x.shape[0] != y.shape[0] or not y.shape[0]:
            raise ValueError(f"batches[{i}]: x {x.shape} and integer labels y {y.shape} "
                             "must be non-empty with the same first dimension")
        out.append((x, y.astype(jnp.int32)))
    return out


def interpolate(apply_fn: Callable[[Params, jax.Array], jax.Array], params_a: Params,
                params_b: Params, mask: Mask | None, batches, *, points: int = 30,
                chunk: int = 1024) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Loss and error of a classifier along the linear path between two networks.

    At each of ``points`` evenly spaced α in [0, 1] the weights are
    ``mask ⊙ ((1 − α)·θa + α·θb)`` (both endpoints trained under ``mask``, as the
    two copies of a sparse network are in Frankle et al. 2020). All α are
    evaluated by one vmapped, jitted call per ``chunk`` examples.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``; it must not depend on state
        that varies with the weights (BatchNorm statistics: not supported).
      params_a: θa, the end at α = 0.
      params_b: θb, the end at α = 1.
      mask: the shared mask (``None``: dense).
      batches: a sequence of ``(x, y)`` pairs (e.g. the test set and a train
        subset), ``y`` integer labels.
      points: the number of α values, both ends included (30 in the paper).
      chunk: examples per evaluation call (memory: ``points × chunk`` forward
        passes at once).

    Returns:
      ``(alphas, losses, errors)``: ``alphas`` of shape ``(points,)``; the mean
      cross-entropy and the error (1 − accuracy) of shape ``(len(batches),
      points)``.

    Raises:
      ValueError: ``points`` < 2, ``chunk`` < 1, trees or the mask not matching
        ``params_a``, or a malformed batch (named ``batches[i]``).

    Examples:
      >>> import jax.numpy as jnp
      >>> w = {"w": jnp.eye(2)}
      >>> apply = lambda p, x: x @ p["w"]
      >>> x, y = jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([0, 1])
      >>> _, _, err = interpolate(apply, w, {"w": -jnp.eye(2)}, None, [(x, y)], points=3)
      >>> err.tolist()
      [[0.0, 0.5, 1.0]]

    References:
      Frankle, Dziugaite, Roy & Carbin 2020, arXiv:1912.05671 (Section 2).
    """
    _check_points(points)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: expected an int >= 1, got {chunk!r}")
    _check_same(params_a, params_b, "params_b")
    if mask is not None:
        masks.validate(params_a, mask, name="mask")
    data = _check_batches(batches)
    alphas = jnp.linspace(0.0, 1.0, points)
    losses, errors = [], []
    for x, y in data:
        n = x.shape[0]
        size = min(chunk, n)
        pad = -n % size
        c = (n + pad) // size
        xp = np.concatenate([np.asarray(x), np.zeros((pad, *x.shape[1:]), x.dtype)])
        yp = np.concatenate([np.asarray(y), np.zeros((pad,), y.dtype)])
        wp = np.concatenate([np.ones((n,), np.float32), np.zeros((pad,), np.float32)])
        loss, right = _sums(apply_fn, params_a, params_b, mask, alphas,
                            xp.reshape(c, size, *x.shape[1:]), yp.reshape(c, size),
                            wp.reshape(c, size))
        losses.append(loss / n)
        errors.append(1.0 - right / n)
    return alphas, jnp.stack(losses), jnp.stack(errors)


def instability(errors: Any) -> Any:
    """The error barrier of a path: ``max(E) − (E[0] + E[-1]) / 2``.

    Args:
      errors: errors along a path (last axis: α from 0 to 1), e.g. the
        ``errors`` of :func:`interpolate`; leading axes are kept.

    Returns:
      The barrier (an array over the leading axes; a 0-d array for one path).
      It is 0 when no point of the path is worse than the mean of its ends and
      never below ``max(E[0], E[-1]) − mean`` ≥ 0.

    Raises:
      ValueError: fewer than 2 points on the last axis.

    Examples:
      >>> round(float(instability([0.1, 0.5, 0.3])), 6)
      0.3

    References:
      Frankle, Dziugaite, Roy & Carbin 2020, arXiv:1912.05671 (Definition 1).
    """
    e = jnp.asarray(errors, jnp.float32)
    if e.ndim < 1 or e.shape[-1] < 2:
        raise ValueError(f"errors: expected at least 2 points on the last axis, "
                         f"got shape {e.shape}")
    return jnp.max(e, -1) - (e[..., 0] + e[..., -1]) / 2


# ----------------------------------------------------------------- masks
def _prunable_pairs(a: Mask, b: Mask, prunable: Prunable, name: str):
    masks.validate(a, b, name=name)
    for path, leaf in jax.tree_util.tree_flatten_with_path(a)[0]:
        if jnp.result_type(leaf) != jnp.bool_:
            raise ValueError(f"mask_a{jax.tree_util.keystr(path)}: mask leaves must be "
                             f"boolean, got dtype {jnp.result_type(leaf)}")
    la = jax.tree_util.tree_flatten_with_path(a)[0]
    lb = jax.tree.leaves(b)
    pairs = [(path, x, y) for (path, x), y in zip(la, lb, strict=True) if prunable(path, x)]
    if not pairs:
        raise ValueError("prunable: selects no leaf of the masks")
    return pairs


def hamming(mask_a: Mask, mask_b: Mask, *,
            prunable: Prunable = masks.default_prunable) -> float:
    """The normalised Hamming distance: the fraction of prunable bits that differ.

    Args:
      mask_a: a mask.
      mask_b: a mask of the same tree and shapes.
      prunable: which leaves count (default: weight matrices and kernels).

    Returns:
      A float in [0, 1]: 0 for equal masks, 1 for complementary ones.

    Raises:
      ValueError: masks that differ in tree or shape, non-boolean leaves, or a
        ``prunable`` that selects nothing.

    Examples:
      >>> import jax.numpy as jnp
      >>> a = {"w": jnp.array([[True, True, False, False]])}
      >>> hamming(a, {"w": jnp.array([[True, False, True, False]])})
      0.5

    References:
      You et al. 2020, arXiv:1909.11957 (mask distance, Section 3.2).
    """
    pairs = _prunable_pairs(mask_a, mask_b, prunable, "mask_b")
    diff = sum(int(jnp.sum(x != y)) for _, x, y in pairs)
    return diff / sum(int(np.size(x)) for _, x, _ in pairs)


class EarlyBird(NamedTuple):
    """The early-bird draw's state: the FIFO of the last ``keep`` masks.

    Attributes:
      masks: the recorded masks, oldest first (at most ``keep``).
      epsilon: the distance threshold ε in (0, 1).
      keep: the FIFO length (``epoch_keep = 5`` in the reference code).
    """

    masks: tuple[Mask, ...]
    epsilon: float
    keep: int


def early_bird(*, epsilon: float = 0.1, keep: int = 5) -> EarlyBird:
    """An empty :class:`EarlyBird` FIFO.

    The rule is the reference code's (``EarlyBird.early_bird_emerge``): once
    ``keep`` masks are recorded, the ticket is drawn when the distances from the
    *newest* mask to each of the ``keep − 1`` older ones are all ≤ ε. (The
    paper's and the issue's wording, "the last 5 distances all < ε", reads as
    consecutive pairs with a strict inequality; the code compares against the
    newest mask and uses ≤.)

    Args:
      epsilon: the threshold ε, in (0, 1) (0.1 in the paper).
      keep: the FIFO length, an int >= 2.

    Returns:
      The empty state.

    Raises:
      ValueError: ``epsilon`` outside (0, 1) or ``keep`` < 2.

    References:
      You et al. 2020, arXiv:1909.11957; GATECH-EIC/Early-Bird-Tickets ``main.py``.
    """
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not 0 < epsilon < 1:
        raise ValueError(f"epsilon: expected a value in (0, 1), got {epsilon!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 2:
        raise ValueError(f"keep: expected an int >= 2, got {keep!r}")
    return EarlyBird((), float(epsilon), keep)


def early_bird_put(state: EarlyBird, mask: Mask) -> EarlyBird:
    """``state`` with ``mask`` recorded as the newest; the oldest drops out
    beyond ``keep``."""
    return state._replace(masks=(*state.masks, mask)[-state.keep:])


def early_bird_distances(state: EarlyBird, *,
                         prunable: Prunable = masks.default_prunable) -> list[float]:
    """The :func:`hamming` distances from the newest mask to each older one in the
    FIFO, oldest first (``[]`` with fewer than 2 masks)."""
    if len(state.masks) < 2:
        return []
    newest = state.masks[-1]
    return [hamming(newest, m, prunable=prunable) for m in state.masks[:-1]]


def early_bird_emerged(state: EarlyBird, *,
                       prunable: Prunable = masks.default_prunable) -> bool:
    """Whether the FIFO is full and every distance of
    :func:`early_bird_distances` is ≤ ``epsilon`` (never before the
    ``keep``-th mask)."""
    if len(state.masks) < state.keep:
        return False
    return all(d <= state.epsilon for d in early_bird_distances(state, prunable=prunable))


def first_draw(mask_sequence: Sequence[Mask], *, epsilon: float = 0.1, keep: int = 5,
               prunable: Prunable = masks.default_prunable) -> int | None:
    """The index of the mask at which the early-bird rule first fires.

    Args:
      mask_sequence: masks in recording order (one per evaluation).
      epsilon: ε, in (0, 1).
      keep: the FIFO length.
      prunable: which leaves count.

    Returns:
      The index ``i`` (≥ ``keep − 1``) after whose recording
      :func:`early_bird_emerged` first holds, or ``None``.

    Examples:
      >>> import jax.numpy as jnp
      >>> m = {"w": jnp.ones((2, 5), bool)}
      >>> first_draw([m] * 6, epsilon=0.1)
      4
    """
    state = early_bird(epsilon=epsilon, keep=keep)
    for i, m in enumerate(mask_sequence):
        state = early_bird_put(state, m)
        if early_bird_emerged(state, prunable=prunable):
            return i
    return None


def overlap_table(mask_a: Mask, mask_b: Mask, *,
                  prunable: Prunable = masks.default_prunable) -> dict[str, dict[str, Any]]:
    """Per-layer agreement of two masks, and over all prunable leaves.

    Args:
      mask_a: a mask.
      mask_b: a mask of the same tree and shapes.
      prunable: which leaves count.

    Returns:
      ``{layer: row}`` for every prunable leaf (named by
      :func:`lotto_jax.masks.path_str`) then ``"all"``; a row holds ``total``,
      ``kept_a``, ``kept_b``, ``both`` (counts), ``jaccard`` = |a ∧ b| / |a ∨ b|
      (1.0 when neither keeps anything; :func:`lotto_jax.masks.overlap`) and
      ``hamming`` (the fraction of bits that differ).

    Raises:
      ValueError: as :func:`hamming`.

    Examples:
      >>> import jax.numpy as jnp
      >>> a = {"w": jnp.array([[True, True, False, False]])}
      >>> b = {"w": jnp.array([[True, False, True, False]])}
      >>> row = overlap_table(a, b)["w"]
      >>> row["both"], round(row["jaccard"], 4), row["hamming"]
      (1, 0.3333, 0.5)
    """
    pairs = _prunable_pairs(mask_a, mask_b, prunable, "mask_b")
    out = {}
    for path, x, y in [*pairs, ((), None, None)]:
        if x is None:
            name = "all"
            xs, ys = [p[1] for p in pairs], [p[2] for p in pairs]
        else:
            name, xs, ys = masks.path_str(path), [x], [y]
        a, b = {str(i): v for i, v in enumerate(xs)}, {str(i): v for i, v in enumerate(ys)}
        total = sum(int(np.size(v)) for v in xs)
        out[name] = {
            "total": total,
            "kept_a": sum(int(jnp.sum(v)) for v in xs),
            "kept_b": sum(int(jnp.sum(v)) for v in ys),
            "both": sum(int(jnp.sum(u & v)) for u, v in zip(xs, ys, strict=True)),
            "jaccard": masks.overlap(a, b, prunable=masks.all_leaves),
            "hamming": sum(int(jnp.sum(u != v)) for u, v in zip(xs, ys, strict=True)) / total,
        }
    return out


def overlap_matrix(mask_list: Sequence[Mask], *, metric: str = "jaccard",
                   prunable: Prunable = masks.default_prunable) -> np.ndarray:
    """Pairwise agreement of several masks over their prunable leaves.

    Args:
      mask_list: masks of the same tree and shapes.
      metric: ``"jaccard"`` (1 on the diagonal) or ``"hamming"`` (0 there).
      prunable: which leaves count.

    Returns:
      A symmetric ``(n, n)`` float array.

    Raises:
      ValueError: an unknown ``metric``, fewer than 2 masks, or masks that differ
        (naming ``mask_list[i]``).
    """
    if metric not in ("jaccard", "hamming"):
        raise ValueError(f"metric: expected 'jaccard' or 'hamming', got {metric!r}")
    if len(mask_list) < 2:
        raise ValueError(f"mask_list: expected at least 2 masks, got {len(mask_list)}")
    for i, m in enumerate(mask_list):
        _prunable_pairs(mask_list[0], m, prunable, f"mask_list[{i}]")
    n = len(mask_list)
    out = np.full((n, n), 1.0 if metric == "jaccard" else 0.0)
    for i in range(n):
        for j in range(i + 1, n):
            row = overlap_table(mask_list[i], mask_list[j], prunable=prunable)["all"]
            out[i, j] = out[j, i] = row[metric]
    return out
