"""``lotto bip``: BiP, pruning by bi-level optimisation (Zhang et al. 2022).

One run, for every ``--keep``:

1. *pretrain*: the dense network trained from θ_init with the run's training
   config (``--steps``, ``--lr``, ...), or ``--pretrained`` weights (then 0 steps);
2. *bip/kK*: BiP from the pretrained weights (:mod:`lotto_jax.bip`): scores = the
   weights, mask = global top-k of ``|s|``; ``--bip-steps`` steps alternating a
   θ-step (SGD on the weights under the mask) and an m-step (SGD on the scores
   along the implicit gradient), each on its own batch; the pruned network is
   ``θ ⊙ m`` at the end (no rewinding: BiP's ticket is the trained subnetwork);
3. *finetune/kK* (``--finetune-steps`` > 0): ``θ ⊙ m`` fine-tuned under the fixed
   mask with the run's training config (the reference's optional finetune).

Every network goes through the engine (:mod:`lotto_jax.runs.engine`): resumed after
a kill, never retrained. Cost: ``total_steps`` = pretraining + BiP + fine-tuning
steps, each one forward and backward pass of one batch (the reference's iteration
is two of our BiP steps: it also computes the implicit gradient from extra
passes that we read off the m-step's one backward pass).

Layout (a replicate axis leads every array with ``--replicates S > 1``)::

  RUN/
    config.json, driver.json
    init/                       θ_init {"params", "model_state"}
    pretrain/                   unit: final/ (the dense network), metrics.json
    bip/k0.1/                   unit: final/ ({"theta", "scores"}), metrics.json
    export/k0.1/                mask/ (the found mask), weights/ (θ ⊙ m)
    finetune/k0.1/              unit (with --finetune-steps): final/, metrics.json
    results.json                per keep: density, accuracies, steps (written last)

Restore a found network with plain orbax::

  ckpt = ocp.StandardCheckpointer()
  mask = ckpt.restore(os.path.abspath("runs/bip/export/k0.1/mask"))
  weights = ckpt.restore(os.path.abspath("runs/bip/export/k0.1/weights"))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from lotto_jax import bip, masks, train
from lotto_jax.runs import common
from lotto_jax.runs.engine import Engine, Unit, abstract
from lotto_jax.runs.records import key_list, layer_counts
from lotto_jax.runs.store import RunStore
from lotto_jax.runs.writer import Clock, WriteBehind

__all__ = ["MUTABLE_FIELDS", "BipConfig", "format_table", "keep_name", "main", "print_table",
           "report"]

MUTABLE_FIELDS: tuple[str, ...] = (*common.STORE_FIELDS, "run.data_dir", "keep")
"""Fields a rerun may change: new keeps add units, finished ones are kept."""


def keep_name(keep: float) -> str:
    """The unit name of a keep: ``k0.1``, ``k0.02``."""
    return f"k{keep:g}"


def _positive(name: str, value: Any, *, zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (
        value >= 0 if zero else value > 0)
    if not ok:
        raise ValueError(f"{name}: expected a number {'>= 0' if zero else '> 0'}, "
                         f"got {value!r}")


@dataclasses.dataclass(frozen=True)
class BipConfig(common.RunOptions):
    """BiP: ``lotto bip --model lenet300 --keep 0.2 0.1 0.05 --bip-steps 4000``.

    Attributes:
      run: model, data, seeds and the dense pretraining (``--steps``, ``--lr``,
        ...; also the fine-tuning's optimizer).
      keep: the fractions of the prunable weights kept (globally, the reference's
        unstructured BiP), each a BiP run from the same pretrained network.
      pretrained: an orbax checkpoint of params (or of ``{"params", ...}``, e.g. a
        run's ``final``) to prune instead of pretraining; with ``--replicates S``
        stacked along a leading replicate axis (a replicated run's ``final``).
      bip_steps: BiP steps (θ-steps and m-steps alternate, one batch each).
      bip_lr: the weights' SGD learning rate (cosine to 0 over ``bip_steps``).
      mask_lr: the scores' SGD learning rate (the same cosine shape).
      bip_momentum: momentum of both SGDs.
      bip_weight_decay: weight decay of both SGDs (on the weights it is the lower
        level's ``γ``).
      ig_scale: the implicit-gradient coefficient (the paper's ``1/γ``, the
        code's ``lr2``); 0: alternating HYDRA-style training.
      correction: ``paper`` or ``code`` (:mod:`lotto_jax.bip`).
      finetune_steps: fine-tuning steps of ``θ ⊙ m`` under the fixed mask (0: none).
      finetune_lr: their learning rate (default: the run's ``--lr``).
      out: the run directory (layout: module docs).
    """

    run: common.RunConfig = dataclasses.field(default_factory=common.RunConfig)
    keep: tuple[float, ...] = (0.2, 0.1, 0.05)
    pretrained: str | None = None
    bip_steps: int = 2000
    bip_lr: float = 0.1
    mask_lr: float = 0.1
    bip_momentum: float = 0.9
    bip_weight_decay: float = 1e-4
    ig_scale: float = 1e-4
    correction: str = "paper"
    finetune_steps: int = 0
    finetune_lr: float | None = None
    out: str = dataclasses.field(default="runs/bip", kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        if not self.keep or len(set(self.keep)) != len(self.keep):
            raise ValueError(f"keep: expected distinct fractions, got {list(self.keep)}")
        for k in self.keep:
            if isinstance(k, bool) or not 0 < k < 1:
                raise ValueError(f"keep: expected fractions in (0, 1), got {k!r}")
        for name in ("bip_steps", "finetune_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (name == "bip_steps"):
                low = 1 if name == "bip_steps" else 0
                raise ValueError(f"{name}: expected an int >= {low}, got {v!r}")
        for name in ("bip_lr", "mask_lr"):
            _positive(name, getattr(self, name))
        for name in ("ig_scale", "bip_weight_decay"):
            _positive(name, getattr(self, name), zero=True)
        if self.finetune_lr is not None:
            _positive("finetune_lr", self.finetune_lr)
        if not 0 <= self.bip_momentum < 1:
            raise ValueError(f"bip_momentum: expected a value in [0, 1), got "
                             f"{self.bip_momentum!r}")
        if self.correction not in bip.CORRECTIONS:
            raise ValueError(f"correction: expected one of {bip.CORRECTIONS}, got "
                             f"{self.correction!r}")


def _bip_trainer(c: BipConfig, prep: common.Prepared, keep: float) -> train.Trainer:
    """BiP's trainer for one keep: the joint tree, the alternating optimiser."""
    t = c.run.train
    cfg = dataclasses.replace(t, steps=c.bip_steps, lr=c.bip_lr, optimizer="sgd",
                              momentum=0.0, weight_decay=0.0, schedule="cosine",
                              warmup_steps=0)
    sgd = train.optimizer(dataclasses.replace(
        cfg, momentum=c.bip_momentum, weight_decay=c.bip_weight_decay))
    tx = bip.alternating(sgd, sgd, score_scale=c.mask_lr / c.bip_lr,
                         ig_scale=c.ig_scale, form=c.correction)
    return train.make_trainer(bip.apply(train.classifier(prep.module), keep), cfg,
                              num_train=len(prep.dataset.train), mesh=prep.mesh,
                              grad_transform=tx)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _export(joint, keep, stacked):
    fn = functools.partial(bip.export_weights, keep=keep)
    return jax.vmap(fn)(joint) if stacked else fn(joint)


@functools.partial(jax.jit, static_argnums=1)
def _init(params, stacked):
    return jax.vmap(bip.init)(params) if stacked else bip.init(params)


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("final_test_accuracy", "best_test_accuracy", "early_stop_step",
            "early_stop_test_accuracy")
    return {k: metrics.get(k) for k in keys}


class _Bip:
    """One ``lotto bip`` run: the pretraining, then every keep's BiP (and fine-tuning)."""

    def __init__(self, c: BipConfig, store, prep, clock):
        self.c, self.store, self.prep = c, store, prep
        self.stacked = c.run.replicates > 1
        self.theta_init, self.data_key = common.start_weights(c.run, prep)
        self.kw = dict(stacked=self.stacked, mesh=prep.mesh, save_every=c.save_every,
                       save_interval=c.save_interval, clock=clock)
        self.dense = Engine(prep.trainer, prep.dataset, self.data_key, store, **self.kw)
        self.target = abstract(self.theta_init)

    def metrics_fn(self, u: Unit, res: train.FitResult) -> dict[str, Any]:
        return res.metrics()

    def pretrained(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        start = self.dense.load_or("init", self.target, lambda: self.theta_init)
        if self.c.pretrained:
            from lotto_jax.runs.supermask import load_params

            params = load_params(self.c.pretrained, start["params"])
            return {"params": params, "model_state": start["model_state"]}, None
        mask = masks.init(start["params"])
        (done,) = self.dense.run([Unit("pretrain", "pretrain", start, mask)],
                                 lambda n: "pretrain", metrics_fn=self.metrics_fn)
        final = done.final or self.dense.final("pretrain", self.target)
        return final, done.metrics

    def keep(self, keep: float, pre: dict[str, Any]) -> dict[str, Any]:
        name = keep_name(keep)
        engine = Engine(_bip_trainer(self.c, self.prep, keep), self.prep.dataset,
                        self.data_key, self.store, **self.kw)
        joint = {"params": _init(pre["params"], self.stacked),
                 "model_state": pre["model_state"]}
        (done,) = engine.run([Unit(f"bip/{name}", f"bip {name}", joint,
                                   masks.init(joint["params"]))],
                             lambda n: f"bip keep {keep:g}", metrics_fn=self.metrics_fn)
        final = done.final or engine.final(f"bip/{name}", abstract(joint))
        weights, mask = _export(final["params"], keep, self.stacked)
        mask = engine.load_or(f"export/{name}/mask", abstract(mask), lambda: mask)
        weights = engine.load_or(f"export/{name}/weights", abstract(weights),
                                 lambda: weights)
        start_mask = _export(joint["params"], keep, self.stacked)[1]
        changed = sum(np.sum(np.asarray(a) != np.asarray(b), axis=tuple(
            range(1 if self.stacked else 0, np.ndim(a))))
            for a, b in zip(jax.tree.leaves(mask), jax.tree.leaves(start_mask), strict=True))
        counts = layer_counts(mask, masks.default_prunable, self.stacked)
        curve = done.metrics["curve"]
        row = {"keep": keep, "density": counts["density"], "kept": counts["kept"],
               "total": counts["total"], "start_test_accuracy": curve[0]["test_accuracy"],
               **_summary(done.metrics), "mask_changed": np.asarray(changed).tolist()}
        if self.c.finetune_steps:
            row["finetune"] = self.finetune(name, weights, pre["model_state"], mask)
        return row

    def finetune(self, name: str, params, model_state, mask) -> dict[str, Any]:
        t = self.c.run.train
        cfg = dataclasses.replace(t, steps=self.c.finetune_steps,
                                  lr=self.c.finetune_lr or t.lr)
        trainer = train.make_trainer(train.classifier(self.prep.module), cfg,
                                     num_train=len(self.prep.dataset.train),
                                     mesh=self.prep.mesh)
        engine = Engine(trainer, self.prep.dataset, self.data_key, self.store, **self.kw)
        (done,) = engine.run([Unit(f"finetune/{name}", f"finetune {name}",
                                   {"params": params, "model_state": model_state}, mask)],
                             lambda n: f"finetune {name}", metrics_fn=self.metrics_fn)
        return _summary(done.metrics)

    def run(self) -> dict[str, Any]:
        c = self.c
        pre, pre_metrics = self.pretrained()
        pre_steps = 0 if c.pretrained else c.run.train.steps
        rows = []
        for keep in c.keep:
            row = self.keep(keep, pre)
            row["steps"] = {"pretrain": pre_steps, "bip": c.bip_steps,
                            "finetune": c.finetune_steps,
                            "total": pre_steps + c.bip_steps + c.finetune_steps}
            rows.append(row)
        return {"method": "bip", "model": c.run.model, "dataset": c.run.dataset,
                "replicates": c.run.replicates, "pretrained": c.pretrained,
                "ig_scale": c.ig_scale, "correction": c.correction,
                "pretrain": None if pre_metrics is None else _summary(pre_metrics),
                "keeps": rows}


def main(config: BipConfig) -> dict[str, Any]:
    """Runs :class:`BipConfig` in ``config.out`` (resuming what is there), prints a
    table and returns the ``results.json`` record (module docs)."""
    prep = common.prepare(config.run)
    if config.run.train.batch_size > len(prep.dataset.train):
        raise ValueError(f"batch_size: {config.run.train.batch_size} is larger than the "
                         f"training set ({len(prep.dataset.train)})")

    def body(store: RunStore) -> dict[str, Any]:
        clock = Clock()
        writer = WriteBehind(store, clock)
        try:
            run = _Bip(config, writer, prep, clock)
            store.check_record("driver", {"method": "bip",
                                          "data_key": key_list(run.data_key)})
            results = run.run()
            writer.write_json("results.json", results)
            writer.close()
        except BaseException:
            writer.close(raise_errors=False)
            raise
        return results

    results = common.run_in_store(config, MUTABLE_FIELDS, body)
    print_table(results)
    return results


def _pct(v) -> str:
    a = 100 * np.atleast_1d(np.asarray(v, float))
    return f"{a.mean():.2f}" + (f" ± {a.std():.2f}" if a.size > 1 else "")


def format_table(results: dict[str, Any]) -> str:
    """The run's table as text: one row per keep."""
    lines = []
    pre = results.get("pretrain")
    if pre:
        lines.append(f"dense (pretrained): {_pct(pre['final_test_accuracy'])} % test")
    lines.append("keep    density   one-shot       BiP final      BiP best       finetuned"
                 "      mask changed  steps")
    for r in results["keeps"]:
        ft = r.get("finetune")
        lines.append(
            f"{r['keep']:<7g} {100 * r['density']:6.2f} %  {_pct(r['start_test_accuracy']):<13}"
            f"  {_pct(r['final_test_accuracy']):<13}  {_pct(r['best_test_accuracy']):<13}"
            f"  {_pct(ft['final_test_accuracy']) if ft else '-':<13}"
            f"  {int(np.mean(r['mask_changed'])):>12}  {r['steps']['total']}")
    return "\n".join(lines)


def print_table(results: dict[str, Any]) -> None:
    """Prints :func:`format_table`."""
    print(format_table(results))


def report(directory: str, *, figures_dir: str | None = None):
    """``lotto report DIR`` of a ``lotto bip`` run: prints the table, writes
    ``bip.png`` (accuracy against the weights kept: BiP, the one-shot magnitude
    start, fine-tuned; default into ``DIR/figures``); returns a
    :class:`lotto_jax.runs.report.Report` whose ``run`` is ``results.json``.

    Raises:
      FileNotFoundError: the run has no ``results.json`` yet.
    """
    import os

    from lotto_jax.runs import layout, plots
    from lotto_jax.runs.report import Report

    results, ok = layout.load_json(os.path.join(directory, "results.json"))
    if not ok or not isinstance(results, dict) or results.get("method") != "bip":
        raise FileNotFoundError(f"{directory}: no finished lotto bip results "
                                "(results.json); rerun its lotto bip command")
    text = format_table(results)
    print(text)
    rows = results["keeps"]
    x = [100 * r["density"] for r in rows]
    series = {}
    for label, get in (("BiP", lambda r: r["final_test_accuracy"]),
                       ("one-shot magnitude (BiP's start)",
                        lambda r: r["start_test_accuracy"]),
                       ("BiP + fine-tuning", lambda r: (r.get("finetune") or {}).get(
                           "final_test_accuracy"))):
        values = [get(r) for r in rows]
        if all(v is not None for v in values):
            mean, std = plots.mean_std(values)
            series[label] = (x, 100 * mean, None if std is None else 100 * std)
    path = os.path.join(figures_dir or os.path.join(directory, "figures"), "bip.png")
    return Report(results, text, [plots.metric_vs_density(series, path, title="BiP")])
