"""``lotto report``: the table and figures of a finished (or running) run.

:func:`main` dispatches on the directory's kind (:mod:`lotto_jax.runs.layout`): an
IMP run is reported here, a PaI / supermask / train / dst run by
:mod:`lotto_jax.runs.report_kinds`, a directory of runs by
:mod:`lotto_jax.runs.sweeps`. For an IMP run:

:func:`load_run` reads a run directory (:mod:`lotto_jax.runs.store` layout): the config and
the ``metrics.json`` of every finished round and control round. :func:`table` turns it
into rows (round, % weights remaining, final test accuracy, early-stop iteration, test
accuracy there, best test accuracy, and final/best accuracy of each control);
:func:`figures` writes the PNGs of :mod:`lotto_jax.runs.plots`. Metrics that carry a
replicate axis (lists, from ``lotto imp --replicates S``) are shown as mean ± std
(population std over the replicates) and drawn with a ±std band.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from typing import Any, NamedTuple

import numpy as np
import tyro

from lotto_jax.runs import layout, plots

__all__ = [
    "Report",
    "ReportConfig",
    "RunData",
    "figure_set",
    "figures",
    "format_table",
    "load_run",
    "lottery_figure",
    "main",
    "print_table",
    "replicates",
    "table",
]


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """Tables and figures of a run: ``lotto report runs/imp``.

    ``DIR`` is a run directory of any command (``imp``, ``pai``, ``supermask``,
    ``train``, ``dst``, ``sft``, ...; an unfinished run is reported as far as it got,
    marked so, but for the kinds with a report of their own, :data:`OWN_REPORTS`), or a
    directory of runs (a sweep: one table per kind and accuracy-vs-density figures
    over all of them, see :mod:`lotto_jax.runs.sweeps`).

    Attributes:
      dir: the run directory (positional on the command line).
      figures: where to write the PNGs; default ``DIR/figures``.
    """

    dir: tyro.conf.Positional[str] = "runs/imp"
    figures: str | None = None


class RunData(NamedTuple):
    """A run's config and finished metrics.

    Attributes:
      directory: the run directory.
      config: ``config.json`` (empty if absent).
      rounds: the trunk's ``metrics.json`` records, in round order.
      controls: control name -> its records in round order.
    """

    directory: str
    config: dict[str, Any]
    rounds: list[dict[str, Any]]
    controls: dict[str, list[dict[str, Any]]]


class Report(NamedTuple):
    """What :func:`main` produced: the data, the table as text, the PNG paths."""

    run: RunData
    table: str
    figures: list[str]


_ROUND = re.compile(r"round_(\d+)$")


def _records(directory: str) -> list[dict[str, Any]]:
    out = []
    for path in glob.glob(os.path.join(directory, "round_*", "metrics.json")):
        match = _ROUND.search(os.path.dirname(path))
        if not match:
            continue
        with open(path) as f:
            rec = json.load(f)
        rec.setdefault("round", int(match.group(1)))
        out.append(rec)
    return sorted(out, key=lambda r: r["round"])


def load_run(directory: str) -> RunData:
    """Reads the config and the finished rounds' metrics of a run directory.

    Args:
      directory: a run directory written by :func:`lotto_jax.imp.run_imp`.

    Returns:
      A :class:`RunData`.

    Raises:
      FileNotFoundError: ``directory`` does not exist, or has no finished round.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"{directory}: no such run directory"
            + (" (it is a file)" if os.path.exists(directory) else "")
        )
    rounds = _records(directory)
    if not rounds:
        raise FileNotFoundError(
            f"{directory}: no finished round (no round_*/metrics.json); "
            "is this an IMP run directory?"
        )
    config_path = os.path.join(directory, "config.json")
    config = {}
    if os.path.exists(config_path):
        with open(config_path) as f:
            config = json.load(f)
    controls = {}
    order = ("reinit", "shuffle", "random")  # lotto_jax.imp.CONTROLS
    found = glob.glob(os.path.join(directory, "controls", "*"))
    rank = lambda p: (order.index(b) if (b := os.path.basename(p)) in order else 9, b)  # noqa: E731
    for path in sorted(found, key=rank):
        recs = _records(path)
        if recs:
            controls[os.path.basename(path)] = recs
    return RunData(os.path.abspath(directory), config, rounds, controls)


def replicates(run: RunData) -> int:
    """The number of replicates of a run (``run.replicates`` of its config; 1 when
    absent), i.e. the length of its per-replicate metric lists."""
    return int((run.config.get("run") or {}).get("replicates") or 1)


def _fmt(value: Any, *, scale: float = 1.0, digits: int = 2) -> str:
    if value is None:
        return "-"
    a = np.asarray(value, float) * scale
    if a.ndim == 0 or a.size == 1:
        return f"{float(a.reshape(())):.{digits}f}"
    return f"{a.mean():.{digits}f} ± {a.std():.{digits}f}"


