"""``lotto colt``: cyclic overlapping lottery tickets (COLT, Hossain et al. 2022).

The classes are split into ``partitions`` disjoint ranges
(:func:`lotto_jax.colt.split_classes`). Round ``r`` trains, from θ0 under
``mask_r`` (round 0: dense):

* one network per partition on that partition's data (its own trainer: the
  partitions differ in size), for ``r < rounds``; their θT give
  ``mask_{r+1}`` = the intersection of each one pruned by the IMP rule
  (:func:`lotto_jax.colt.next_mask`, ``fraction`` of the survivors, global by
  default as in the paper);
* the *ticket*: ``mask_r`` trained on the whole training set, the round's
  reported accuracy (COLT's reference code reports the partition networks on
  their own classes; we train the ticket so that COLT and IMP are compared on the
  same task).

Every unit goes through the engine (:mod:`lotto_jax.runs.engine`): checkpointed,
resumed bit for bit after a kill, never retrained. The directory uses IMP's
layout, so ``lotto report``, ``lotto ls`` and ``--repair`` read it as an IMP run
whose "controls" are the partition networks::

  RUN/
    config.json, driver.json      the config; the derived record (class ranges,
                                  keys, trainer sizes)
    init/                         θ0 {"params", "model_state"}
    round_000/                    the ticket of round r: mask/ (mask_r; its
      mask/ final/ metrics.json   manifest's meta holds the partition masks'
                                  densities), final/, metrics.json
    controls/part0/round_000/     partition 0's network of round r (r < rounds):
      mask/ final/ metrics.json   mask_r again, its θT, accuracies on its own
                                  classes' test examples
    controls/part1/round_000/ ...
    results.json                  per round: density, accuracies, the partition
                                  masks' densities, training steps (written last)

Training cost, per round ``r`` (``T`` steps per network, ``P`` partitions):
finding ``mask_r`` took ``r·P·T`` steps (each partition network sees only its
classes); IMP's ``mask_r`` takes ``r·T``. ``results.json`` holds both counts:
``pruning_steps`` (``r·P·T``) and ``total_steps`` (with the tickets trained so
far, ``r·P·T + (r+1)·T``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from lotto_jax import colt, masks, models, train
from lotto_jax.runs import common
from lotto_jax.runs.engine import Engine, Unit, abstract
from lotto_jax.runs.records import key_list, layer_counts
from lotto_jax.runs.store import RunStore, round_name
from lotto_jax.runs.writer import Clock, WriteBehind

__all__ = ["LABELS", "MUTABLE_FIELDS", "ColtConfig", "main", "part_name"]

MUTABLE_FIELDS: tuple[str, ...] = (*common.STORE_FIELDS, "rounds", "run.data_dir")
"""ColtConfig fields that may change when a run directory is resumed."""

LABELS: tuple[str, ...] = ("remap", "keep")
"""How a partition's labels are given (:func:`lotto_jax.colt.split_classes`)."""


def part_name(p: int) -> str:
    """The control name of partition ``p``'s networks: ``part0``, ``part1``, ..."""
    return f"part{p}"


@dataclasses.dataclass(frozen=True)
class ColtConfig(common.RunOptions):
    """COLT: ``lotto colt --model lenet300 --rounds 8 --fraction 0.15``.

    Attributes:
      run: model, data, seeds and training of every network (``--replicates S``
        trains S replicate runs together).
      rounds: pruning rounds; the tickets of rounds ``0..rounds`` are trained
        (round 0 dense), and the partition networks of rounds ``0..rounds-1``.
        May be raised on an existing run to extend it.
      fraction: the fraction of the surviving weights each partition's network
        removes per round, in (0, 1) (the paper: 0.15).
      output_fraction: the fraction removed per round from the ``output`` layer
        on its own; ``None`` prunes it with the others.
      scope: ``global`` (one threshold over all layers, the paper's) or
        ``layerwise``.
      partitions: the number of disjoint class ranges (the paper: 2; MNIST
        0-4 / 5-9).
      labels: ``remap`` (a range's labels become ``0..k-1``, as the reference
        code) or ``keep`` (each range trains its own units of the shared
        10-way head).
      prune_biases: prune biases too; by default only kernels.
      groups: ``layer`` or ``leaf``: what one layer is for ``layerwise`` and
        ``output_fraction`` (as ``lotto imp``).
      out: the run directory (its layout: :mod:`lotto_jax.runs.colt`).
    """

    run: common.RunConfig = dataclasses.field(default_factory=common.RunConfig)
    rounds: int = 5
    fraction: float = 0.15
    output_fraction: float | None = None
    scope: str = "global"
    partitions: int = 2
    labels: str = "remap"
    prune_biases: bool = False
    groups: str = "layer"
    out: str = dataclasses.field(default="runs/colt", kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) \
                or self.rounds < 0:
            raise ValueError(f"rounds: expected an int >= 0, got {self.rounds!r}")
        if not 0 < self.fraction < 1:
            raise ValueError(f"fraction: expected a value in (0, 1), got {self.fraction}")
        if self.output_fraction is not None and not 0 <= self.output_fraction < 1:
            raise ValueError(f"output_fraction: expected a value in [0, 1) or None, "
                             f"got {self.output_fraction}")
        if self.scope not in ("layerwise", "global"):
            raise ValueError(f"scope: expected 'layerwise' or 'global', got {self.scope!r}")
        if isinstance(self.partitions, bool) or not isinstance(self.partitions, int) \
                or self.partitions < 2:
            raise ValueError(f"partitions: expected an int >= 2, got {self.partitions!r}")
        if self.labels not in LABELS:
            raise ValueError(f"labels: expected one of {LABELS}, got {self.labels!r}")
        if self.groups not in masks.GROUPINGS:
            raise ValueError(f"groups: expected one of {masks.GROUPINGS}, got {self.groups!r}")


