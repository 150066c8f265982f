"""The IMP loop over the run store: :func:`run_imp`.

Each round is one :meth:`lotto_jax.runs.engine.Engine.run` (the trunk), then one
more for the round's controls, stacked; the masks come from the pure pieces of
:mod:`lotto_jax.imp` (:func:`~lotto_jax.imp.next_mask`,
:func:`~lotto_jax.imp.control_mask`, :func:`~lotto_jax.imp.round_start`).

Every step ends in the :mod:`lotto_jax.runs.store` (when a store is given): a killed run
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

Layout of an IMP run directory (the items of :mod:`lotto_jax.runs.store`)::

  RUN/
    .lock                        {pid, host, started} of the one process writing the
                                 run (while it runs; see lotto_jax.runs.store)
    config.json                  the resolved driver config (a changed one is refused)
    driver.json                  run_imp's own arguments (fraction, scope, rewind, keys)
    init/                        θ0: {"params", "model_state"}
    rewind/                      θK of weight rewinding "step:K": {"params",
                                 "model_state"}; pinned (outside any step series, so
                                 never garbage-collected)
    round_000/                   round r = training under mask_r (round 0 is dense)
      mask/                      mask_r: a boolean pytree like params
      checkpoints/step_00000040/ the latest mid-round TrainState (while unfinished)
      final/                     θT of the round: {"params", "model_state"}
      metrics.json               written last: the round is finished iff it exists
    round_001/ ...
    controls/
      reinit/round_001/          a control of round r >= 1, laid out like a round;
        init/                    reinit only: the fresh initial weights it drew
        mask/  final/  metrics.json
      shuffle/round_001/ ...
      random/round_001/ ...
    figures/                     PNGs written by ``lotto report``

References:
  Frankle & Carbin 2019, arXiv:1803.03635; Frankle et al. 2020, arXiv:1912.05671;
  Renda et al. 2020, arXiv:2003.02389.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from lotto_jax import data as data_lib
from lotto_jax import imp, masks, scores, structured, train
from lotto_jax._types import Groups, Params, PRNGKey, Prunable
from lotto_jax.imp import CONTROLS
from lotto_jax.runs import common
from lotto_jax.runs.engine import Engine
from lotto_jax.runs.imp_rounds import ImpResult, RoundResult, _Imp
from lotto_jax.runs.records import (
    check_save_every,
    check_save_interval,
    fingerprint,
    key_list,
    replicate_count,
)
from lotto_jax.runs.store import RunStore
from lotto_jax.runs.writer import Clock, WriteBehind

__all__ = ["TIMING_KEYS", "ImpResult", "RoundResult", "run_imp"]

TIMING_KEYS: tuple[str, ...] = ("train_s", "eval_s", "prune_s", "checkpoint_s")
"""The parts of a round's wall time in :attr:`ImpResult.timing` (plus ``total_s``)."""


def _check_structure(controls, structure: str, topology) -> structured.Structure:
    """The controls' names, and a structure with what it needs (a topology, and
    controls that keep whole units: only ``reinit``)."""
    imp._check_controls(controls)
    st = structured.parse(structure)
    if st.kind in ("neuron", "channel", "layer") and topology is None:
        raise ValueError(f"topology: structure {structure!r} needs the model's topology "
                         "(structured.topology_for(structure, module, params))")
    if st.kind != "weight" and set(controls) - {"reinit"}:
        raise ValueError(
            f"controls: {sorted(set(controls) - {'reinit'})} draw unstructured masks; "
            f"with structure {structure!r} only 'reinit' applies"
        )
    return st


def _record_defaults(trainer) -> dict[str, Any]:
    """The driver record's defaults: a training option added since a run was
    written, at its default, is no change (:func:`lotto_jax.runs.store.config_diff`)."""
    from lotto_jax.runs import common

    return {"train": common.config_to_dict(type(trainer.config)())}


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
    structure: str = "weight",
    topology: Any = None,
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
      structure: what one pruning step removes (:func:`lotto_jax.structured.parse`):
        ``"weight"`` (unstructured), ``"neuron"`` / ``"channel"`` (whole units,
        ranked by the L2 norm of ``score_fn``'s scores over their kernel slices,
        ``scope`` as for weights; ``layer_fractions`` does not apply: the output
        layer has no units), ``"layer"`` (``fraction`` of the remaining residual
        blocks, by their summed scores) or ``"N:M"``. Only the ``"reinit"``
        control applies to a structure other than ``"weight"``.
      topology: the model's :func:`lotto_jax._topology.topology` (static data),
        required by ``"neuron"``, ``"channel"`` and ``"layer"``
        (:func:`lotto_jax.structured.topology_for`).

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
    imp.parse_rewind(rewind, steps)
    st = _check_structure(controls, structure, topology)
    check_save_every(save_every)
    check_save_interval(save_interval)
    if not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds: expected an int >= 0, got {rounds!r}")
    if "reinit" in controls and init_fn is None:
        raise ValueError("init_fn: the 'reinit' control needs init_fn(key) -> (params, model_state)")
    model_state0 = {} if model_state0 is None else model_state0
    controls = [c for c in CONTROLS if c in controls]
    record = {
        "rounds": rounds, "fraction": fraction, "scope": scope,
        "groups": groups if isinstance(groups, str) else fingerprint(groups),
        "layer_fractions": dict(layer_fractions or {}), "rewind": rewind,
        "controls": controls, "train": common.config_to_dict(trainer.config),
        "num_train": trainer.num_train, "score_fn": fingerprint(score_fn),
        "prunable": fingerprint(prunable), "data_key": key_list(data_key),
        "key": key_list(key),  # "structure" only if not weights: older runs still match
        **({} if st.kind == "weight" else {"structure": structure}),
    }
    if replicates:
        record["replicates"] = replicate_count(params0=params0, model_state0=model_state0,
                                               data_key=data_key, key=key)
    owned = None  # a store opened here is closed (its lock released) here
    check = dict(mutable=("rounds", "controls"), defaults=_record_defaults(trainer))
    if isinstance(store, str):
        store = owned = RunStore.open(store, record, **check)
    clock, writer = Clock(), None
    try:
        if store is not None:
            store.check_record("driver", record, **check)
            store = writer = WriteBehind(store, clock)
        engine = Engine(trainer, dataset, data_key, store, stacked=replicates, mesh=mesh,
                        save_every=save_every, save_interval=save_interval,
                        progress=progress, clock=clock)
        result = _Imp(
            engine, params0, model_state0, rounds=rounds, rewind=rewind,
            rule=(score_fn, fraction, scope, groups, tuple((layer_fractions or {}).items()),
                  prunable, st, topology),
            controls=controls, key=key, init_fn=init_fn, stack_controls=stack_controls,
            timing=timing).run()
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