def table(run: RunData) -> tuple[list[str], list[list[str]]]:
    """The report table as ``(header, rows)`` of strings.

    Columns: round, % of weights remaining, final test accuracy (%), early-stop
    step ("ES": the evaluated step of minimum validation loss), test accuracy at
    early stop (%), best test accuracy (%), then for each
    control its final and best test accuracy (%); ``-`` where absent. Replicated
    metrics are shown as ``mean ± std``.
    """
    header = ["round", "% weights", "final acc", "ES step", "acc @ ES", "best acc"]
    for name in run.controls:
        header += [f"{name} final", f"{name} best"]
    by_round = {name: {r["round"]: r for r in recs} for name, recs in run.controls.items()}
    rows = []
    for rec in run.rounds:
        row = [
            str(rec["round"]),
            f"{100 * rec['density']:.2f}",
            _fmt(rec["final_test_accuracy"], scale=100),
            _fmt(rec["early_stop_step"], digits=0),
            _fmt(rec["early_stop_test_accuracy"], scale=100),
            _fmt(rec["best_test_accuracy"], scale=100),
        ]
        for name in run.controls:
            c = by_round[name].get(rec["round"])
            row += [_fmt(c and c["final_test_accuracy"], scale=100),
                    _fmt(c and c["best_test_accuracy"], scale=100)]
        rows.append(row)
    return header, rows


