"""COLT: cyclic overlapping lottery tickets, as pure functions.

COLT (Hossain et al. 2022) splits the *classes* of a dataset into disjoint ranges
(:func:`class_ranges`, :func:`split_classes`: CIFAR-10's 0-4 and 5-9), trains one
network per range from the same θ0 under the current mask, prunes each by the IMP
rule (:func:`lotto_jax.imp.next_mask`: a fraction of the survivors by magnitude,
globally in the paper) and keeps a weight only where *every* partition's network
kept it (:func:`next_mask`: the intersection, :func:`lotto_jax.masks.intersect`).
The survivors rewind to θ0 and the cycle repeats. Removing the union of the
pruned sets makes the density fall faster per round than IMP's ``(1 - p)^r``:
for two partitions whose pruned sets were independent, one round keeps about
``(1 - p)^2`` of the survivors (0.85² ≈ 0.72); for identical ones, ``1 - p``
(COLT is then IMP).

Labels. The networks share θ0, hence the output layer's shape (``num_classes``
of the full dataset). The reference code remaps each range to ``0..k-1``
(``remap=True``: both partitions train the same first ``k`` output units); with
``remap=False`` each keeps its labels, so each trains its own output units of a
shared head.

The loop over rounds, with the run store, the engine and the ticket trained on
the whole training set for evaluation, is ``lotto colt``
(:mod:`lotto_jax.runs.colt`).

References:
  Hossain, Rakib, Elahi, Mohammed & Rahman 2022, "COLT: Cyclic Overlapping Lottery
  Tickets for Faster Pruning of Convolutional Neural Networks", arXiv:2212.12770
  (IEEE TAI); reference code ismail31416/COLT (``utils.get_split``, ``prune.colt``).
  Frankle & Carbin 2019, arXiv:1803.03635.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import data as data_lib
from lotto_jax import imp, masks, scores
from lotto_jax._types import Groups, Mask, Params, Prunable

__all__ = ["class_ranges", "next_mask", "split_classes"]


def _check_partitions(partitions: Any, num_classes: int) -> int:
    if isinstance(partitions, bool) or not isinstance(partitions, int | np.integer) \
            or partitions < 2:
        raise ValueError(f"partitions: expected an int >= 2, got {partitions!r}")
    if partitions > num_classes:
        raise ValueError(
            f"partitions: {partitions} class ranges need at least as many classes, "
            f"the dataset has {num_classes}"
        )
    return int(partitions)


def class_ranges(num_classes: int, partitions: int = 2) -> tuple[tuple[int, int], ...]:
    """The disjoint, contiguous class ranges ``[start, end)`` of the partitions.

    Sizes differ by at most one, the first ranges taking the extra classes
    (``numpy.array_split``'s rule).

    Args:
      num_classes: the dataset's number of classes.
      partitions: the number of ranges, ``2 <= partitions <= num_classes``.

    Returns:
      ``((0, e0), (e0, e1), ..., (e_{P-2}, num_classes))``.

    Raises:
      ValueError: ``partitions`` not an int in ``[2, num_classes]``.

    Examples:
      >>> class_ranges(10), class_ranges(10, 3)
      (((0, 5), (5, 10)), ((0, 4), (4, 7), (7, 10)))
    """
    p = _check_partitions(partitions, num_classes)
    size, extra = divmod(int(num_classes), p)
    ends = np.cumsum([size + (i < extra) for i in range(p)])
    starts = np.concatenate([[0], ends[:-1]])
    return tuple((int(s), int(e)) for s, e in zip(starts, ends, strict=True))


def _part(split: data_lib.Split, lo: int, hi: int, remap: bool, what: str) -> data_lib.Split:
    keep = (split.y >= lo) & (split.y < hi)
    if not keep.any():
        raise ValueError(f"dataset: the {what} split has no example of classes {lo}..{hi - 1}")
    y = split.y[keep]
    return data_lib.Split(split.x[keep], (y - lo if remap else y).astype(np.int32))


def split_classes(
    dataset: data_lib.Dataset, partitions: int = 2, *, remap: bool = True
) -> tuple[data_lib.Dataset, ...]:
    """The dataset cut by classes into :func:`class_ranges`, one per partition.

    Every split (train, validation, test) keeps the examples whose label lies in
    the partition's range, in their original order. The input shape,
    ``num_classes`` (the shared head) and normalisation are the full dataset's.

    Args:
      dataset: the full dataset.
      partitions: the number of class ranges (>= 2).
      remap: labels ``y - start`` (``0..k-1``, the reference code's rule);
        ``False`` keeps them.

    Returns:
      One :class:`lotto_jax.data.Dataset` per range, named
      ``"NAME[classes a-b]"``.

    Raises:
      ValueError: a bad ``partitions``, or a range without an example in a split.

    Examples:
      >>> import numpy as np
      >>> from lotto_jax.data import Dataset, Split
      >>> s = Split(np.zeros((4, 1), np.float32), np.array([3, 0, 2, 1], np.int32))
      >>> ds = Dataset("toy", s, None, s, (1,), 4, {})
      >>> a, b = split_classes(ds)
      >>> a.train.y.tolist(), b.train.y.tolist(), b.name
      ([0, 1], [1, 0], 'toy[classes 2-3]')
    """
    if not isinstance(dataset, data_lib.Dataset):
        raise ValueError(f"dataset: expected a lotto_jax.data.Dataset, got {type(dataset)}")
    out = []
    for lo, hi in class_ranges(dataset.num_classes, partitions):
        val = dataset.validation
        out.append(dataclasses.replace(
            dataset,
            name=f"{dataset.name}[classes {lo}-{hi - 1}]",
            train=_part(dataset.train, lo, hi, remap, "train"),
            validation=None if val is None else _part(val, lo, hi, remap, "validation"),
            test=_part(dataset.test, lo, hi, remap, "test"),
        ))
    return tuple(out)


def next_mask(
    params: Sequence[Params],
    mask: Mask,
    *,
    fraction: float,
    scope: str = "global",
    groups: Groups = "leaf",
    layer_fractions: Mapping[str, float] | None = None,
    score_fn: Callable[[Params], Any] = scores.magnitude,
    prunable: Prunable = masks.default_prunable,
) -> tuple[Mask, tuple[Mask, ...], Any]:
    """One COLT pruning step: prune each partition's trained weights by the IMP
    rule, keep the weights every partition kept.

    Each ``params[i]`` (θT of partition ``i``, trained under ``mask``) is scored
    and loses ``fraction`` of the survivors (:func:`lotto_jax.imp.next_mask`,
    i.e. :func:`lotto_jax.prune.by_fraction`); the new mask is the intersection
    of the partition masks. Its density is at most the smallest of theirs; with
    identical ``params`` it is IMP's mask. Works under ``jit`` and ``vmap``.

    Args:
      params: the trained weights of the partitions (at least 2), each like
        ``mask``.
      mask: the mask they trained under.
      fraction: the fraction of the survivors each partition removes, in (0, 1).
      scope, groups, layer_fractions, score_fn, prunable: as
        :func:`lotto_jax.imp.next_mask` (the paper: ``scope="global"``).

    Returns:
      ``(new_mask, partition_masks, nonfinite)``: ``nonfinite`` counts, per leaf
      and summed over the partitions, NaN or infinite scores on kept weights (the
      caller decides; nothing can be raised under ``jit``).

    Raises:
      ValueError: fewer than 2 partitions, ``fraction`` outside (0, 1), or what
        :func:`lotto_jax.prune.by_fraction` refuses.

    Examples:
      >>> import jax.numpy as jnp
      >>> m = {"w": jnp.ones((1, 4), bool)}
      >>> a = {"w": jnp.array([[4.0, 3.0, 2.0, 1.0]])}
      >>> b = {"w": jnp.array([[1.0, 3.0, 2.0, 4.0]])}
      >>> new, (ma, mb), _ = next_mask([a, b], m, fraction=0.25)
      >>> ma["w"].tolist(), mb["w"].tolist(), new["w"].tolist()
      ([[True, True, True, False]], [[False, True, True, True]], [[False, True, True, False]])

    References:
      Hossain et al. 2022, arXiv:2212.12770 (``prune.colt`` of the reference code).
    """
    if isinstance(params, Mapping) or not isinstance(params, Sequence) or len(params) < 2:
        n = len(params) if isinstance(params, Sequence) else type(params).__name__
        raise ValueError(
            f"params: COLT needs the trained weights of at least 2 partitions (a "
            f"sequence), got {n}"
        )
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) \
            or not 0 < fraction < 1:
        raise ValueError(f"fraction: expected a value in (0, 1), got {fraction!r}")
    parts, bad = [], None
    for p in params:
        m, b = imp.next_mask(p, mask, fraction=fraction, scope=scope, groups=groups,
                             layer_fractions=layer_fractions, score_fn=score_fn,
                             prunable=prunable)
        parts.append(m)
        bad = b if bad is None else jax.tree.map(jnp.add, bad, b)
    return masks.intersect(*parts), tuple(parts), bad
