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

Every step ends in the :mod:`lotto_jax.store` (when a store is given): a killed run
resumes from its last checkpoint and ends bit-for-bit where an uninterrupted run
would. The trainer is built once; every round and control runs through the same
compiled step.

Many tickets in one compiled step:

* **Replicates** (``replicates=True``; ``lotto imp --replicates S``): θ0, the model
  state, ``data_key`` and ``key`` carry a leading replicate axis of size ``S``. The
  ``S`` trunks train together in one vmapped step (:func:`lotto_jax.train.fit` with
  ``replicates=True``), each round prunes each replicate's own θT
  (:func:`lotto_jax.prune.by_fraction` vmapped over the replicate axis), and every
  stored mask, weight and state keeps the axis; metrics become per-replicate lists
  (the report shows mean ± std). :func:`main` draws replicate ``i`` from init seed
  ``seed + i``, data order ``data_seed + i`` and control key ``seed + i``: replicate
  0 is the single run.
* **Stacked controls**: the unfinished controls of a round (× replicates) are
  stacked along the replicate axis and trained by one ``fit`` call. Each keeps its
  own directory (``controls/NAME/round_NNN/``), mid-round checkpoints and metrics;
  a finished control is never retrained, and the ones resumed from checkpoints at
  different steps train in separate stacks. Stacked results equal one-by-one
  training (``stack_controls=False``) to float rounding (vmapped matmuls).
* **Compiles**: the plain train chunk compiles once (the trunk of a single run, and
  a control trained alone); the vmapped chunk once per distinct stack size: ``S``
  for the trunk of an ``S``-replicate run and ``k·S`` for ``k`` controls trained
  together. So a run with ``c >= 2`` controls compiles the train chunk twice
  (``S = 1``: plain + ``c``; ``S > 1``: ``S`` + ``c·S``); one control with
  ``S = 1``: once. Evaluation compiles likewise (per stack size and eval-set shape).
  A resume that finds some controls of a round finished adds the size of the rest.
* **Cheap checkpoints**: store writes run in call order on one background thread
  (the trees are first copied on device, so the donated training state can move
  on); a read waits only for queued writes to its own path, and the store's commit
  protocol (manifest written after orbax finishes, the metrics marker last) is
  unchanged, so a kill at any time leaves exactly what a synchronous run would
  have left at some earlier instant. Mid-round checkpoints are taken every
  ``save_interval`` seconds (default 60) unless ``save_every`` steps are asked for.
* **Pruning**: scores and masks are one jitted call per round (vmapped over
  replicates); the top-k selections of :func:`lotto_jax.prune.by_fraction` and
  :func:`random_mask` are an O(n) bitwise search, not a sort (10-20x faster on
  CPU). Pruning and the control masks are compiled in a background thread while
  round 0 trains (one extra call on θ0).
* **Timing**: :attr:`ImpResult.timing` splits each round's wall time into training,
  evaluation, pruning (scores, masks, control masks and draws) and checkpointing
  (main-thread time in the store, waits included), measured with
  ``block_until_ready``; ``timing=True`` also writes each network's split into
  its ``metrics.json`` (off by default: wall times would make re-runs differ).
* **Meshes**: with ``mesh=`` (``lotto imp --mesh data=8``) every start state is
  placed with :func:`lotto_jax.sharding.place_state` and every mask like its
  params, so the trainer built on that mesh compiles once per stack size.

References:
  Frankle & Carbin 2019, "The Lottery Ticket Hypothesis", arXiv:1803.03635.
  Frankle, Dziugaite, Roy & Carbin 2020, "Linear Mode Connectivity and the Lottery
  Ticket Hypothesis", arXiv:1912.05671 (and "Stabilizing the LTH", arXiv:1903.01611).
  Renda, Frankle & Carbin 2020, "Comparing Rewinding and Fine-tuning in Neural
  Network Pruning", arXiv:2003.02389.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import _imp_runner as _runner
from lotto_jax import common, masks, models, prune, scores, train
from lotto_jax import data as data_lib
from lotto_jax._types import Groups, Mask, Params, PRNGKey, Prunable
from lotto_jax.store import CorruptCheckpointError, RunStore, round_name

__all__ = [
    "CONTROLS",
    "MUTABLE_FIELDS",
    "TIMING_KEYS",
    "ImpConfig",
    "ImpResult",
    "RoundResult",
    "main",
    "parse_rewind",
    "random_mask",
    "run_imp",
]

CONTROLS: tuple[str, ...] = ("reinit", "shuffle", "random")
"""The control names, in the order they run."""