def main(config: ColtConfig) -> dict[str, Any]:
    """Runs :class:`ColtConfig` in ``config.out`` (resuming what is there), prints
    the table and returns the ``results.json`` record.

    Raises:
      ValueError: a bad flag (naming it) before anything is written: a dataset
        with fewer classes than ``partitions``, a partition smaller than a batch.
      lotto_jax.runs.store.RunLockedError, ConfigMismatchError,
        CorruptCheckpointError: as every command (:func:`common.run_in_store`).
    """
    prep = common.prepare(config.run)
    parts = colt.split_classes(prep.dataset, config.partitions,
                               remap=config.labels == "remap")
    trainers = []
    for i, part in enumerate(parts):
        n = len(part.train)
        if n < config.run.train.batch_size:
            raise ValueError(
                f"batch_size: {config.run.train.batch_size} is larger than partition "
                f"{i}'s training set ({n} examples of {part.name})")
        trainers.append(train.make_trainer(train.classifier(prep.module), config.run.train,
                                           num_train=n, mesh=prep.mesh))
    return common.run_in_store(
        config, MUTABLE_FIELDS, lambda store: _main(config, store, prep, parts, trainers))


def _rule(config: ColtConfig) -> tuple:
    prunable = masks.all_leaves if config.prune_biases else masks.default_prunable
    layer_fractions = (() if config.output_fraction is None
                       else ((f"^{models.OUTPUT_LAYER}(/|$)", config.output_fraction),))
    return (config.fraction, config.scope, config.groups, layer_fractions, prunable)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _prune(rule, finals, mask, stacked):
    """:func:`lotto_jax.colt.next_mask` of the partitions' θT (per replicate)."""
    fraction, scope, groups, layer_fractions, prunable = rule

    def one(ps, m):
        return colt.next_mask(list(ps), m, fraction=fraction, scope=scope, groups=groups,
                              layer_fractions=dict(layer_fractions), prunable=prunable)

    return jax.vmap(one)(finals, mask) if stacked else one(finals, mask)