def format_table(run: RunData) -> str:
    """The table as aligned plain text."""
    header, rows = table(run)
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def print_table(run: RunData) -> None:
    """Prints the table with rich (plain text when stdout is not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    header, rows = table(run)
    n_rep = replicates(run)
    t = Table(title=f"{_method(run)}: {run.directory}"
              + (f" ({n_rep} replicates: mean ± std)" if n_rep > 1 else ""))
    for h in header:
        t.add_column(h, justify="right")
    for r in rows:
        t.add_row(*r)
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(120, 14 * len(header)))
    console.print(t)


def _series(records, key, *, scale=1.0):
    recs = [r for r in records if r.get(key) is not None]
    if not recs:
        return None
    x = [100 * r["density"] for r in recs]
    mean, std = plots.mean_std([r[key] for r in recs])
    return x, mean * scale, None if std is None else std * scale


def _dense(run: RunData, key: str) -> tuple[str, float, float | None] | None:
    """Round 0 (the dense network) as a reference level: ``(label, mean, std)``."""
    first = run.rounds[0]
    if first["round"] != 0 or first.get(key) is None:
        return None
    mean, std = plots.mean_std([first[key]])
    return ("dense", 100 * float(mean[0]), None if std is None else 100 * float(std[0]))


def _method(run: RunData) -> str:
    """``COLT`` for a ``lotto colt`` run (IMP's layout, partition networks as
    controls), else ``IMP``."""
    return "COLT" if "partitions" in run.config else "IMP"


def _title(run: RunData) -> str:
    cfg = run.config.get("run") or {}
    n = replicates(run)
    m = _method(run)
    what = f"{m} on {cfg.get('model', '?')} / {cfg.get('dataset', '?')}" if cfg else m
    return what + (f" ({n} replicates: mean ± std)" if n > 1 else "")


_YLABEL = {"final_test_accuracy": "Final test accuracy (%)",
           "best_test_accuracy": "Best test accuracy (%)",
           "early_stop_test_accuracy": "Test accuracy at early stop (%)"}


def _accuracy_figure(run: RunData, key: str, title: str | None = None):
    groups = {"IMP ticket": run.rounds, **run.controls}
    series = {k: s for k, recs in groups.items()
              if (s := _series(recs, key, scale=100)) is not None}
    if not series:
        return None
    return plots.density_figure(series, ylabel=_YLABEL[key], title=title,
                                reference=_dense(run, key))


def lottery_figure(run: RunData):
    """The headline figure (``lottery.png``) as a matplotlib ``Figure``: best test
    accuracy vs % weights remaining (log axis), the ticket ("IMP ticket") and each
    control with ±std bands over replicates, the dense network as a dashed level."""
    return _accuracy_figure(run, "best_test_accuracy", _title(run))


def figure_set(run: RunData) -> dict[str, Any]:
    """The report's figures as ``{file name: matplotlib Figure}``, in order.

    ``lottery.png``, the headline figure: best test accuracy (the maximum over the
    evaluations, the MNIST-1D notebook's metric) vs % weights remaining on a log
    axis, trunk and controls with ±std bands over replicates and the dense network
    as a dashed level. Then ``accuracy.png`` (final test accuracy),
    ``best_accuracy.png``, ``early_stop_accuracy.png`` and ``early_stop.png``
    (early-stop iteration) when there is a validation split, and ``curves.png``
    (the trunk's test accuracy during training, one line per round, labelled by its
    % of weights remaining).
    """
    out = {"lottery.png": lottery_figure(run)}
    for key, name in (("final_test_accuracy", "accuracy.png"),
                      ("best_test_accuracy", "best_accuracy.png"),
                      ("early_stop_test_accuracy", "early_stop_accuracy.png")):
        if (fig := _accuracy_figure(run, key)) is not None:
            out[name] = fig
    groups = {"IMP ticket": run.rounds, **run.controls}
    series = {k: s for k, recs in groups.items()
              if (s := _series(recs, "early_stop_step")) is not None}
    if series:
        out["early_stop.png"] = plots.density_figure(series, ylabel="Early-stop iteration")
    curves = {}
    for rec in run.rounds:
        steps = [c["step"] for c in rec["curve"]]
        mean, std = plots.mean_std([c["test_accuracy"] for c in rec["curve"]])
        curves[f"{100 * rec['density']:.1f}%"] = (
            steps, 100 * mean, None if std is None else 100 * std)
    out["curves.png"] = plots.curve_figure(curves)
    return out


def figures(run: RunData, directory: str) -> list[str]:
    """Writes the PNGs of :func:`figure_set` into ``directory``; returns their paths."""
    return [plots.save(fig, os.path.join(directory, name))
            for name, fig in figure_set(run).items()]


def _unfinished_note(directory: str) -> str | None:
    """A line naming what an unfinished IMP run still lacks, or None when done."""
    view = layout.read(directory)
    if view.done or not view.units:
        return None
    todo = [p for p, u in view.units.items() if u.status != "done"]
    training = [f"{p} at step {u.step}" for p, u in view.units.items()
                if u.status == "training" and u.step is not None]
    return (f"unfinished: {view.finished}/{len(view.units)} units done ({len(todo)} to go"
            + (f"; training: {', '.join(training)}" if training else "") + ")")


OWN_REPORTS: dict[str, tuple[str, str]] = {
    "stability": ("lotto_jax.runs.stability_report", "main"),
    "earlybird": ("lotto_jax.runs.earlybird", "report"),
    "oneshot": ("lotto_jax.runs.oneshot_report", "main"),
    "sft": ("lotto_jax.runs.sft_report", "main"),
    "bip": ("lotto_jax.runs.bip", "report"),
}
"""Kinds of run with a report of their own: ``(module, function)``, called as
``function(directory, figures_dir=...)``."""


def _own_report(kind: str, directory: str, figures_dir: str | None) -> Any:
    import importlib

    module, fn = OWN_REPORTS[kind]
    return getattr(importlib.import_module(module), fn)(directory, figures_dir=figures_dir)


def _sweep(directory: str, figures_dir: str | None) -> Any:
    """A directory of runs: the sweep's tables and figures (:mod:`lotto_jax.runs.sweeps`)
    over the runs it compares, then the own report of every stability or early-bird
    run under it (figures in each run's ``figures/``)."""
    from lotto_jax.runs import sweeps

    own = [(k, p) for p in layout.find_runs(directory)
           if (k := layout.run_kind(p)) in OWN_REPORTS]
    result = None
    if sweeps.find_runs(directory) or not own:
        result = sweeps.main(directory, figures_dir=figures_dir)
    reports = [_own_report(k, p, None) for k, p in own]
    return result if result is not None else reports


def main(config: ReportConfig) -> Report | Any:
    """Prints the table of ``config.dir`` and writes its figures.

    Dispatches on what the directory holds (:func:`lotto_jax.runs.layout.kind_of`):
    an IMP run (this module), a PaI, supermask, train or dst run
    (:func:`lotto_jax.runs.report_kinds.main`), a stability, early-bird, oneshot or
    sft run (its own report, :data:`OWN_REPORTS`), or a directory of runs, a sweep
    (:func:`lotto_jax.runs.sweeps.main`, whose return value is returned; the
    stability and early-bird runs under it are reported after it; a directory of
    only those returns their reports).

    Raises:
      FileNotFoundError: ``config.dir`` is missing, or holds no run.
    """
    from lotto_jax.runs import report_kinds

    d = config.dir
    if not os.path.isdir(d):
        raise FileNotFoundError(
            f"{d}: no such run directory" + (" (it is a file)" if os.path.exists(d) else ""))
    kind = layout.run_kind(d)
    if kind in OWN_REPORTS and layout.is_run(d):
        return _own_report(kind, d, config.figures)
    if kind in ("pai", "supermask", "train", "dst") and layout.is_run(d):
        return report_kinds.main(d, figures_dir=config.figures)
    if kind != "imp" and (layout.find_runs(d) or not layout.is_run(d)):
        return _sweep(d, config.figures)
    run = load_run(d)
    print_table(run)
    if (note := _unfinished_note(d)) is not None:
        print(note)
    paths = figures(run, config.figures or os.path.join(d, "figures"))
    return Report(run, format_table(run), paths)