MUTABLE_FIELDS: tuple[str, ...] = (
    "rounds", "controls", "save_every", "save_interval", "timing", "out", "overwrite",
    "new_dir", "run.data_dir", "recipe", "repair",
)
"""ImpConfig fields that may change when a run directory is resumed."""

TIMING_KEYS: tuple[str, ...] = ("train_s", "eval_s", "prune_s", "checkpoint_s")
"""The parts of a round's wall time in :attr:`ImpResult.timing` (plus ``total_s``)."""


@dataclasses.dataclass(frozen=True)
class ImpConfig:
    """An IMP run: ``lotto imp --model lenet300 --rounds 10 --rewind step:500``.

    Attributes:
      run: model, data, seeds and training of every round (``--replicates S``
        trains S replicate runs together, ``--mesh data=N`` spreads batches over
        devices).
      rounds: pruning rounds; rounds ``0..rounds`` are trained (round 0 dense).
        May be raised on an existing run to extend it.
      fraction: fraction of the surviving weights removed per round (Frankle &
        Carbin 2019: 0.2 for fully connected layers).
      output_fraction: fraction removed per round from the ``output`` layer (0.1 in
        Frankle & Carbin 2019); ``None`` prunes it like the others.
      scope: ``"layerwise"`` (each layer loses ``fraction`` of its survivors) or
        ``"global"`` (one threshold over all layers; the ``output`` layer is pruned
        on its own when ``output_fraction`` is set).
      rewind: ``"init"``, ``"step:K"``, ``"lr"`` or ``"finetune"`` (module docs).
      controls: any of ``reinit``, ``shuffle``, ``random``, run at every round >= 1,
        trained together in one vmapped step. Controls may be added to a finished
        run: the trunk is not retrained.
      prune_biases: prune biases too (every leaf), as the MNIST-1D lottery
        notebook does; by default only kernels (``ndim >= 2``).
      groups: what one layer is for ``scope="layerwise"``, ``output_fraction``
        and the shuffle / random controls: ``"layer"`` ranks a module's prunable
        leaves together (with ``prune_biases``, kernel and bias pooled: the
        notebook's rule); ``"leaf"`` ranks every leaf on its own. The same when
        only kernels are pruned.
      out: the run directory (see :mod:`lotto_jax.store` for its layout).
      save_every: steps between mid-round checkpoints, taken at evaluation points;
        ``None``: every ``save_interval`` seconds.
      save_interval: with ``save_every=None``, seconds of training between
        mid-round checkpoints (at evaluation points); 0 checkpoints at every
        evaluation.
      timing: write each network's wall-time split (train, eval, prune,
        checkpoint) into its ``metrics.json`` and print the split per round.
      overwrite: delete an existing run in ``out`` and start afresh.
      new_dir: if ``out`` holds a run with another config, run in ``out_1``,
        ``out_2``, ... instead of refusing.
      recipe: a named preset of the papers' settings (``lotto recipes``): its
        values are the defaults of every other flag, which override them.
      repair: before running, verify every stored item, print the corrupt or
        partial units and discard them (a finished round with a corrupt item
        with its controls and every later round; a corrupt mid-round checkpoint
        alone; a control's round alone), then recompute them
        (:mod:`lotto_jax.repair`).
    """

    run: common.RunConfig = dataclasses.field(default_factory=common.RunConfig)
    rounds: int = 5
    fraction: float = 0.2
    output_fraction: float | None = 0.1
    scope: str = "layerwise"
    rewind: str = "init"
    controls: tuple[str, ...] = ()
    prune_biases: bool = False
    groups: str = "layer"
    out: str = "runs/imp"
    save_every: int | None = None
    save_interval: float = 60.0
    timing: bool = False
    overwrite: bool = False
    new_dir: bool = False
    recipe: str | None = None
    repair: bool = False

    def __post_init__(self):
        if not isinstance(self.rounds, int) or self.rounds < 0:
            raise ValueError(f"rounds: expected an int >= 0, got {self.rounds!r}")
        if not 0 <= self.fraction < 1:
            raise ValueError(f"fraction: expected a value in [0, 1), got {self.fraction}")
        if self.output_fraction is not None and not 0 <= self.output_fraction < 1:
            raise ValueError(
                f"output_fraction: expected a value in [0, 1) or None, "
                f"got {self.output_fraction}"
            )
        if self.scope not in ("layerwise", "global"):
            raise ValueError(f"scope: expected 'layerwise' or 'global', got {self.scope!r}")
        if self.groups not in masks.GROUPINGS:
            raise ValueError(
                f"groups: expected one of {masks.GROUPINGS}, got {self.groups!r}"
            )
        _check_controls(self.controls)
        parse_rewind(self.rewind, self.run.train.steps)
        _check_save_every(self.save_every)
        _check_save_interval(self.save_interval)


