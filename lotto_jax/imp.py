"""Iterative magnitude pruning (IMP) with rewinding and controls: the lottery-ticket
driver.

Round ``r`` trains the network under mask ``m_r`` from a *rewind point*, scores the
trained weights θT (|θT| by default), and removes a fraction of the surviving weights
(:func:`lotto_jax.prune.by_fraction`) to get ``m_{r+1}``. Round 0 trains the dense
network; after ``rounds`` pruning rounds the density is about ``(1 - p)^rounds``
(exact counts: each layer loses ``round(p · kept)`` weights, rounded half up).

Rewinding modes (``rewind=``), i.e. where round ``r >= 1`` starts:

* ``"init"``: survivors reset to θ0, step 0 (Frankle & Carbin 2019).
* ``"step:K"``: survivors reset to θK, the weights after ``K`` steps of the first,
  dense run; training resumes at step ``K`` with the learning-rate schedule and the
  data order of step ``K`` and a fresh optimizer state, for the remaining
  ``T - K`` steps (Frankle et al. 2020).
* ``"lr"``: learning-rate rewinding: keep the trained θT of the previous round
  (pruned), replay the whole schedule from step 0 (Renda et al. 2020).
* ``"finetune"``: keep θT, train for the same budget at the final learning rate
  ``schedule(T - 1)`` (Renda et al. 2020's fine-tuning baseline).

Controls (``controls=``), run for every round ``r >= 1`` at the trunk's per-layer
densities of that round, from the same rewind point (same start step, schedule and
data order), reusing the trunk's stored masks and weights; the trunk is never
retrained for them:

* ``"reinit"``: the trunk's mask, fresh initial weights θ0' drawn with another key
  by the same initialiser (``init_fn``); for ``step:K`` θ0' starts at step ``K``.
* ``"shuffle"``: each layer's mask permuted at random (:func:`lotto_jax.masks.shuffle`).
* ``"random"``: a random mask with the trunk's exact per-layer counts, from random
  scores (:func:`random_mask`). In distribution this equals ``"shuffle"`` (a
  uniformly random subset of each layer's size); it is an independent draw.

The loop that runs rounds through the run store (resume, stacked controls,
replicates, timing) is :func:`lotto_jax.runs.imp.run_imp`; this module holds the
pure pieces it composes: the rewind policy (:func:`parse_rewind`,
:func:`round_start`), the pruning step (:func:`next_mask`) and the control masks
(:func:`control_mask`, :func:`random_mask`).

References:
  Frankle & Carbin 2019, "The Lottery Ticket Hypothesis", arXiv:1803.03635.
  Frankle, Dziugaite, Roy & Carbin 2020, "Linear Mode Connectivity and the Lottery
  Ticket Hypothesis", arXiv:1912.05671 (and "Stabilizing the LTH", arXiv:1903.01611).
  Renda, Frankle & Carbin 2020, "Comparing Rewinding and Fine-tuning in Neural
  Network Pruning", arXiv:2003.02389.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import masks, prune, scores, structured
from lotto_jax._types import Groups, Mask, Params, PRNGKey, Prunable

__all__ = [
    "CONTROLS",
    "control_key",
    "control_mask",
    "next_mask",
    "parse_rewind",
    "random_mask",
    "round_start",
]

CONTROLS: tuple[str, ...] = ("reinit", "shuffle", "random")
"""The control names, in the order they run."""


def parse_rewind(rewind: str, steps: int) -> tuple[str, int]:
    """Parses a rewinding mode into ``(kind, K)``.

    Args:
      rewind: ``"init"``, ``"step:K"`` with ``0 < K < steps``, ``"lr"`` or
        ``"finetune"``.
      steps: the training steps of one round.

    Returns:
      ``("init" | "step" | "lr" | "finetune", K)`` with ``K = 0`` except for step.

    Raises:
      ValueError: an unknown mode or ``K`` outside ``(0, steps)``.

    Examples:
      >>> parse_rewind("step:100", 1000), parse_rewind("lr", 1000)
      (('step', 100), ('lr', 0))
    """
    if rewind in ("init", "lr", "finetune"):
        return rewind, 0
    if isinstance(rewind, str) and rewind.startswith("step:"):
        k = rewind[len("step:") :]
        if k.isdigit() and 0 < int(k) < steps:
            return "step", int(k)
        raise ValueError(
            f"rewind: {rewind!r}: K must be an integer with 0 < K < steps={steps}"
        )
    raise ValueError(
        f"rewind: expected 'init', 'step:K', 'lr' or 'finetune', got {rewind!r}"
    )


def round_start(rewind: str, round: int, steps: int) -> tuple[str, int, int]:
    """Where round ``round`` starts under a rewinding mode.

    Args:
      rewind: ``"init"``, ``"step:K"``, ``"lr"`` or ``"finetune"``.
      round: the round (0 = the dense run).
      steps: the training steps of one round.

    Returns:
      ``(weights, step, hold_lr)``: ``weights`` is ``"init"`` (θ0), ``"rewind"``
      (θK) or ``"previous"`` (the previous round's θT, pruned); training starts at
      ``step``; ``hold_lr >= 0`` holds the learning rate at ``schedule(hold_lr)``
      (fine-tuning), -1 follows the schedule.

    Examples:
      >>> round_start("step:100", 2, 1000), round_start("finetune", 2, 1000)
      (('rewind', 100, -1), ('previous', 0, 999))
    """
    kind, k = parse_rewind(rewind, steps)
    if round == 0 or kind == "init":
        return "init", 0, -1
    if kind == "step":
        return "rewind", k, -1
    return "previous", 0, (steps - 1 if kind == "finetune" else -1)


def _check_controls(controls: Sequence[str]) -> None:
    if isinstance(controls, str):
        raise ValueError(f"controls: expected a sequence of names, got {controls!r}")
    bad = [c for c in controls if c not in CONTROLS]
    if bad or len(set(controls)) != len(controls):
        raise ValueError(
            f"controls: expected distinct names among {CONTROLS}, got {tuple(controls)}"
        )


def _check_save_every(save_every: int | None) -> None:
    if save_every is not None and (not isinstance(save_every, int) or save_every <= 0):
        raise ValueError(f"save_every: expected a positive int or None, got {save_every!r}")


def _check_save_interval(save_interval: float) -> None:
    if isinstance(save_interval, bool) or not isinstance(save_interval, int | float) \
            or not save_interval >= 0:
        raise ValueError(
            f"save_interval: expected seconds >= 0, got {save_interval!r}"
        )


def random_mask(
    mask: Mask,
    key: PRNGKey,
    *,
    prunable: Prunable = masks.default_prunable,
    groups: Groups = "leaf",
) -> Mask:
    """A random mask with the same kept count as ``mask`` in every pruning group.

    Each group (a prunable leaf with ``groups="leaf"``; a module's kernel and bias
    pooled with ``"layer"``, see :func:`lotto_jax.masks.group_name`) keeps the
    weights with the highest i.i.d. N(0, 1) scores (:func:`lotto_jax.scores.random`),
    exactly as many as ``mask`` keeps there; other leaves are returned unchanged.
    The result is a uniformly random subset of each group: in distribution the same
    as :func:`lotto_jax.masks.shuffle` with the same ``groups``, drawn
    independently. The top scores are selected without a sort (O(n) per group).
    Works under ``jit`` and ``vmap``.

    Args:
      mask: gives the structure and the per-group counts.
      key: a PRNG key.
      prunable: which leaves to redraw.
      groups: ``"leaf"``, ``"layer"`` or a function of the key path.

    Returns:
      The new mask.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> m = {"w": jnp.arange(12).reshape(3, 4) < 5}
      >>> int(random_mask(m, jax.random.key(0))["w"].sum())
      5

    References:
      Frankle & Carbin 2019, arXiv:1803.03635 (random pruning control).
    """
    draws = scores.random(jax.tree.map(lambda m: jnp.zeros(jnp.shape(m)), mask), key=key)
    flat_m, treedef = jax.tree_util.tree_flatten_with_path(mask)
    flat_s = jax.tree.leaves(draws)
    members: dict[str, list[int]] = {}
    for i, (path, m) in enumerate(flat_m):
        if prunable(path, m):
            members.setdefault(masks.group_name(path, groups), []).append(i)
    out = [m for _, m in flat_m]
    for idx in members.values():
        s = jnp.concatenate([jnp.ravel(flat_s[i]) for i in idx])
        k = sum(jnp.sum(out[i], dtype=jnp.int32) for i in idx)
        new, offset = _top_k(s, k), 0
        for i in idx:
            size = int(np.size(out[i]))
            out[i] = new[offset : offset + size].reshape(jnp.shape(out[i]))
            offset += size
    return jax.tree_util.tree_unflatten(treedef, out)


def _top_k(s: jax.Array, k: jax.Array) -> jax.Array:
    """The ``k`` largest entries of a flat array, ties to the lowest positions, for a
    traced ``k``: the set ``argsort(-s, stable=True)[:k]`` (-0 ties with 0; a NaN
    counts as the largest value here, where that sort would put it last). For
    float32 an O(n) selection (:func:`lotto_jax.prune._top_mask`), not a sort.
    """
    if s.dtype != jnp.float32:
        return jnp.argsort(jnp.argsort(-s, stable=True), stable=True) < k
    return prune._top_mask(s, None, k, prefer="first")


def control_mask(control: str, mask: Mask, key: PRNGKey, *,
                 prunable: Prunable = masks.default_prunable, groups: Groups = "leaf") -> Mask:
    """The mask a control trains under, from the trunk's ``mask`` of that round:
    ``"reinit"`` keeps it, ``"shuffle"`` permutes each group
    (:func:`lotto_jax.masks.shuffle`), ``"random"`` draws each group's count anew
    (:func:`random_mask`). Works under ``jit`` and ``vmap``."""
    _check_controls((control,))
    if control == "reinit":
        return mask
    if control == "shuffle":
        return masks.shuffle(mask, key, prunable=prunable, groups=groups)
    return random_mask(mask, key, prunable=prunable, groups=groups)


def control_key(key: PRNGKey, control: str, round: int) -> PRNGKey:
    """The key of ``control`` in round ``round``:
    ``fold_in(fold_in(key, CONTROLS.index(control)), round)``."""
    _check_controls((control,))
    return jax.random.fold_in(jax.random.fold_in(key, CONTROLS.index(control)), round)


def next_mask(
    params: Params,
    mask: Mask,
    *,
    fraction: float,
    scope: str = "layerwise",
    groups: Groups = "leaf",
    layer_fractions: Mapping[str, float] | None = None,
    score_fn: Callable[[Params], Any] = scores.magnitude,
    prunable: Prunable = masks.default_prunable,
    structure: str | structured.Structure = "weight",
    topology: Any = None,
) -> tuple[Mask, Any]:
    """One IMP pruning step: score the trained weights, remove ``fraction`` of the
    survivors (:func:`lotto_jax.prune.by_fraction`; whole neurons, channels, blocks
    or N:M groups under another ``structure``: :func:`lotto_jax.structured.prune_fraction`,
    with the model's ``topology``).

    Returns:
      ``(new_mask, nonfinite)``: ``nonfinite`` counts, per leaf, the NaN or
      infinite scores on kept weights (the caller decides whether that is an
      error: under ``jit`` nothing can be raised here; likewise a unit group
      emptied by structured pruning: :func:`lotto_jax.structured.empty_groups`).
    """
    s = score_fn(params)
    bad = jax.tree.map(lambda x, k: jnp.sum(k & ~jnp.isfinite(x)), s, mask)
    new = structured.prune_fraction(
        structure, s, mask, fraction, topology=topology, scope=scope, groups=groups,
        layer_fractions=layer_fractions, prunable=prunable)
    return new, bad
