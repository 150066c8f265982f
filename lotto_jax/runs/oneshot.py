"""``lotto oneshot``: essential sparsity of a trained dense network.

Reads a run directory's trained dense network (a ``lotto train`` run's
``train/final``, or a ``lotto imp`` run's ``round_000/final``: its round 0 is
dense), prunes it in one shot by magnitude at every ``--densities`` value, with
one global threshold and per layer (``--scopes``), and evaluates each pruned
network on the test set without retraining (:mod:`lotto_jax.oneshot`: the masks
are nested and evaluated in one vmapped call). The *knee* of each
accuracy-vs-sparsity curve, the essential sparsity of Jaiswal et al. 2023, is
found by ``--knee drop`` (default: the last density within ``--tolerance`` of
the dense accuracy) or ``--knee kneedle`` (both are reported).

With ``--retrain-steps K`` every pruned network is then trained K more steps
under its fixed mask (the source run's optimizer, batch size and data, at a
constant learning rate, ``--retrain-lr`` or the source's; weights the mask
removes stay exactly 0) and the retrained curve and its knee are reported beside
the one-shot ones. A source with S replicates gives S curves: every network is
pruned and retrained on its own, and the accuracies are mean ± std over them.

Layout::

  OUT/
    config.json                 this command's config
    retrain/SCOPE/dDENSITY/     one engine unit per (scope, density) (with
                                --retrain-steps): mask, checkpoints/, final,
                                metrics.json (its curve; step 0 is the one-shot
                                accuracy)
    results.json                the densities, the one-shot (and retrained)
                                accuracies per scope, the kept counts, the knees
    figures/accuracy.png        accuracy vs % of weights remaining, knees marked

The source is read, never written; its ``config.json`` gives the model, the data
(a relative ``npz:`` path is read from the current directory, as by the source's own
command) and the optimiser. A ``lotto train`` run trained under ``--mask`` starts
from that mask: the weights it prunes stay pruned, and a density above the run's
keeps its mask as it is (densities always count all prunable weights). The one-shot evaluations are recomputed on
every run (seconds); the retraining units train in one stacked fit through the
engine (:mod:`lotto_jax.runs.engine`): a killed run resumes them, finished ones
are never retrained, and densities or scopes added on a rerun train only the
new units.

References:
  Jaiswal, Liu, Chen & Wang 2023, "The Emergence of Essential Sparsity in Large
  Pre-trained Models: The Weights that Matter", arXiv:2306.03805.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

from lotto_jax.runs.common import STORE_FIELDS, RunOptions

__all__ = ["DENSITIES", "MUTABLE_FIELDS", "OneshotConfig", "main", "unit_name"]

MUTABLE_FIELDS: tuple[str, ...] = (*STORE_FIELDS, "densities", "scopes", "knee",
                                   "tolerance")
"""Fields a rerun on the same directory may change (new units are added, the
knees recomputed; finished units are kept)."""

DENSITIES: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.07,
                                0.05, 0.03, 0.02, 0.01)
"""The default densities: 90 % down to 1 % of the weights kept."""

_UNITS = {"train": "train", "imp": "round_000"}


@dataclasses.dataclass(frozen=True)
class OneshotConfig(RunOptions):
    """Essential sparsity: prune a trained dense network one-shot by magnitude at many densities.

    Attributes:
      run: the source run directory: a ``lotto train`` run or a ``lotto imp``
        run (its dense round 0); read, never written.
      densities: fractions of the prunable weights (kernels) kept, each in (0, 1].
      scopes: ``global`` (one magnitude threshold over all layers) and/or
        ``layerwise`` (every layer keeps the same fraction).
      knee: the rule that finds the essential sparsity: ``drop`` (the last
        density within ``tolerance`` of the dense accuracy, walking from dense)
        or ``kneedle`` (the point farthest above the chord of the curve); both
        are in ``results.json``, this one is marked and printed.
      tolerance: ``drop``: the accepted fall in test accuracy below the dense
        network's (absolute: 0.01 = one point).
      retrain_steps: train every pruned network this many steps under its fixed
        mask (0: one-shot only).
      retrain_lr: the constant learning rate of that retraining; default: the
        source run's ``lr``.
      out: the directory of this run (layout: module docs).
    """

    run: str = "runs/train"
    densities: tuple[float, ...] = DENSITIES
    scopes: tuple[str, ...] = ("global", "layerwise")
    knee: str = "drop"
    tolerance: float = 0.01
    retrain_steps: int = 0
    retrain_lr: float | None = None
    out: str = dataclasses.field(default="runs/oneshot", kw_only=True)

    def __post_init__(self):
        from lotto_jax import oneshot

        super().__post_init__()
        oneshot.check_densities(self.densities)
        bad = [s for s in self.scopes if s not in ("global", "layerwise")]
        if not self.scopes or bad or len(set(self.scopes)) != len(self.scopes):
            raise ValueError(f"scopes: expected distinct values among 'global' and "
                             f"'layerwise', got {list(self.scopes)}")
        if self.knee not in oneshot.KNEE_RULES:
            raise ValueError(f"knee: expected one of {list(oneshot.KNEE_RULES)}, got "
                             f"{self.knee!r}")
        if isinstance(self.tolerance, bool) or not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance: expected an accuracy drop in [0, 1), got "
                             f"{self.tolerance!r}")
        if (isinstance(self.retrain_steps, bool) or not isinstance(self.retrain_steps, int)
                or self.retrain_steps < 0):
            raise ValueError(f"retrain_steps: expected an int >= 0, got "
                             f"{self.retrain_steps!r}")
        if self.retrain_lr is not None and not self.retrain_lr > 0:
            raise ValueError(f"retrain_lr: expected a positive learning rate, got "
                             f"{self.retrain_lr!r}")


def unit_name(scope: str, density: float) -> str:
    """The retraining unit of ``scope`` at ``density``: ``retrain/global/d0.05``."""
    return f"retrain/{scope}/d{density:g}"


class _Source(NamedTuple):
    path: str
    kind: str
    unit: str
    config: dict[str, Any]
    replicates: int


def _source(config: OneshotConfig) -> _Source:
    """The source run, checked before anything is built or written.

    Raises:
      FileNotFoundError: ``run`` is not a run directory.
      ValueError: naming ``run``: not a train or IMP run, no readable config, or
        no trained dense weights yet.
    """
    from lotto_jax import models
    from lotto_jax.runs import layout

    d = os.path.abspath(config.run)
    if not os.path.isdir(d) or not layout.is_run(d):
        raise FileNotFoundError(f"run: {d}: no such run directory")
    kind = layout.run_kind(d)
    if kind not in _UNITS:
        raise ValueError(f"run: {d} is a {kind} run; lotto oneshot prunes the trained "
                         "dense network of a lotto train run or of a lotto imp run "
                         "(its round 0)")
    cfg, _ = layout.load_json(os.path.join(d, "config.json"))
    if not isinstance(cfg, dict) or not isinstance(cfg.get("run"), dict):
        raise ValueError(f"run: {d} has no readable config.json (with its run settings)")
    unit = _UNITS[kind]
    if not all(os.path.exists(os.path.join(d, unit, name))
               for name in ("final.manifest.json", "metrics.json")):
        raise ValueError(f"run: {d} has no trained weights yet ({unit}/final and "
                         f"{unit}/metrics.json): finish it by rerunning its command")
    model = cfg["run"].get("model")
    if model not in models.NAMES:
        raise ValueError(f"run: {d}/config.json names the model {model!r}, not one of "
                         f"{list(models.NAMES)}")
    return _Source(d, kind, unit, cfg, int(cfg["run"].get("replicates") or 1))


def main(config: OneshotConfig) -> dict[str, Any]:
    """Runs ``lotto oneshot`` in ``config.out`` (resuming what is there), prints
    the table and writes the figure.

    Returns:
      The ``results.json`` record.

    Raises:
      FileNotFoundError: ``run`` is not a run directory.
      ValueError: ``run`` is not a train or IMP run or has no trained weights
        (named ``run``), before the output directory is written.
      lotto_jax.runs.store.RunLockedError: another process writes ``config.out``.
      lotto_jax.runs.store.ConfigMismatchError: ``config.out`` holds another run.
    """
    from lotto_jax.runs import common

    src = _source(config)
    return common.run_in_store(config, MUTABLE_FIELDS, lambda store: _main(config, store, src))


def _retrain_config(config: OneshotConfig, train):
    """The source's training, ``retrain_steps`` long at a constant learning rate."""
    steps = config.retrain_steps or train.steps
    return dataclasses.replace(train, steps=steps, lr=config.retrain_lr or train.lr,
                               schedule="constant", milestones=(), warmup_steps=0,
                               eval_every=min(train.eval_every, steps))