class RoundResult(NamedTuple):
    """One trained network of an IMP run (or its replicates).

    Attributes:
      round: the round index (0 = dense).
      control: ``None`` for the trunk, else the control's name.
      mask: the mask it was trained under (with a leading replicate axis for
        replicated runs).
      metrics: the JSON record of ``metrics.json``: ``density``, ``layers``
        (per-layer ``kept``, ``total``, ``density``), ``final_test_accuracy``,
        ``early_stop_step``, ``early_stop_test_accuracy``, ``best_test_accuracy``,
        ``curve`` (evaluation records), ``start_step``, ``hold_lr``, and with
        ``timing=True`` ``timing``. For replicated runs the accuracies, steps,
        curve values and per-layer counts are lists over replicates and
        ``density`` is their mean.
    """

    round: int
    control: str | None
    mask: Mask
    metrics: dict[str, Any]

    @property
    def density(self) -> float:
        return self.metrics["density"]


class ImpResult(NamedTuple):
    """What :func:`run_imp` produced.

    Attributes:
      rounds: the trunk's rounds ``0..rounds``.
      controls: control name -> its rounds ``1..rounds``.
      params: θT of the last trunk round (the final ticket's weights, pruned).
      model_state: its model state.
      directory: the run directory, or ``None`` without a store.
      timing: per round, the wall-time split of what this call did there:
        ``{"round", "train_s", "eval_s", "prune_s", "checkpoint_s", "total_s"}``
        (trunk and controls together; see the module docs).
    """

    rounds: list[RoundResult]
    controls: dict[str, list[RoundResult]]
    params: Params
    model_state: Any
    directory: str | None
    timing: list[dict[str, float]] | None = None


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


def _control_mask(control: str, mask: Mask, key: PRNGKey, prunable: Prunable,
                  groups: Groups) -> Mask:
    if control == "reinit":
        return mask
    if control == "shuffle":
        return masks.shuffle(mask, key, prunable=prunable, groups=groups)
    return random_mask(mask, key, prunable=prunable, groups=groups)


def _replica(leaf, stacked: bool):
    """What ``prunable`` sees of a leaf: one replicate's shape when stacked."""
    return jax.ShapeDtypeStruct(np.shape(leaf)[1:], leaf.dtype) if stacked else leaf


def _layers(mask: Mask, prunable: Prunable, stacked: bool = False) -> dict[str, Any]:
    """Total and per-layer kept counts and densities of the prunable leaves.

    Stacked masks give per-replicate lists of counts and densities, and ``density``
    is their mean.
    """
    if stacked:
        host = jax.tree.map(np.asarray, mask)
        n = jax.tree.leaves(host)[0].shape[0]
        per = [_layers(jax.tree.map(lambda m, i=i: m[i], host), prunable) for i in range(n)]
        return {
            "density": float(np.mean([p["density"] for p in per])),
            "kept": [p["kept"] for p in per],
            "total": per[0]["total"],
            "layers": {
                name: {"kept": [p["layers"][name]["kept"] for p in per],
                       "total": layer["total"],
                       "density": [p["layers"][name]["density"] for p in per]}
                for name, layer in per[0]["layers"].items()
            },
        }
    layers = {}
    for path, m in jax.tree_util.tree_flatten_with_path(mask)[0]:
        if prunable(path, m):
            kept, total = int(np.asarray(m).sum()), int(np.size(m))
            layers[masks.path_str(path)] = {
                "kept": kept, "total": total, "density": kept / total,
            }
    kept = sum(v["kept"] for v in layers.values())
    total = sum(v["total"] for v in layers.values())
    return {"density": kept / total, "kept": kept, "total": total, "layers": layers}


def _metrics(result: train.FitResult, mask, prunable, stacked, **extra) -> dict[str, Any]:
    return {
        **extra,
        **_layers(mask, prunable, stacked),
        **result.metrics(),
    }


@jax.jit
def _copy(tree):
    # The train chunk donates its state: never hand it arrays we keep.
    return jax.tree.map(jnp.copy, tree)


_init_mask = jax.jit(masks.init, static_argnums=1)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _control_masks(control, mask, key, prunable, stacked, groups):
    """The control's mask, per replicate (own key) when ``stacked``."""
    one = lambda m, k: _control_mask(control, m, k, prunable, groups)  # noqa: E731
    return jax.vmap(one)(mask, key) if stacked else one(mask, key)


