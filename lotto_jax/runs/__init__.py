"""The run layer: everything with a directory, a config or a terminal.

* :mod:`~lotto_jax.runs.store`: the orbax run store (manifests, corruption
  detection; :mod:`~lotto_jax.runs.lock`: one writer per directory;
  :mod:`~lotto_jax.runs.jsonio`: atomic JSON); :mod:`~lotto_jax.runs.writer`: its
  writes behind training; :mod:`~lotto_jax.runs.layout`: what kind a run directory
  is and how far each of its units got (every reader uses it).
* :mod:`~lotto_jax.runs.engine`: trains units (variants × replicates) stacked in
  one compiled fit, persists every unit, resumes, never recomputes a finished one;
  :mod:`~lotto_jax.runs.progress`: its progress bars.
* One driver per command: :mod:`~lotto_jax.runs.train`,
  :mod:`~lotto_jax.runs.imp` (with :mod:`~lotto_jax.runs.imp_loop` and
  :mod:`~lotto_jax.runs.imp_rounds`),
  :mod:`~lotto_jax.runs.pai`, :mod:`~lotto_jax.runs.supermask`,
  :mod:`~lotto_jax.runs.dst`.
* :mod:`~lotto_jax.runs.recipes`, :mod:`~lotto_jax.runs.report` (with
  :mod:`~lotto_jax.runs.report_kinds`),
  :mod:`~lotto_jax.runs.plots`, :mod:`~lotto_jax.runs.sweeps`,
  :mod:`~lotto_jax.runs.repair`, :mod:`~lotto_jax.runs.ls`, :mod:`~lotto_jax.runs.cli`.

Algorithm modules (:mod:`lotto_jax.masks`, ``prune``, ``imp``, ...) never import
this package.
"""

from lotto_jax.runs import (
    common,
    dst,
    engine,
    imp,
    imp_loop,
    imp_rounds,
    jsonio,
    layout,
    lock,
    ls,
    pai,
    plots,
    progress,
    recipes,
    records,
    repair,
    report,
    report_kinds,
    store,
    supermask,
    sweeps,
    train,
    writer,
)
from lotto_jax.runs.engine import Done, Engine, Unit
from lotto_jax.runs.imp_loop import run_imp
from lotto_jax.runs.store import RunStore

__all__ = [
    "Done",
    "Engine",
    "RunStore",
    "Unit",
    "common",
    "dst",
    "engine",
    "imp",
    "imp_loop",
    "imp_rounds",
    "jsonio",
    "layout",
    "lock",
    "ls",
    "pai",
    "plots",
    "progress",
    "recipes",
    "records",
    "repair",
    "report",
    "report_kinds",
    "run_imp",
    "store",
    "supermask",
    "sweeps",
    "train",
    "writer",
]
