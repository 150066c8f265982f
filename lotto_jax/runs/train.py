"""``lotto train``: one network (or replicates), dense or under a saved mask.

A run directory of one engine unit (:mod:`lotto_jax.runs.engine`)::

  config.json      the resolved config
  init             θ0 ``{"params", "model_state"}`` (a leading replicate axis when S > 1)
  mask             the mask it trains under: the ``--mask`` checkpoint or all-True
                   (stacked like ``init``)
  train/           the unit: ``checkpoints/step_N`` while it trains, ``final`` (the
                   trained ``{"params", "model_state"}``), ``metrics.json`` (the marker)
  results.json     model, dataset, steps, replicates, density and the accuracies

A killed run resumes from its latest checkpoint when the same command is run again,
and ends bit for bit where an uninterrupted run would (on CPU); a finished run
trains nothing. One process writes a directory at a time (its ``.lock``);
``--repair`` discards corrupt items first (:func:`lotto_jax.runs.repair.repair`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from lotto_jax.runs.common import STORE_FIELDS, RunConfig, RunOptions

__all__ = ["MUTABLE_FIELDS", "PREFIX", "TrainCommand", "main"]

PREFIX = "train"
"""The unit's directory in the run."""

MUTABLE_FIELDS: tuple[str, ...] = (*STORE_FIELDS, "run.data_dir")
"""TrainCommand fields that may change when a run directory is resumed."""


@dataclasses.dataclass(frozen=True)
class TrainCommand(RunOptions):
    """Train one network, dense or under a saved mask, and print a summary.

    Attributes:
      run: model, data, seeds and training hyperparameters (``--replicates S``:
        replicate ``i`` from init seed ``seed + i`` and data order
        ``data_seed + i``, all S in one vmapped step).
      mask: an orbax checkpoint directory holding a mask pytree for the model's
        params (e.g. a round of ``lotto imp``), every replicate trained under it;
        or S masks stacked on a leading axis (a round of ``lotto imp
        --replicates S``), replicate ``i`` under mask ``i`` (``--replicates`` must
        be S); dense when not given.
      out: the run directory: ``config.json``, ``init``, ``mask``, the unit
        ``train/`` (``final``: the trained weights; ``metrics.json``: the curve and
        accuracies) and ``results.json``. Rerunning the same command resumes a
        killed run; a finished one trains nothing.
    """

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    mask: str | None = None
    out: str = dataclasses.field(default="runs/train", kw_only=True)


def main(config: TrainCommand) -> Any:
    """Runs ``lotto train`` in ``config.out`` (resuming what is there).

    Returns:
      The :class:`lotto_jax.train.FitResult` of the curve in ``train/metrics.json``
      (per-replicate arrays when ``run.replicates > 1``).

    Raises:
      FileNotFoundError: ``config.mask`` is not a directory (checked before the
        data and the model are built).
      lotto_jax.runs.store.RunLockedError: another process writes ``config.out``.
      lotto_jax.runs.store.ConfigMismatchError: ``config.out`` holds another run.
      lotto_jax.runs.store.CorruptCheckpointError: a stored item is altered (the
        message names it and ``--repair``).
    """
    from lotto_jax.runs import common

    if config.mask:  # before the slow part: building the model and the data
        path = os.path.abspath(config.mask)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"mask: no checkpoint directory at {path}")
    return common.run_in_store(config, MUTABLE_FIELDS, lambda store: _main(config, store))


def _start(config: TrainCommand, prep) -> tuple[dict[str, Any], Any, Any]:
    """``(θ0, make_mask, data_key)``: replicate ``i`` from seed ``seed + i`` and data
    key ``data_seed + i`` (replicate 0 is the single run), stacked when S > 1."""
    import jax
    import jax.numpy as jnp

    from lotto_jax import masks
    from lotto_jax.runs import common

    n = config.run.replicates
    theta0, data_key = common.start_weights(config.run, prep)

    def make_mask():
        if not config.mask:
            mask = masks.init(prep.params)
        else:
            import orbax.checkpoint as ocp

            mask = ocp.StandardCheckpointer().restore(os.path.abspath(config.mask))
            mask = jax.tree.map(jnp.asarray, mask)
            if _stacked_masks(prep.params, mask, n):  # replicate i under mask i
                return mask if n > 1 else jax.tree.map(lambda m: m[0], mask)
            masks.validate(prep.params, mask, name="mask")
        return common.stack([mask] * n) if n > 1 else mask

    return theta0, make_mask, data_key