def _control_key(key, index: int, r: int, stacked: bool):
    one = lambda k: jax.random.fold_in(jax.random.fold_in(k, index), r)  # noqa: E731
    return jax.vmap(one)(key) if stacked else one(key)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _prune(rule, final_params, mask, stacked=False):
    """``rule = (score_fn, fraction, scope, groups, layer_fractions items, prunable)``:
    the next mask, and per leaf the count of non-finite scores on kept weights
    (per replicate when ``stacked``: each replicate is pruned on its own θT)."""
    score_fn, fraction, scope, groups, layer_fractions, prunable = rule

    def one(p, m):
        s = score_fn(p)
        bad = jax.tree.map(lambda x, k: jnp.sum(k & ~jnp.isfinite(x)), s, m)
        new = prune.by_fraction(s, m, fraction, scope=scope, groups=groups,
                                layer_fractions=dict(layer_fractions), prunable=prunable)
        return new, bad

    return jax.vmap(one)(final_params, mask) if stacked else one(final_params, mask)


def _fingerprint(fn: Callable) -> str:
    """A stable name for a function (no memory addresses): recorded, then compared."""
    if isinstance(fn, functools.partial):
        return f"partial({_fingerprint(fn.func)})"
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{module}.{getattr(fn, '__qualname__', None) or type(fn).__qualname__}"


def _key_list(key) -> list:
    if jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).tolist()


def _trees_equal(a, b) -> bool:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    return ta == tb and all(
        np.shape(x) == np.shape(y) and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb, strict=True)
    )


def _draw(init_fn, key, stacked: bool) -> dict[str, Any]:
    """Fresh ``{"params", "model_state"}`` from ``init_fn`` (one per replicate key)."""
    if not stacked:
        return dict(zip(("params", "model_state"), init_fn(key), strict=True))
    return common.stack([_draw(init_fn, k, False) for k in key])


def _replicate_count(params0, model_state0, data_key, key) -> int:
    sizes = {name: [np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(tree)]
             for name, tree in (("params0", params0), ("model_state0", model_state0),
                                ("data_key", data_key), ("key", key))}
    flat = {s for v in sizes.values() for s in v}
    if len(flat) != 1 or None in flat:
        raise ValueError(
            "replicates: params0, model_state0, data_key and key must all carry the "
            "same leading replicate axis; leading sizes: "
            + ", ".join(f"{k}: {sorted(set(v), key=str)}" for k, v in sizes.items())
        )
    return flat.pop()


# ----------------------------------------------------------------------------------
# the driver


