"""``lotto stability``: linear mode connectivity of an IMP run's networks.

For each requested round ``r`` of an IMP run (round 0: the dense network) and each
rewind step ``k``, two copies of the round's network start from θk of the run
(masked by round ``r``'s mask) at step ``k`` and train to the end with two
different data orders (``pair_seeds``); then the loss and the error (1 − accuracy)
are evaluated at ``points`` evenly spaced α on the line between their final
weights (:func:`lotto_jax.analysis.interpolate`), on the test set and on the first
``train_examples`` training examples. The instability is the error barrier
(:func:`lotto_jax.analysis.instability`).

**Which θk.** An IMP run stores θ0 (``init``) and, with ``--rewind step:K``, θK
(``rewind``); those are the only rewind steps accepted: any other ``k`` is refused,
naming the stored ones (train an IMP run with ``--rewind step:K`` to get θK). The
mask of round ``r`` is the run's, whatever ``k``: with a run rewound to K, testing
``k = 0`` tests that ticket from θ0 (Frankle et al. 2020 find each ticket with
rewinding to its own ``k``). Replicated IMP runs: ``--replicate i`` picks one.

**Data order.** The copies differ only in their data order, so they are always
trained with reshuffled epochs (``shuffle``), also when the IMP run read its data in
a fixed order (the MNIST-1D recipe): there the copies would otherwise be identical
and every barrier 0. ``results.json`` records that as ``"shuffled": true``.

**Engine.** Each (round, k) pair is one engine unit with two rows (the copies),
and all pairs starting at the same ``k`` train in one vmapped fit
(:mod:`lotto_jax.runs.engine`): checkpointed, resumed after a kill, never
retrained once finished. A pair's path is then stored in
``pairs/NAME/path.json`` and not recomputed.

Models with BatchNorm statistics are refused: interpolating them would need the
statistics recomputed at every α (Frankle et al. 2020's practice), not done here.

Layout::

  RUN/
    config.json                 this command's config
    pairs/round_001_k00000000/  one unit: checkpoints/, final (2 rows), metrics.json
      path.json                 alphas, test/train loss and error along the path
    results.json                every pair's path and barriers (``lotto report``)
    figures/                    barrier.png (barrier vs k), path.png (error vs α)

References:
  Frankle, Dziugaite, Roy & Carbin 2020, "Linear Mode Connectivity and the Lottery
  Ticket Hypothesis", arXiv:1912.05671.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from lotto_jax.runs.common import STORE_FIELDS, RunOptions

__all__ = ["MUTABLE_FIELDS", "StabilityConfig", "imp_run_config", "main", "pair_name",
           "stored_steps"]

MUTABLE_FIELDS: tuple[str, ...] = (*STORE_FIELDS, "rounds", "rewind_steps")
"""Fields a rerun on the same directory may change (pairs are added, never redone)."""


@dataclasses.dataclass(frozen=True)
class StabilityConfig(RunOptions):
    """Instability (error barrier) of an IMP run's tickets: ``lotto stability --run DIR``.

    Attributes:
      run: the IMP run directory (``lotto imp``); read, never written.
      rewind_steps: the steps ``k`` the two copies start from; each must be a
        rewind point the run stored (0, and K of ``--rewind step:K``).
      rounds: the IMP rounds whose masks are tested (0: dense); default every
        round whose mask the run stored.
      points: evaluation points on the path (30 in Frankle et al. 2020).
      train_examples: how many training examples (the first ones) the train
        error is measured on.
      pair_seeds: the data-order seeds of the two copies.
      replicate: which replicate of a replicated IMP run.
      out: the stability run directory (layout: module docs).
    """

    run: str = "runs/imp"
    rewind_steps: tuple[int, ...] = (0,)
    rounds: tuple[int, ...] = ()
    points: int = 30
    train_examples: int = 1000
    pair_seeds: tuple[int, int] = (1, 2)
    replicate: int = 0
    out: str = dataclasses.field(default="runs/stability", kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        ints = lambda v: all(isinstance(x, int) and not isinstance(x, bool) for x in v)  # noqa: E731
        if not self.rewind_steps or not ints(self.rewind_steps) or min(self.rewind_steps) < 0:
            raise ValueError(f"rewind_steps: expected steps >= 0, got {self.rewind_steps!r}")
        if not ints(self.rounds) or (self.rounds and min(self.rounds) < 0):
            raise ValueError(f"rounds: expected rounds >= 0, got {self.rounds!r}")
        if not isinstance(self.points, int) or self.points < 2:
            raise ValueError(f"points: expected an int >= 2, got {self.points!r}")
        if not isinstance(self.train_examples, int) or self.train_examples < 1:
            raise ValueError(f"train_examples: expected an int >= 1, got {self.train_examples!r}")
        if len(self.pair_seeds) != 2 or self.pair_seeds[0] == self.pair_seeds[1]:
            raise ValueError(f"pair_seeds: expected two different seeds, got {self.pair_seeds!r}")
        if not isinstance(self.replicate, int) or self.replicate < 0:
            raise ValueError(f"replicate: expected an int >= 0, got {self.replicate!r}")


def imp_run_config(config: dict[str, Any]):
    """The :class:`lotto_jax.runs.common.RunConfig` of an IMP run's ``config.json``
    (one network, on the default device)."""
    from lotto_jax.runs.common import RunConfig
    from lotto_jax.train import TrainConfig

    run = dict(config.get("run") or {})
    train = {k: v for k, v in dict(run.pop("train", None) or {}).items()
             if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    if "milestones" in train:
        train["milestones"] = tuple(train["milestones"] or ())
    keep = {f.name for f in dataclasses.fields(RunConfig)} - {"train", "replicates", "mesh"}
    return RunConfig(**{k: v for k, v in run.items() if k in keep},
                     train=TrainConfig(**train))


def stored_steps(directory: str, config: dict[str, Any]) -> list[int]:
    """The rewind points an IMP run stored: 0 (``init``), and K when it rewinds
    to ``step:K`` and its ``rewind`` item is committed."""
    out = [0] if os.path.exists(os.path.join(directory, "init.manifest.json")) else []
    rewind = str(config.get("rewind") or "")
    if rewind.startswith("step:") and os.path.exists(
            os.path.join(directory, "rewind.manifest.json")):
        out.append(int(rewind.split(":", 1)[1]))
    return sorted(set(out))


def _stored_rounds(directory: str) -> list[int]:
    import re

    return sorted(int(n[6:]) for n in os.listdir(directory)
                  if re.fullmatch(r"round_\d+", n)
                  and os.path.exists(os.path.join(directory, n, "mask.manifest.json")))


def _check(config: StabilityConfig) -> tuple[dict[str, Any], list[int]]:
    """The IMP run's config and the rounds to test; refuses bad requests before
    anything is built."""
    from lotto_jax.runs import layout

    d = config.run
    if not os.path.isdir(d):
        raise ValueError(f"run: {d} is not a directory")
    kind = layout.run_kind(d)
    if kind != "imp":
        raise ValueError(f"run: {d} is a {kind} run, not an IMP run (lotto imp)")
    imp_config, _ = layout.load_json(os.path.join(d, "config.json"))
    if not isinstance(imp_config, dict) or "run" not in imp_config:
        raise ValueError(f"run: {d} has no readable config.json of lotto imp")
    steps = layout.total_steps(imp_config)
    stored = stored_steps(d, imp_config)
    for k in config.rewind_steps:
        if steps is not None and k > steps:
            raise ValueError(f"rewind_steps: {k} is beyond the run's {steps} training steps")
        if k not in stored:
            raise ValueError(
                f"rewind_steps: step {k} is not stored in {d} (stored rewind points: "
                f"{', '.join(map(str, stored)) or 'none'}); an IMP run keeps θ0 and, "
                "with --rewind step:K, θK")
    have = _stored_rounds(d)
    for r in config.rounds:
        if r not in have:
            raise ValueError(f"rounds: round {r} does not exist in {d} (its rounds: "
                             f"{', '.join(map(str, have)) or 'none'})")
    _check_stateless(str(imp_config["run"].get("model")))
    replicates = int((imp_config.get("run") or {}).get("replicates") or 1)
    if config.replicate >= replicates:
        raise ValueError(f"replicate: {config.replicate} is not below the run's "
                         f"{replicates} replicates")
    return imp_config, list(config.rounds) or have


def _check_stateless(model: str) -> None:
    """Refuses a model with collections besides ``params`` (BatchNorm statistics),
    from its abstract variables (nothing is computed)."""
    import jax

    from lotto_jax import models

    if model not in models.NAMES:
        raise ValueError(f"run: the IMP run's model {model!r} is not one of {models.NAMES}")
    module = models.build(model)
    shapes = jax.eval_shape(lambda: models.init(module, jax.random.key(0),
                                                models.input_shape(model)))
    state = [k for k in shapes if k != "params"]
    if state:
        raise ValueError(
            f"run: model {model} has {', '.join(state)} (BatchNorm statistics): "
            "interpolating them needs the statistics recomputed at every α, which "
            "lotto stability does not do")


def pair_name(r: int, k: int) -> str:
    """The unit of round ``r`` from step ``k``: ``pairs/round_RRR_kKKKKKKKK``."""
    return f"pairs/round_{r:03d}_k{k:08d}"


def main(config: StabilityConfig) -> dict[str, Any]:
    """Runs :class:`StabilityConfig` in ``config.out`` (resuming what is there),
    prints the table and writes the figures.

    Returns:
      The ``results.json`` record.

    Raises:
      ValueError: ``run`` is not an IMP run, a round it lacks, a rewind step
        beyond its steps or not stored, a replicate it lacks, or a model with
        BatchNorm statistics.
    """
    from lotto_jax.runs import common

    imp_config, rounds = _check(config)  # before the lock and the slow part
    return common.run_in_store(config, MUTABLE_FIELDS,
                               lambda store: _main(config, store, imp_config, rounds))


def _pair_run_config(imp_config):
    """The IMP run's config, reshuffling every epoch (module docs: data order)."""
    run_config = imp_run_config(imp_config)
    return dataclasses.replace(run_config,
                               train=dataclasses.replace(run_config.train, shuffle=True))


