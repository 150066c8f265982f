"""The run layer: everything with a directory, a config or a terminal.

* :mod:`~lotto_jax.runs.store`: the orbax run store (manifests, one writer's lock,
  corruption detection); :mod:`~lotto_jax.runs.writer`: its writes behind training.
* :mod:`~lotto_jax.runs.engine`: trains units (variants × replicates) stacked in
  one compiled fit, persists every unit, resumes, never recomputes a finished one.
* One driver per command: :mod:`~lotto_jax.runs.train`,
  :mod:`~lotto_jax.runs.imp` (with :mod:`~lotto_jax.runs.imp_loop`),
  :mod:`~lotto_jax.runs.pai`, :mod:`~lotto_jax.runs.supermask`.
* :mod:`~lotto_jax.runs.recipes`, :mod:`~lotto_jax.runs.report`,
  :mod:`~lotto_jax.runs.plots`, :mod:`~lotto_jax.runs.sweeps`,
  :mod:`~lotto_jax.runs.repair`, :mod:`~lotto_jax.runs.ls`, :mod:`~lotto_jax.runs.cli`.

Algorithm modules (:mod:`lotto_jax.masks`, ``prune``, ``imp``, ...) never import
this package.
"""

from lotto_jax.runs import (
    common,
    engine,
    imp,
    imp_loop,
    pai,
    plots,
    recipes,
    records,
    repair,
    report,
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
    "engine",
    "imp",
    "imp_loop",
    "pai",
    "plots",
    "recipes",
    "records",
    "repair",
    "report",
    "run_imp",
    "store",
    "supermask",
    "sweeps",
    "train",
    "writer",
]