def run_imp(
    trainer: train.Trainer,
    params0: Params,
    model_state0: Any,
    dataset: data_lib.Dataset,
    *,
    rounds: int,
    fraction: float = 0.2,
    scope: str = "layerwise",
    groups: Groups = "leaf",
    layer_fractions: Mapping[str, float] | None = None,
    rewind: str = "init",
    controls: Sequence[str] = (),
    data_key: PRNGKey,
    key: PRNGKey,
    store: RunStore | str | None = None,
    score_fn: Callable[[Params], Any] = scores.magnitude,
    prunable: Prunable = masks.default_prunable,
    init_fn: Callable[[PRNGKey], tuple[Params, Any]] | None = None,
    save_every: int | None = None,
    save_interval: float = 60.0,
    replicates: bool = False,
    stack_controls: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    timing: bool = False,
    progress: bool | None = None,
) -> ImpResult:
    """Runs IMP for ``rounds`` pruning rounds, with rewinding and controls.

    Works with any params pytree and ``apply_fn`` (through ``trainer``). With a
    ``store`` every mask, θ0, θK, final weights and metrics are saved; re-running
    the same call on the same store skips finished rounds and controls and resumes
    an unfinished one from its last checkpoint.

    Args:
      trainer: from :func:`lotto_jax.train.make_trainer`, built once; every round
        and control reuses its compiled step (module docs: compiles).
      params0: θ0, the initial weights.
      model_state0: the initial non-trained collections (``{}`` if none).
      dataset: train / validation / test arrays.
      rounds: pruning rounds; rounds ``0..rounds`` are trained.
      fraction: fraction of the surviving prunable weights removed per round.
      scope: ``"layerwise"`` or ``"global"`` (:func:`lotto_jax.prune.by_fraction`).
      groups: the pruning groups of ``scope="layerwise"``, of ``layer_fractions``
        and of the shuffle and random controls: ``"leaf"`` (each leaf on its
        own, as :func:`lotto_jax.prune.by_fraction`), ``"layer"`` (a module's
        prunable leaves ranked together: kernel and bias when biases are pruned,
        the MNIST-1D notebook's rule and ``lotto imp``'s default; the same as
        ``"leaf"`` when only kernels are) or a function ``(key_path) -> name``.
      layer_fractions: ``{regex: fraction}`` for groups pruned at their own rate,
        e.g. ``{"^output(/|$)": 0.1}``.
      rewind: ``"init"``, ``"step:K"``, ``"lr"`` or ``"finetune"`` (module docs).
      controls: any of ``"reinit"``, ``"shuffle"``, ``"random"``.
      data_key: the key of the data order (shared by all rounds and controls).
      key: the key of the controls (fresh weights, shuffles, random masks); the
        control ``c`` of round ``r`` uses ``fold_in(fold_in(key, index(c)), r)``.
      store: a :class:`lotto_jax.store.RunStore`, a directory, or ``None`` to keep
        everything in memory.
      score_fn: ``score_fn(params) -> scores``; higher scores are kept.
      prunable: which leaves are pruned (:func:`lotto_jax.masks.all_leaves` prunes
        biases too).
      init_fn: ``init_fn(key) -> (params, model_state)``, a fresh draw of the
        initialiser (one replicate); required by the ``"reinit"`` control.
      save_every: steps between mid-round checkpoints (at evaluation points);
        ``None``: every ``save_interval`` seconds.
      save_interval: with ``save_every=None``, seconds between mid-round
        checkpoints (taken at evaluation points); 0: at every evaluation.
      replicates: ``params0``, ``model_state0``, ``data_key`` and ``key`` carry a
        leading replicate axis; the replicates train together (module docs).
      stack_controls: train a round's unfinished controls together in one vmapped
        step (else one after another).
      mesh: the mesh the trainer was built on (``make_trainer(..., mesh=)``):
        start states are placed on it.
      timing: also write each network's wall-time split into its metrics.
      progress: show progress bars (default: when stderr is a terminal).

    Returns:
      An :class:`ImpResult`.

    Raises:
      ValueError: bad arguments, or ``params0`` differing from the θ0 stored in
        ``store``.
      lotto_jax.store.ConfigMismatchError: ``store`` holds a run made with other
        arguments (``rounds`` and ``controls`` may change).
      lotto_jax.store.CorruptCheckpointError: a stored checkpoint is altered
        (:func:`lotto_jax.repair.repair` discards what depends on it).
      lotto_jax.store.RunLockedError: ``store`` is a directory another process
        writes (a directory opened here is released on return or error).

    References:
      Frankle & Carbin 2019, arXiv:1803.03635; Frankle et al. 2020,
      arXiv:1912.05671; Renda et al. 2020, arXiv:2003.02389.
    """
    steps = trainer.config.steps
    kind, k_step = parse_rewind(rewind, steps)
    _check_controls(controls)
    _check_save_every(save_every)
    _check_save_interval(save_interval)
    if not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds: expected an int >= 0, got {rounds!r}")
    if "reinit" in controls and init_fn is None:
        raise ValueError("init_fn: the 'reinit' control needs init_fn(key) -> (params, model_state)")
    model_state0 = {} if model_state0 is None else model_state0
    n_rep = _replicate_count(params0, model_state0, data_key, key) if replicates else None
    controls = [c for c in CONTROLS if c in controls]
    record = {
        "rounds": rounds, "fraction": fraction, "scope": scope,
        "groups": groups if isinstance(groups, str) else _fingerprint(groups),
        "layer_fractions": dict(layer_fractions or {}), "rewind": rewind,
        "controls": controls, "train": common.config_to_dict(trainer.config),
        "num_train": trainer.num_train, "score_fn": _fingerprint(score_fn),
        "prunable": _fingerprint(prunable),
        "data_key": _key_list(data_key),
        "key": _key_list(key),
    }
    if replicates:
        record["replicates"] = n_rep
    owned = None  # a store opened here is closed (its lock released) here
    if isinstance(store, str):
        store = owned = RunStore.open(store, record, mutable=("rounds", "controls"))
    clock = _runner.Clock()
    writer = None
    try:
        if store is not None:
            store.check_record("driver", record, mutable=("rounds", "controls"))
            store = writer = _runner.WriteBehind(store, clock)
        result = _run(
            trainer, params0, model_state0, dataset, rounds=rounds, fraction=fraction,
            scope=scope, groups=groups, layer_fractions=layer_fractions, kind=kind, k_step=k_step,
            rewind=rewind, controls=controls, data_key=data_key, key=key, store=store,
            score_fn=score_fn, prunable=prunable, init_fn=init_fn,
            save_every=save_every, save_interval=save_interval, replicates=replicates,
            stack_controls=stack_controls, mesh=mesh, timing=timing, progress=progress,
            clock=clock,
        )
        if writer is not None:
            t = time.perf_counter()
            writer.close()  # the last writes land before we return
            dt = time.perf_counter() - t
            result.timing[-1]["checkpoint_s"] += dt
            result.timing[-1]["total_s"] += dt
    except BaseException:
        if writer is not None:
            writer.close(raise_errors=False)
        raise
    finally:
        if owned is not None:
            owned.close()
    return result