def _pick(tree, i: int | None):
    import jax

    return tree if i is None else jax.tree.map(lambda x: x[i], tree)


def _main(config: StabilityConfig, store, imp_config, rounds) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from lotto_jax import masks
    from lotto_jax.runs import common, stability_report
    from lotto_jax.runs.engine import Engine, Unit, abstract
    from lotto_jax.runs.records import layer_counts
    from lotto_jax.runs.store import RunStore
    from lotto_jax.runs.writer import Clock, WriteBehind

    prep = common.prepare(_pair_run_config(imp_config))
    replicated = int((imp_config.get("run") or {}).get("replicates") or 1) > 1
    rep = config.replicate if replicated else None
    source = RunStore(config.run)
    one = {"params": prep.params, "model_state": {}}
    n_rep = int(imp_config["run"]["replicates"]) if replicated else 1
    target = abstract(common.stack([one] * n_rep) if replicated else one)
    mask_target = jax.tree.map(lambda t: jax.ShapeDtypeStruct(t.shape, jnp.bool_),
                               target["params"])
    prunable = masks.all_leaves if imp_config.get("prune_biases") else masks.default_prunable

    def start(k):
        item = "init" if k == 0 else "rewind"
        return _pick(source.restore(item, target), rep)

    def round_mask(r):
        return _pick(source.restore(f"round_{r:03d}/mask", mask_target), rep)

    pairs = [(r, k) for r in rounds for k in sorted(config.rewind_steps)]
    mask_of = {r: round_mask(r) for r in rounds}
    two = lambda t: common.stack([t, t])  # noqa: E731
    data_key = jnp.stack([jax.random.key(s) for s in config.pair_seeds])
    units = [Unit(pair_name(r, k), f"r{r} k{k}", lambda k=k: two(start(k)),
                  two(mask_of[r]), step=k, data_key=data_key) for r, k in pairs]
    clock = Clock()
    writer = WriteBehind(store, clock)
    try:
        engine = Engine(prep.trainer, prep.dataset, data_key, writer, stacked=True,
                        save_every=config.save_every, save_interval=config.save_interval,
                        clock=clock)

        def metrics_fn(unit, res):
            return {"start_step": unit.step, **layer_counts(unit.mask, prunable, True),
                    **res.metrics()}

        done = engine.run(units, lambda names: "+".join(names), metrics_fn=metrics_fn)
        stacked_target = abstract(two(one))
        apply_fn = _apply_fn(prep.module)
        subset = prep.dataset.train
        batches = [(prep.dataset.test.x, prep.dataset.test.y),
                   (subset.x[:config.train_examples], subset.y[:config.train_examples])]
        entries = []
        for (r, k), d in zip(pairs, done, strict=True):
            name = d.unit.prefix
            if not writer.exists(f"{name}/path.json"):
                final = d.final if d.final is not None else engine.final(name, stacked_target)
                record = _path_record(apply_fn, final["params"], mask_of[r], batches,
                                      config.points)
                writer.write_json(f"{name}/path.json", record)
            else:
                record = writer.read_json(f"{name}/path.json")
            acc = d.metrics["final_test_accuracy"]
            entries.append({"round": r, "k": k, "density": d.metrics["density"],
                            "final_test_accuracy": acc, **record})
        writer.close()
    except BaseException:
        writer.close(raise_errors=False)
        raise
    results = {"run": os.path.abspath(config.run), "model": imp_config["run"].get("model"),
               "dataset": imp_config["run"].get("dataset"),
               "steps": prep.trainer.config.steps, "points": config.points,
               "pair_seeds": list(config.pair_seeds),
               "shuffled": not imp_run_config(imp_config).train.shuffle, "pairs": entries}
    store.write_json("results.json", results)
    stability_report.main(store.directory)
    return results


def _apply_fn(module):
    def apply_fn(params, x):
        return module.apply({"params": params}, x, train=False)

    return apply_fn


def _path_record(apply_fn, params, mask, batches, points) -> dict[str, Any]:
    """The path between the two rows of ``params`` under ``mask``: losses, errors
    and barriers on the test set and the train subset."""
    import jax

    from lotto_jax import analysis

    a, b = (jax.tree.map(lambda x, i=i: x[i], params) for i in (0, 1))
    alphas, losses, errors = analysis.interpolate(apply_fn, a, b, mask, batches,
                                                  points=points)
    barrier = analysis.instability(errors)
    loss_barrier = analysis.instability(losses)
    out = {"alphas": [float(x) for x in alphas]}
    for i, split in enumerate(("test", "train")):
        out[f"{split}_loss"] = [float(x) for x in losses[i]]
        out[f"{split}_error"] = [float(x) for x in errors[i]]
        out[f"{split}_barrier"] = float(barrier[i])
        out[f"{split}_loss_barrier"] = float(loss_barrier[i])
    return out
