"""``lotto sft``: sparse fine-tuning (LT-SFT), composition and grafting.

Two tasks are cut from one dataset by classes (:func:`lotto_jax.sft.select_classes`,
labels kept, one shared head): task A (``--task-a``, MNIST digits 0-4 by default)
and task B (``--task-b``, 5-9); with ``--compose`` task B is also split into two
halves B1 and B2 (5-7 and 8-9). The run, every network through the engine
(:mod:`lotto_jax.runs.engine`):

1. *pretrain*: θ_init trained on A (``--steps``) → θ0 (LT-SFT's pretrained net);
2. *finetune/T*: θ0 fully fine-tuned on task T (B, B1, B2) with a fresh
   optimiser (``--finetune-steps``, ``--finetune-lr``) → θ1; like every
   fine-tuning here it trains the difference δ = θ − θ0 (under an all-True mask:
   Adam on δ from 0 is Adam on θ from θ0), so all fine-tunings of a task share
   one compiled trainer;
3. *ltsft/T/kK*: for every ``--k`` (a fraction of all weights, or a count): the
   K entries with the largest ``|θ1 − θ0|`` (:func:`lotto_jax.sft.most_changed`,
   ties may add more), all weights reset to θ0, only those fine-tuned (a fresh
   optimiser, the same steps) → θ2, the others bit-equal to θ0; φ = θ2 − θ0 is
   stored sparse (``phi``); the K runs of a task train in one stacked fit;
4. *random/B/kK* (``--random-k``): the control with as many entries drawn at random;
5. *compose*: θ0 + φ_B1 + φ_B2 per K (:func:`lotto_jax.sft.apply_differences`);
   the interference of task Bi is its accuracy under its own φ minus under the
   composition; the full fine-tunings' dense differences composed the same way
   are the baseline;
6. *graft/fF* (``--graft-fractions``): skill localisation (Panigrahi et al.
   2023) on task B: base patch = the top F of ``|θ1 − θ0|``, scores descending
   the task loss for ``--graft-steps`` steps at each ``--graft-lrs``; the rounded region with the best
   selection accuracy (validation, else train) is kept; its size and the
   fraction of the fine-tuned accuracy it recovers are reported.

Layout::

  OUT/
    config.json, driver.json     the config; tasks, sizes, keys
    init/                        θ_init
    pretrain/                    unit: final/ (θ0), metrics.json, eval.json
    finetune/B/ (B1/, B2/)       units: final/ (δ, θ0 in its state), metrics.json,
                                 eval.json
    ltsft/B/k266/                unit: mask/, final/ (δ, θ0 in its state), metrics.json,
                                 phi/ (φ: flat indices and values; phi_rI/ per
                                 replicate I with --replicates), eval.json
    random/B/k266/               the random-K control, as ltsft
    compose/k266.json, full.json composition records
    graft/f0.001/lr1e+07/        scores/ (the best S), metrics.json
    results.json, figures/       the summary (written last), sft.png, graft.png

Every unit and record is committed as it finishes: a killed run resumes from its
last checkpoint or record; a rerun of a finished run trains and grafts nothing
(it reads the records back). One writer at a time. ``--repair`` discards a
corrupt unit with everything derived from it (:mod:`lotto_jax.runs.repair`: θ0
takes every other unit, a full fine-tuning its task's sparse units, task B's its
graftings, a half's its compositions); ``lotto ls`` and ``lotto report`` read the
run (kind ``sft``).

``--replicates S``: every unit holds S networks stacked along a leading axis,
trained in one vmapped fit; replicate ``i`` has init seed ``seed + i`` and the data
order of ``data_seed + i`` (its random-K and graft draws too), so replicate ``i``
is the single run with those seeds (all share the validation split drawn with
``data_seed``, as in every command). Selections, φ (``phi_rI``), evaluations and
graftings are per replicate; every per-replicate value of a record is a list over
the replicates and the table shows mean ± std.

References:
  Ansell, Ponti, Korhonen & Vulić 2022, arXiv:2110.07560 (LT-SFT).
  Panigrahi, Saunshi, Zhao & Arora 2023, arXiv:2302.06600 (grafting).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lotto_jax.runs.common import STORE_FIELDS, RunConfig, RunOptions

__all__ = ["MUTABLE_FIELDS", "SftConfig", "main"]

MUTABLE_FIELDS: tuple[str, ...] = (*STORE_FIELDS, "run.data_dir", "k", "graft_fractions",
                                   "graft_lrs")
"""Fields a rerun may change: new K values or graft sizes add units, finished ones
are kept."""


def _classes(name: str, value: Any) -> tuple[int, ...]:
    if not value or len(set(value)) != len(value) or any(
            isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in value):
        raise ValueError(f"{name}: expected distinct class labels >= 0, got {list(value)}")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class SftConfig(RunOptions):
    """Sparse fine-tuning (LT-SFT), composition of sparse differences and grafting.

    Attributes:
      run: model, data, seeds and the pretraining on task A (``--steps``, ``--lr``).
      task_a: the classes of task A (pretraining).
      task_b: the classes of task B (fine-tuning); with ``compose`` at least 2.
      finetune_steps: steps of each fine-tuning (full and sparse); default ``--steps``.
      finetune_lr: their learning rate; default ``--lr``.
      k: the numbers of fine-tuned weights: a fraction in (0, 1) of all weights
        or a whole count >= 1, at most the number of weights.
      random_k: also train the random-K control on task B.
      compose: fine-tune the two halves of task B separately and compose them.
      graft_fractions: grafting's base patch sizes, fractions in (0, 1] of all
        weights (``()``: no grafting).
      graft_steps: descent steps of the graft scores.
      graft_lrs: their learning rates (the reference scripts: 1e7); each with
        each base patch size is one grafting: the rate sets how far the region
        grows beyond the base patch.
      graft_batch: examples per graft step (at most task B's training set).
      out: the run directory (layout: module docs).
    """

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    task_a: tuple[int, ...] = (0, 1, 2, 3, 4)
    task_b: tuple[int, ...] = (5, 6, 7, 8, 9)
    finetune_steps: int | None = None
    finetune_lr: float | None = None
    k: tuple[float, ...] = (0.001, 0.01, 0.05)
    random_k: bool = True
    compose: bool = True
    graft_fractions: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    graft_steps: int = 50
    graft_lrs: tuple[float, ...] = (1e7,)
    graft_batch: int = 1000
    out: str = dataclasses.field(default="runs/sft", kw_only=True)

    def __post_init__(self):
        from lotto_jax import sft

        super().__post_init__()
        a, b = _classes("task_a", self.task_a), _classes("task_b", self.task_b)
        if set(a) & set(b):
            raise ValueError(f"task_b: shares classes {sorted(set(a) & set(b))} with task_a")
        if self.compose and len(b) < 2:
            raise ValueError(f"task_b: --compose splits it in two, needs >= 2 classes, "
                             f"got {list(b)}")
        if not self.k or len(set(self.k)) != len(self.k):
            raise ValueError(f"k: expected distinct values, got {list(self.k)}")
        for k in self.k:
            sft.count_k(k, 2**62)
        for f in self.graft_fractions:
            if isinstance(f, bool) or not 0 < f <= 1:
                raise ValueError(f"graft_fractions: expected values in (0, 1], got {f!r}")
        for name in ("finetune_steps", "graft_steps", "graft_batch"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0
                                  or (v == 0 and name != "graft_steps")):
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if self.finetune_lr is not None and not self.finetune_lr > 0:
            raise ValueError(f"finetune_lr: expected a positive learning rate, got "
                             f"{self.finetune_lr!r}")
        if not self.graft_lrs or any(isinstance(v, bool) or not v > 0 for v in self.graft_lrs):
            raise ValueError(f"graft_lrs: expected positive learning rates, got "
                             f"{list(self.graft_lrs)}")


def tasks(config: SftConfig, dataset) -> dict[str, Any]:
    """``{"A", "B"[, "B1", "B2"]}``: the tasks' datasets (B's halves by
    ``numpy.array_split`` of its classes)."""
    from lotto_jax import sft

    out = {"A": sft.select_classes(dataset, config.task_a, name="task_a"),
           "B": sft.select_classes(dataset, config.task_b, name="task_b")}
    if config.compose:
        for name, part in zip(("B1", "B2"), np.array_split(np.array(config.task_b), 2),
                              strict=True):
            out[name] = sft.select_classes(dataset, [int(c) for c in part], name="task_b")
    return out


def main(config: SftConfig) -> dict[str, Any]:
    """Runs ``lotto sft`` in ``config.out`` (resuming what is there), prints the
    table, writes the figures and returns the ``results.json`` record.

    Raises:
      ValueError: a bad flag, named, before anything is written: a class the
        dataset lacks, a K larger than the number of weights, a batch larger
        than a task's training set.
      lotto_jax.runs.store.RunLockedError, ConfigMismatchError,
        CorruptCheckpointError: as every command.
    """
    import jax

    from lotto_jax import sft, train
    from lotto_jax.runs import common

    prep = common.prepare(config.run)
    ts = tasks(config, prep.dataset)
    n = sum(int(np.size(x)) for x in jax.tree.leaves(prep.params))
    ks = tuple(sft.count_k(k, n) for k in config.k)
    ft = dataclasses.replace(config.run.train, steps=config.finetune_steps or
                             config.run.train.steps,
                             lr=config.finetune_lr or config.run.train.lr)
    apply_fn = train.classifier(prep.module)
    # pretraining trains θ; every fine-tuning (full: an all-True mask) trains a
    # difference δ from θ0 through one trainer per task (sft.difference_apply)
    plain = train.make_trainer(apply_fn, config.run.train, num_train=len(ts["A"].train),
                               mesh=prep.mesh)
    diff = {name: train.make_trainer(sft.difference_apply(apply_fn), ft,
                                     num_train=len(ds.train), mesh=prep.mesh)
            for name, ds in ts.items() if name != "A"}
    if config.graft_fractions and config.graft_batch > len(ts["B"].train):
        raise ValueError(f"graft_batch: {config.graft_batch} is larger than task B's "
                         f"training set ({len(ts['B'].train)})")
    from lotto_jax.runs.sft_stages import Stages

    def body(store):
        return Stages(config, store, prep, ts, plain, diff, ks, n).run()

    return common.run_in_store(config, MUTABLE_FIELDS, body)