def _run(trainer, params0, model_state0, dataset, *, rounds, fraction, scope, groups,
         layer_fractions, kind, k_step, rewind, controls, data_key, key, store, score_fn,
         prunable, init_fn, save_every, save_interval, replicates, stack_controls, mesh,
         timing, progress, clock) -> ImpResult:
    steps = trainer.config.steps
    rule = (score_fn, fraction, scope, groups, tuple((layer_fractions or {}).items()),
            prunable)

    def prune_next(final_params, mask):
        with clock("prune"):
            ready()
            new, bad = _prune(rule, final_params, mask, replicates)
            flat_bad = jax.tree_util.tree_flatten_with_path(bad)[0]
            for (path, n), m in zip(flat_bad, jax.tree.leaves(mask), strict=True):
                if prunable(path, _replica(m, replicates)) and int(np.sum(n)):
                    raise ValueError(
                        f"score_fn: scores{jax.tree_util.keystr(path)} has {int(np.sum(n))} "
                        "NaN or infinite scores on kept weights"
                    )
            return jax.block_until_ready(new)

    mask_all = _init_mask(params0, prunable)
    jax.eval_shape(lambda p, m: _prune(rule, p, m, replicates), params0, mask_all)

    def warm():
        # Compiles pruning and the control masks (seconds on a CPU) while round 0
        # trains: the same signatures as the real calls, so they hit the cache.
        try:
            p, m = params0, mask_all
            if mesh is not None:  # trained weights, hence masks, live on the mesh
                from lotto_jax.sharding import param_shardings, place

                p, m = (place(t, param_shardings(t, mesh)) for t in (p, m))
            m = _prune(rule, p, m, replicates)[0]
            for ci, c in enumerate(CONTROLS):
                if c in controls and c != "reinit":
                    _control_masks(c, m, _control_key(key, ci, 1, replicates),
                                   prunable, replicates, groups)
        except Exception:  # the real call raises it where it belongs
            pass

    ready: Callable[[], None] = lambda: None  # noqa: E731
    if rounds > 0 and not (store is not None and store.has(f"{round_name(rounds)}/mask")):
        # Not a daemon: when the main thread fails early (a corrupt checkpoint, say),
        # this thread may still be inside XLA compiling at interpreter exit, where a
        # daemon thread is ended by pthread_exit; its forced unwind hits a C++
        # catch(...) in XLA, and the process aborts ("terminate called after
        # throwing an instance of ''", exit 134). Exit waits for it instead.
        warmer = threading.Thread(target=warm, name="lotto-warm", daemon=False)
        warmer.start()
        ready = warmer.join
    weights_target = _runner.abstract({"params": params0, "model_state": model_state0})
    mask_target = _runner.abstract(mask_all)
    runner = _runner.Runner(trainer, dataset, data_key, store, save_every=save_every,
                     save_interval=save_interval, progress=progress, stacked=replicates,
                     mesh=mesh, clock=clock)

    def save(item, tree):
        if store is not None:
            store.save(item, tree)

    def finished(prefix):
        if store is None or not store.exists(f"{prefix}/metrics.json"):
            return False
        store.clear_steps(prefix)  # leftovers of a kill right after the marker
        return True

    def load_or(item, target, make):
        if store is not None and store.has(item):
            return store.restore(item, target)
        if store is not None and finished(item.rsplit("/", 1)[0]):
            store.verify(item)  # a finished round lost an item: raises
        tree = make()
        save(item, tree)
        return tree

    # θ0
    theta0 = {"params": params0, "model_state": model_state0}
    if store is not None and store.has("init"):
        stored = store.restore("init", weights_target)
        if not _trees_equal(stored, theta0):
            raise ValueError(
                f"params0: differs from the θ0 stored in {store.path('init')}; pass the "
                "same initial weights (same seed) or use another directory"
            )
        theta0 = stored
    else:
        save("init", theta0)
    memo: dict[str, Any] = {}  # θK, kept in memory once known

    def theta_k():
        if "rewind" not in memo:
            if store is None or not store.has("rewind"):
                raise CorruptCheckpointError(
                    f"{store.path('rewind') if store else 'rewind'}: the rewind point "
                    f"θ{k_step} is missing although round 0 finished"
                )
            memo["rewind"] = store.restore("rewind", weights_target)
        return memo["rewind"]

    finals: dict[int, Any] = {}  # θT of the last two trunk rounds

    def final(r):
        if r not in finals:
            finals[r] = store.restore(f"{round_name(r)}/final", weights_target)
        for old in [q for q in finals if q < r - 1]:
            del finals[old]
        return finals[r]

    def source(r):
        """(weights, start step, hold_lr) of round r's rewind point."""
        if r == 0 or kind == "init":
            return theta0, 0, -1
        if kind == "step":
            return theta_k(), k_step, -1
        return final(r - 1), 0, (steps - 1 if kind == "finetune" else -1)

    def finish(u: _runner.Unit, state, res, spent):
        out = {"params": state.params, "model_state": state.model_state}
        metrics = _metrics(res, u.mask, prunable, replicates, start_step=u.step,
                           hold_lr=u.hold, rewind=rewind)
        if timing:
            metrics["timing"] = spent
        if store is not None:
            store.save(f"{u.prefix}/final", out)
            store.write_json(f"{u.prefix}/metrics.json", metrics)  # the round is done
            store.clear_steps(u.prefix)
        return out, metrics

    trunk: list[RoundResult] = []
    ctrl: dict[str, list[RoundResult]] = {c: [] for c in controls}
    timings: list[dict[str, float]] = []
    mask = None
    for r in range(rounds + 1):
        t_round, snap = time.perf_counter(), clock.snapshot()
        name = round_name(r)
        prev = mask
        mask = load_or(
            f"{name}/mask", mask_target,
            (lambda: mask_all) if r == 0
            else (lambda r=r, prev=prev: prune_next(final(r - 1)["params"], prev)),
        )
        density = _layers(mask, prunable, replicates)["density"]

        def describe(names, r=r, density=density):
            return f"{'+'.join(names)} {r}/{rounds} ({100 * density:.1f}%)"

        if finished(name):
            metrics = store.read_json(f"{name}/metrics.json")
        else:
            weights, step, hold = source(r)
            stop = on_stop = None
            if kind == "step" and r == 0:
                def on_stop(st):
                    memo["rewind"] = _copy({"params": st.params,
                                            "model_state": st.model_state})
                    save("rewind", memo["rewind"])
                stop = k_step
                if store is not None and store.has("rewind"):
                    stop = on_stop = None
            unit = _runner.Unit(name, "round", weights, mask, step, hold)
            ((state, res),) = runner.train([unit], describe, stop_at=stop, on_stop=on_stop)
            finals[r], metrics = finish(unit, state, res, clock.since(snap))
            final(r)  # drops older rounds from memory
        trunk.append(RoundResult(r, None, mask, metrics))
        if r > 0:
            for c, rr in _run_controls(
                r, mask, controls, key=key, store=store, prunable=prunable, groups=groups,
                init_fn=init_fn, replicates=replicates, stack_controls=stack_controls,
                runner=runner, clock=clock, load_or=load_or, finished=finished,
                source=source, finish=finish, describe=describe, mask_target=mask_target,
                weights_target=weights_target, ready=ready,
            ):
                ctrl[c].append(rr)
        timings.append({"round": r, **clock.since(snap),
                        "total_s": time.perf_counter() - t_round})
    last = final(rounds)
    return ImpResult(
        rounds=trunk, controls=ctrl, params=last["params"],
        model_state=last["model_state"],
        directory=None if store is None else store.directory, timing=timings,
    )