def _load(src: _Source, prep):
    """``(final {"params", "model_state"}, mask)`` of the source, stacked over its
    replicates when it has several."""
    import jax
    import jax.numpy as jnp

    from lotto_jax.runs import common
    from lotto_jax.runs.engine import abstract
    from lotto_jax.runs.store import RunStore

    store = RunStore(src.path)
    one = {"params": prep.params, "model_state": prep.model_state}
    n = src.replicates
    target = abstract(common.stack([one] * n) if n > 1 else one)
    final = store.restore(f"{src.unit}/final", target)
    mask_target = jax.tree.map(lambda t: jax.ShapeDtypeStruct(t.shape, jnp.bool_),
                               target["params"])
    item = "mask" if src.kind == "train" else f"{src.unit}/mask"
    mask = store.restore(item, mask_target) if store.has(item) else jax.tree.map(
        lambda t: jnp.ones(t.shape, bool), mask_target)
    return final, mask


def _rows(tree, n: int | None):
    """The replicate rows of ``tree`` (the tree itself when ``n`` is None)."""
    import jax

    return [tree] if n is None else [jax.tree.map(lambda x, i=i: x[i], tree)
                                     for i in range(n)]


def _kept(stack, prunable: list[bool]) -> list[int]:
    """Kept prunable weights of each row of a stacked mask."""
    import jax
    import numpy as np

    leaves = [np.asarray(m) for m, p in zip(jax.tree_util.tree_leaves(stack), prunable,
                                            strict=True) if p]
    return [int(sum(m[i].sum() for m in leaves)) for i in range(leaves[0].shape[0])]