class _Colt:
    """One ``lotto colt`` run: the rounds as engine runs (a ticket engine on the
    whole dataset, one engine per partition)."""

    def __init__(self, config: ColtConfig, store, prep, parts, trainers, theta0, data_key,
                 clock):
        self.config, self.store, self.rule = config, store, _rule(config)
        self.prunable = self.rule[-1]
        self.stacked = config.run.replicates > 1
        kw = dict(stacked=self.stacked, mesh=prep.mesh, save_every=config.save_every,
                  save_interval=config.save_interval, clock=clock)
        self.ticket = Engine(prep.trainer, prep.dataset, data_key, store, **kw)
        self.engines = [Engine(t, d, data_key, store, **kw)
                        for t, d in zip(trainers, parts, strict=True)]
        self.mask_all = masks.init(theta0["params"])
        self.mask_target = abstract(self.mask_all)
        self.weights_target = abstract(theta0)
        self.theta0 = self.ticket.load_or("init", self.weights_target, lambda: theta0)
        self.finals: dict[tuple[int, int], Any] = {}  # (round, partition) -> θT

    def metrics_fn(self, u: Unit, res: train.FitResult) -> dict[str, Any]:
        return {"start_step": 0, "hold_lr": -1, "rewind": "init",
                **layer_counts(u.mask, self.prunable, self.stacked), **res.metrics()}

    def mask(self, r: int, prev) -> tuple[Any, dict[str, Any]]:
        """``mask_r`` and its meta (the partition masks' densities), stored once."""
        item = f"{round_name(r)}/mask"
        if self.store.has(item):
            return self.store.restore(item, self.mask_target), self.store.meta(item)
        if self.ticket.finished(round_name(r)):
            self.store.verify(item)  # raises: a finished round lost its mask
        meta: dict[str, Any] = {}
        tree = self.mask_all
        if r > 0:
            finals = tuple(self.final(r - 1, p)["params"] for p in range(len(self.engines)))
            tree, parts, bad = _prune(self.rule, finals, prev, self.stacked)
            for path, n in jax.tree_util.tree_flatten_with_path(bad)[0]:
                if int(np.sum(n)):
                    raise ValueError(
                        f"scores: the partition networks' scores"
                        f"{jax.tree_util.keystr(path)} have {int(np.sum(n))} NaN or "
                        f"infinite values on kept weights (round {r - 1} diverged?)")
            meta = {"partition_densities": [
                layer_counts(jax.tree.map(np.asarray, m), self.prunable,
                             self.stacked)["density"] for m in parts]}
            tree = jax.block_until_ready(tree)
        self.store.save(item, tree, meta=meta)
        return tree, meta

    def final(self, r: int, p: int):
        if (r, p) not in self.finals:
            self.finals[(r, p)] = self.engines[p].final(round_name(r, part_name(p)),
                                                        self.weights_target)
        for old in [k for k in self.finals if k[0] < r]:
            del self.finals[old]
        return self.finals[(r, p)]

    def describe(self, r: int, density: float):
        rounds = self.config.rounds
        return lambda names: f"{'+'.join(names)} {r}/{rounds} ({100 * density:.1f}%)"

    def round(self, r: int, prev) -> dict[str, Any]:
        mask, meta = self.mask(r, prev)
        density = layer_counts(mask, self.prunable, self.stacked)["density"]
        (ticket,) = self.ticket.run([Unit(round_name(r), "ticket", self.theta0, mask)],
                                    self.describe(r, density), metrics_fn=self.metrics_fn)
        part_metrics = []
        if r < self.config.rounds:
            for p, engine in enumerate(self.engines):
                name = part_name(p)
                prefix = round_name(r, name)  # the mask it trains under, as IMP's controls
                engine.load_or(f"{prefix}/mask", self.mask_target, lambda: mask)
                (done,) = engine.run([Unit(prefix, name, self.theta0, mask)],
                                     self.describe(r, density), metrics_fn=self.metrics_fn)
                if done.trained:
                    self.finals[(r, p)] = done.final
                part_metrics.append(done.metrics)
        return {"mask": mask, "meta": meta, "ticket": ticket.metrics, "parts": part_metrics}

    def row(self, r: int, done: dict[str, Any]) -> dict[str, Any]:
        t, n_parts = self.config.run.train.steps, len(self.engines)
        m = done["ticket"]
        keys = ("density", "kept", "total", "final_test_accuracy", "best_test_accuracy",
                "early_stop_step", "early_stop_test_accuracy")
        return {
            "round": r, **{k: m[k] for k in keys},
            "partition_densities": done["meta"].get("partition_densities"),
            "partition_final_test_accuracy": [p["final_test_accuracy"]
                                              for p in done["parts"]] or None,
            "pruning_steps": r * n_parts * t,
            "total_steps": r * n_parts * t + (r + 1) * t,
        }

    def run(self) -> list[dict[str, Any]]:
        rows, mask = [], None
        for r in range(self.config.rounds + 1):
            done = self.round(r, mask)
            mask = done["mask"]
            rows.append(self.row(r, done))
        return rows


def _main(config: ColtConfig, store: RunStore, prep, parts, trainers) -> dict[str, Any]:
    from lotto_jax.runs import report

    theta0, data_key = common.start_weights(config.run, prep)
    ranges = colt.class_ranges(prep.dataset.num_classes, config.partitions)
    store.check_record("driver", {
        "method": "colt", "ranges": [list(r) for r in ranges],
        "num_train": [len(p.train) for p in parts], "data_key": key_list(data_key)})
    clock = Clock()
    writer = WriteBehind(store, clock)
    try:
        rows = _Colt(config, writer, prep, parts, trainers, theta0, data_key, clock).run()
        results = {
            "method": "colt", "model": config.run.model, "dataset": config.run.dataset,
            "steps": config.run.train.steps, "replicates": config.run.replicates,
            "partitions": config.partitions, "ranges": [list(r) for r in ranges],
            "labels": config.labels, "fraction": config.fraction, "scope": config.scope,
            "output_fraction": config.output_fraction, "rounds": rows,
        }
        writer.write_json("results.json", results)
        writer.close()
    except BaseException:
        writer.close(raise_errors=False)
        raise
    report.print_table(report.load_run(store.directory))
    return results