def _run_controls(r, mask, controls, *, key, store, prunable, groups, init_fn, replicates,
                  stack_controls, runner, clock, load_or, finished, source, finish,
                  describe, mask_target, weights_target, ready):
    """The controls of round ``r``: ``[(name, RoundResult)]`` in CONTROLS order; the
    unfinished ones trained together (one stack) unless ``stack_controls`` is off."""
    done: dict[str, RoundResult] = {}
    todo: list[_runner.Unit] = []
    snap = clock.snapshot()
    for ci, c in enumerate(CONTROLS):
        if c not in controls:
            continue
        ckey = _control_key(key, ci, r, replicates)
        cname = round_name(r, c)

        def make_mask(c=c, ckey=ckey):
            with clock("prune"):
                ready()
                return jax.block_until_ready(
                    _control_masks(c, mask, ckey, prunable, replicates, groups))

        cmask = load_or(f"{cname}/mask", mask_target, make_mask)
        if finished(cname):
            done[c] = RoundResult(r, c, cmask, store.read_json(f"{cname}/metrics.json"))
            continue
        weights, step, hold = source(r)
        if c == "reinit":
            def draw(ckey=ckey):
                with clock("prune"):
                    return jax.block_until_ready(_draw(init_fn, ckey, replicates))

            weights = load_or(f"{cname}/init", weights_target, draw)
        todo.append(_runner.Unit(cname, c, weights, cmask, step, hold))
    stacks = [todo] if stack_controls and todo else [[u] for u in todo]
    for units in stacks:
        trained = runner.train(units, describe)
        spent = {**clock.since(snap), "stack": [u.name for u in units]}
        for u, (state, res) in zip(units, trained, strict=True):
            _, metrics = finish(u, state, res, spent)
            done[u.name] = RoundResult(r, u.name, u.mask, metrics)
        snap = clock.snapshot()
    return [(c, done[c]) for c in CONTROLS if c in done]