def _stacked_masks(params, mask, n: int) -> bool:
    """Whether ``mask`` holds one mask per replicate (a leading replicate axis, as
    ``lotto imp --replicates S`` stores its rounds' masks), checked against ``n``.

    Raises:
      ValueError: the leading axis holds another number of masks than ``n``
        (named as ``mask``, so the CLI says ``--mask``), or mask ``0`` does not fit
        ``params`` (:func:`lotto_jax.masks.validate`).
    """
    import jax

    from lotto_jax import masks

    p_leaves, m_leaves = jax.tree.leaves(params), jax.tree.leaves(mask)
    if len(p_leaves) != len(m_leaves) or not all(
            m.ndim == p.ndim + 1 and m.shape[1:] == p.shape
            for p, m in zip(p_leaves, m_leaves, strict=True)):
        return False  # one network's mask, or a misfit that validate names
    counts = sorted({m.shape[0] for m in m_leaves})
    if counts != [n]:
        raise ValueError(
            f"mask: holds {'/'.join(map(str, counts))} replicates' masks (a leading "
            f"replicate axis) but --replicates is {n}; train with --replicates "
            f"{counts[0]} (replicate i under mask i) or pass one network's mask")
    masks.validate(params, jax.tree.map(lambda m: m[0], mask), name="mask")
    return True


def _main(config: TrainCommand, store) -> Any:
    from lotto_jax import masks, train
    from lotto_jax.runs import common
    from lotto_jax.runs.engine import Engine, Unit, abstract
    from lotto_jax.runs.records import layer_counts
    from lotto_jax.runs.writer import Clock, WriteBehind

    prep = common.prepare(config.run)
    stacked = config.run.replicates > 1
    theta0, make_mask, data_key = _start(config, prep)
    all_true = masks.init(prep.params)
    target = common.stack([all_true] * config.run.replicates) if stacked else all_true
    clock = Clock()
    writer = WriteBehind(store, clock)
    try:
        engine = Engine(prep.trainer, prep.dataset, data_key, writer, stacked=stacked,
                        mesh=prep.mesh, save_every=config.save_every,
                        save_interval=config.save_interval, clock=clock)
        start = engine.load_or("init", abstract(theta0), lambda: theta0)
        mask = engine.load_or("mask", abstract(target), make_mask)

        def metrics_fn(unit, res):
            return {**layer_counts(unit.mask, masks.default_prunable, stacked),
                    **res.metrics()}

        (done,) = engine.run([Unit(PREFIX, config.run.model, start, mask)],
                             lambda names: "+".join(names), metrics_fn=metrics_fn)
        writer.close()
    except BaseException:
        writer.close(raise_errors=False)
        raise
    result = train.summarize([train.EvalRecord(**r) for r in done.metrics["curve"]])
    summary = {
        "model": config.run.model,
        "dataset": config.run.dataset,
        "steps": config.run.train.steps,
        "replicates": config.run.replicates,
        "density": done.metrics["density"],
        "final_test_accuracy": result.final_test_accuracy,
        "best_test_accuracy": result.best_test_accuracy,
        "early_stop_step": result.early_stop_step,
        "early_stop_test_accuracy": result.early_stop_test_accuracy,
    }
    store.write_json("results.json", summary)
    _print_table(f"lotto train: {config.run.model} on {config.run.dataset}", summary)
    return result


def _print_table(title: str, rows: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        if isinstance(value, np.ndarray | list) and "accuracy" in key:
            arr = 100 * np.asarray(value, float)
            value = f"{arr.mean():.2f} ± {arr.std():.2f}%"
        elif isinstance(value, float):
            value = f"{100 * value:.2f}%" if "accuracy" in key or key == "density" else f"{value:.4g}"
        table.add_row(key, str(value))
    Console().print(table)