def _oneshot(config: OneshotConfig, prep, final, start_mask, n):
    """Per scope: ``{"masks": stacked over replicates per density, "dense": [S],
    "accuracy": [D][S], "kept": [D][S]}``."""
    import jax
    import numpy as np

    from lotto_jax import masks, oneshot, train
    from lotto_jax.runs import common

    apply_fn = train.classifier(prep.module)
    test = prep.dataset.test
    rows = list(zip(_rows(final, n), _rows(start_mask, n), strict=True))
    prunable = jax.tree_util.tree_leaves(masks.is_prunable_tree(prep.params))
    out = {}
    for scope in config.scopes:
        dense, acc, kept, per = [], [], [], []
        for weights, mask in rows:
            stack = oneshot.magnitude_masks(weights["params"], config.densities,
                                            scope=scope, mask=mask)
            both = jax.tree.map(lambda m, s: np.concatenate([np.asarray(m)[None], s]),
                                mask, stack)
            _, a = oneshot.evaluate_masks(apply_fn, weights["params"],
                                          weights["model_state"], both, test.x, test.y,
                                          batch_size=prep.trainer.config.eval_batch_size)
            dense.append(float(a[0]))
            acc.append([float(x) for x in a[1:]])
            kept.append(_kept(stack, prunable))
            per.append(stack)
        masks_by_density = [
            (common.stack if n else lambda t: t[0])(
                [jax.tree.map(lambda m, i=i: m[i], s) for s in per])
            for i in range(len(config.densities))]
        out[scope] = {"masks": masks_by_density, "dense": dense,
                      "accuracy": [list(r) for r in zip(*acc, strict=True)],
                      "kept": [list(r) for r in zip(*kept, strict=True)]}
    return out


def _retrain(config: OneshotConfig, store, prep, final, curves, n,
             data_seed: int) -> dict[str, list]:
    """Trains every (scope, density) network ``retrain_steps`` steps under its mask
    (engine units, one stacked fit); ``{scope: [D][S] final test accuracies}``."""
    import jax
    import numpy as np

    from lotto_jax import masks
    from lotto_jax.runs import common
    from lotto_jax.runs.engine import Engine, Unit, abstract
    from lotto_jax.runs.records import layer_counts
    from lotto_jax.runs.writer import Clock, WriteBehind

    data_key = (common.replicate_data_keys(data_seed, n) if n else jax.random.key(data_seed))
    clock = Clock()
    writer = WriteBehind(store, clock)
    try:
        engine = Engine(prep.trainer, prep.dataset, data_key, writer, stacked=bool(n),
                        save_every=config.save_every, save_interval=config.save_interval,
                        clock=clock)
        units = []
        for scope in config.scopes:
            for d, m in zip(config.densities, curves[scope]["masks"], strict=True):
                name = unit_name(scope, d)
                mask = engine.load_or(f"{name}/mask", abstract(m), lambda m=m: m)
                units.append(Unit(name, f"{scope} {d:g}", final, mask))

        def metrics_fn(unit, res):
            return {**layer_counts(unit.mask, masks.default_prunable, bool(n)),
                    **res.metrics()}

        done = engine.run(units, lambda names: f"retrain {len(names)} networks",
                          metrics_fn=metrics_fn)
        writer.close()
    except BaseException:
        writer.close(raise_errors=False)
        raise
    out: dict[str, list] = {s: [] for s in config.scopes}
    for u in done:
        scope = u.unit.prefix.split("/")[1]
        out[scope].append([float(x) for x in np.ravel(u.metrics["final_test_accuracy"])])
    return out


def _main(config: OneshotConfig, store, src: _Source) -> dict[str, Any]:
    from lotto_jax.runs import common
    from lotto_jax.runs.oneshot_report import figure, print_table, record
    from lotto_jax.runs.stability import imp_run_config

    run_config = imp_run_config(src.config)
    run_config = dataclasses.replace(run_config,
                                     train=_retrain_config(config, run_config.train))
    prep = common.prepare(run_config)
    n = src.replicates if src.replicates > 1 else None
    final, start_mask = _load(src, prep)
    curves = _oneshot(config, prep, final, start_mask, n)
    retrained = (_retrain(config, store, prep, final, curves, n, run_config.data_seed)
                 if config.retrain_steps else None)
    results = record(config, src, run_config, curves, retrained)
    store.write_json("results.json", results)
    print_table(results)
    figure(results, os.path.join(store.directory, "figures", "accuracy.png"))
    return results