def _print_timing(timings: Sequence[Mapping[str, float]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="IMP wall time per round (s)")
    for h in ("round", *TIMING_KEYS, "total_s", "prune+ckpt %"):
        t.add_column(h, justify="right")
    for row in timings:
        share = 100 * (row["prune_s"] + row["checkpoint_s"]) / max(row["total_s"], 1e-9)
        t.add_row(str(row["round"]), *[f"{row[k]:.2f}" for k in (*TIMING_KEYS, "total_s")],
                  f"{share:.1f}")
    Console().print(t)


def main(config: ImpConfig) -> ImpResult:
    """Runs :class:`ImpConfig`: prepares data and model, runs IMP in ``config.out``
    (resuming what is there), prints the table and returns the result.

    With ``run.replicates = S > 1`` replicate ``i`` starts from
    ``init_variables(seed + i)``, reads data in the order of ``key(data_seed + i)``
    (:func:`lotto_jax.common.replicate_data_keys`) and draws its controls from
    ``fold_in(key(seed + i), 1)``: replicate 0 is the single run.

    The run holds ``config.out``'s lock until it returns or fails
    (:meth:`lotto_jax.store.RunStore.open`). With ``config.repair`` the store is
    first verified and its corrupt units discarded (:func:`lotto_jax.repair.repair`),
    so that the run recomputes them; without it, a corrupt item's error says so.
    """
    store = RunStore.open(
        config.out, common.config_to_dict(config), overwrite=config.overwrite,
        new_dir=config.new_dir, mutable=MUTABLE_FIELDS,
    )
    try:  # the lock is released on every way out
        if config.repair:
            from lotto_jax import repair

            repair.repair(store, echo=print)
        return _main(config, store)
    except CorruptCheckpointError as e:
        if config.repair:
            raise
        raise CorruptCheckpointError(
            f"{e}; rerun with --repair to discard the corrupt units and recompute them"
        ) from e
    finally:
        store.close()


def _main(config: ImpConfig, store: RunStore) -> ImpResult:
    from lotto_jax import report

    prep = common.prepare(config.run)
    prunable = masks.all_leaves if config.prune_biases else masks.default_prunable
    layer_fractions = (
        None if config.output_fraction is None
        else {f"^{models.OUTPUT_LAYER}(/|$)": config.output_fraction}
    )
    input_shape = prep.dataset.input_shape
    n_rep = config.run.replicates

    def init_fn(key):
        variables = models.init(prep.module, key, input_shape)
        return variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def control_key(seed):
        return jax.random.fold_in(jax.random.key(seed), 1)

    if n_rep > 1:
        variables = common.replicate_variables(prep.module, input_shape, config.run.seed, n_rep)
        params0 = variables["params"]
        model_state0 = {k: v for k, v in variables.items() if k != "params"}
        data_key = common.replicate_data_keys(config.run.data_seed, n_rep)
        key = jnp.stack([control_key(config.run.seed + i) for i in range(n_rep)])
    else:
        params0, model_state0 = prep.params, prep.model_state
        data_key, key = prep.data_key, control_key(config.run.seed)

    result = run_imp(
        prep.trainer, params0, model_state0, prep.dataset,
        rounds=config.rounds, fraction=config.fraction, scope=config.scope,
        groups=config.groups, layer_fractions=layer_fractions, rewind=config.rewind,
        controls=config.controls, data_key=data_key, key=key,
        store=store, prunable=prunable, init_fn=init_fn, save_every=config.save_every,
        save_interval=config.save_interval, replicates=n_rep > 1, mesh=prep.mesh,
        timing=config.timing,
    )
    report.print_table(report.load_run(store.directory))
    if config.timing:
        _print_timing(result.timing)
    return result
