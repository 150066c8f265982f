"""Essential sparsity: one-shot magnitude pruning of a trained network and its knee.

Jaiswal, Liu, Chen & Wang (2023) prune a pre-trained network *in one shot* by
weight magnitude (no retraining between densities), plot its accuracy against
sparsity and call the *essential sparsity* "the sharp dropping point beyond
which the performance declines much faster w.r.t. the rise of sparsity level".
Three pure functions:

* :func:`magnitude_masks` — the one-shot masks at many densities, stacked along a
  leading axis, with a global threshold or per layer
  (:func:`lotto_jax.prune.to_density`). They are *nested* by construction: the
  densities are taken from the largest down, each pruned from the previous mask,
  which equals pruning each from scratch (the same ranking, ties by position).
* :func:`evaluate_masks` — loss and accuracy of one network under each of those
  masks: one compiled evaluation vmapped over the mask axis (masks are data).
* :func:`knee` — the essential sparsity of an accuracy-vs-density curve, by one of
  two documented rules (:data:`KNEE_RULES`):

  - ``"drop"`` (the default): walking from the dense network towards sparser
    ones, the last density whose accuracy is within ``tolerance`` (absolute,
    0.01 = one accuracy point) of the dense accuracy, stopping at the first that
    is not. This is the operational reading of "the sharp dropping point" that
    the paper's summaries quote (about 30-50 % of the weights removable at <= 1 %
    drop; UNVERIFIED, ALGORITHMS.md section 14).
  - ``"kneedle"``: the offline Kneedle rule (Satopää et al. 2011) for a
    decreasing curve: with sparsity ``x`` scaled by its largest value and
    accuracy ``y`` scaled so the dense point is 1 and the sparsest point 0, the
    point of largest ``x + y − 1``: the farthest above the chord from the dense
    to the sparsest point. A curve that never rises above that chord (a straight
    or convex decline) has its knee at the dense network; a curve whose
    sparsest point is as accurate as the dense one has it at the sparsest point.

  Both return the *density* at the knee (1.0: nothing removable) and its
  sparsity ``1 − density``.

References:
  Jaiswal, Liu, Chen & Wang 2023, "The Emergence of Essential Sparsity in Large
  Pre-trained Models: The Weights that Matter", NeurIPS 2023, arXiv:2306.03805.
  Satopää, Albrecht, Irwin & Raghavan 2011, "Finding a 'Kneedle' in a Haystack:
  Detecting Knee Points in System Behavior", ICDCS workshops.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import masks, prune, scores
from lotto_jax._trainer import _evaluate_fn
from lotto_jax._types import Groups, Mask, Params, Prunable
from lotto_jax.train import ApplyFn

__all__ = ["KNEE_RULES", "Knee", "check_densities", "evaluate_masks", "knee",
           "magnitude_masks"]

KNEE_RULES = ("drop", "kneedle")
"""The rules of :func:`knee` (module docs); the first is the default."""


def check_densities(densities: Sequence[float], name: str = "densities") -> tuple[float, ...]:
    """The densities as floats, each in (0, 1] and distinct.

    Raises:
      ValueError: naming ``name``: empty, not a number, outside (0, 1], repeated.

    Examples:
      >>> check_densities([0.5, 0.1])
      (0.5, 0.1)
    """
    if isinstance(densities, str) or not isinstance(densities, Sequence) or not densities:
        raise ValueError(f"{name}: expected one or more densities in (0, 1], got "
                         f"{densities!r}")
    out = []
    for d in densities:
        if isinstance(d, bool) or not isinstance(d, int | float | np.number):
            raise ValueError(f"{name}: expected numbers in (0, 1], got {d!r}")
        if not (math.isfinite(d) and 0 < d <= 1):
            raise ValueError(f"{name}: expected densities in (0, 1] (the fraction of "
                             f"weights kept), got {d!r}")
        out.append(float(d))
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: expected distinct densities, got {list(out)}")
    return tuple(out)


def magnitude_masks(
    params: Params,
    densities: Sequence[float],
    *,
    scope: str = "global",
    mask: Mask | None = None,
    groups: Groups = "leaf",
    prunable: Prunable = masks.default_prunable,
) -> Mask:
    """One-shot magnitude masks of ``params`` at each density, stacked.

    Each keeps ``round(d · N)`` of the ``N`` prunable weights with the largest
    ``|θ|`` (``scope="global"``: one ranking over every prunable leaf) or
    ``round(d · N_g)`` of each group's ``N_g`` (``scope="layerwise"``), ties
    broken by position, exactly as :func:`lotto_jax.prune.to_density`.

    Args:
      params: the trained weights.
      densities: fractions of the prunable weights kept, in (0, 1], distinct, in
        any order.
      scope: ``"global"`` or ``"layerwise"``.
      mask: the mask the network already has (weights it prunes stay pruned);
        default all-True.
      groups: the groups of ``scope="layerwise"`` (:func:`lotto_jax.masks.group_name`).
      prunable: which leaves are pruned.

    Returns:
      A mask pytree whose leaves have a leading axis of ``len(densities)``: row
      ``i`` is the mask at ``densities[i]``. For ``d1 > d2`` the mask at ``d2``
      is a subset of the mask at ``d1``.

    Raises:
      ValueError: a bad density (naming ``densities``), a bad scope or mask
        (as :func:`lotto_jax.prune.to_density`).

    Examples:
      >>> import jax.numpy as jnp
      >>> m = magnitude_masks({"w": jnp.array([[3.0, -1.0, 2.0, 0.5]])}, [0.25, 0.75])
      >>> m["w"].astype(int).tolist()
      [[[1, 0, 0, 0]], [[1, 1, 1, 0]]]
    """
    densities = check_densities(densities)
    s = scores.magnitude(params)
    current = masks.init(params, prunable) if mask is None else mask
    by_density = {}
    for d in sorted(densities, reverse=True):  # each from the previous: nested
        current = prune.to_density(s, current, d, scope=scope, groups=groups,
                                   prunable=prunable)
        by_density[d] = current
    return jax.tree.map(lambda *ms: jnp.stack(ms), *(by_density[d] for d in densities))


@functools.partial(jax.jit, static_argnames=("apply_fn", "batch_size"))
def _evaluate_all(params, model_state, mask_stack, x, y, *, apply_fn, batch_size):
    evaluate = _evaluate_fn(apply_fn, batch_size)
    return jax.vmap(evaluate, in_axes=(None, None, 0, None, None))(
        params, model_state, mask_stack, x, y)


def evaluate_masks(
    apply_fn: ApplyFn,
    params: Params,
    model_state,
    mask_stack: Mask,
    x: jax.Array,
    y: jax.Array,
    *,
    batch_size: int = 1000,
) -> tuple[jax.Array, jax.Array]:
    """``(losses, accuracies)`` of ``params`` under each row of ``mask_stack``.

    One compiled evaluation vmapped over the masks' leading axis (a new set of
    masks of the same count never recompiles). The network runs in inference
    mode with ``model_state`` as it is (BatchNorm statistics are not
    recomputed for the pruned network).

    Args:
      apply_fn: ``apply_fn(params, model_state, x, train) -> (logits,
        model_state)`` (:func:`lotto_jax.train.classifier`); keep the same object
        across calls to reuse the compilation.
      params: the weights (no leading axis).
      model_state: the non-trained collections (``{}`` for none).
      mask_stack: masks of ``params`` with a leading axis (:func:`magnitude_masks`).
      x, y: the examples and integer labels.
      batch_size: examples per evaluation batch.

    Returns:
      Mean cross-entropy and accuracy per mask, each of shape ``(n_masks,)``.
    """
    return _evaluate_all(params, model_state or {}, mask_stack, x, y, apply_fn=apply_fn,
                         batch_size=int(min(batch_size, np.shape(x)[0])))


class Knee(NamedTuple):
    """The essential sparsity of a curve (:func:`knee`).

    Attributes:
      density: the fraction of weights kept at the knee (1.0: nothing removable).
      sparsity: ``1 − density``, rounded to 12 decimals (0.3, not 0.30000000000000004).
      rule: the rule that found it.
    """

    density: float
    sparsity: float
    rule: str


def knee(
    densities: Sequence[float],
    accuracies: Sequence[float],
    dense_accuracy: float,
    *,
    rule: str = "drop",
    tolerance: float = 0.01,
) -> Knee:
    """The knee ("sharp dropping point") of an accuracy-vs-density curve.

    Args:
      densities: the pruned networks' densities, in (0, 1], distinct, any order
        (a density of 1 is the dense network: ``dense_accuracy`` stands for it).
      accuracies: their accuracies (fractions), one per density.
      dense_accuracy: the accuracy of the unpruned network (density 1).
      rule: ``"drop"`` or ``"kneedle"`` (module docs).
      tolerance: ``"drop"``: the largest accepted fall below ``dense_accuracy``
        (absolute; 0.01 = one accuracy point), in [0, 1).

    Returns:
      A :class:`Knee`.

    Raises:
      ValueError: naming ``densities``, ``accuracies``, ``rule`` or ``tolerance``.

    Examples:
      >>> d = [0.9, 0.5, 0.2, 0.1, 0.05]
      >>> a = [0.98, 0.975, 0.965, 0.90, 0.40]
      >>> knee(d, a, 0.98).density, knee(d, a, 0.98, rule="kneedle").density
      (0.5, 0.2)
    """
    densities = check_densities(densities)
    acc = np.asarray(accuracies, float)
    if acc.shape != (len(densities),) or not np.all(np.isfinite(acc)):
        raise ValueError(f"accuracies: expected {len(densities)} finite values (one per "
                         f"density), got {list(np.ravel(acc))}")
    if rule not in KNEE_RULES:
        raise ValueError(f"rule: expected one of {list(KNEE_RULES)}, got {rule!r}")
    if isinstance(tolerance, bool) or not 0 <= tolerance < 1:
        raise ValueError(f"tolerance: expected an accuracy drop in [0, 1), got {tolerance!r}")
    order = np.argsort(-np.asarray(densities), kind="stable")
    order = order[np.asarray(densities)[order] < 1.0]  # density 1 is the dense network
    d = np.concatenate([[1.0], np.asarray(densities)[order]])
    a = np.concatenate([[float(dense_accuracy)], acc[order]])
    if rule == "drop":
        fails = np.flatnonzero(a < a[0] - tolerance)
        i = (fails[0] - 1) if fails.size else len(d) - 1
    else:
        i = _kneedle(1.0 - d, a)
    return Knee(float(d[i]), round(1.0 - float(d[i]), 12), rule)  # 0.3, not 0.30000000000000004


def _kneedle(x: np.ndarray, y: np.ndarray) -> int:
    """The index of the Kneedle knee of a curve from ``(0, y[0])`` (dense) to its
    sparsest point (module docs)."""
    fall = y[0] - y[-1]
    if x[-1] <= 0 or fall <= 0:
        return len(x) - 1
    diff = x / x[-1] + (y - y[-1]) / fall - 1.0
    return int(np.argmax(diff))  # the first maximum: the dense point on ties at 0
