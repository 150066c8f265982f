"""Reports over a directory of runs (a sweep).

Every command writes one run per directory. A sweep is a directory holding several
of them, e.g. every PaI method at every density (``experiments/pai_compare.sh``).
:func:`find_runs` finds them (recursively, :func:`lotto_jax.runs.layout.find_runs`);
:func:`main` prints one table per kind and draws one figure per kind:

* PaI: test accuracy vs percent of weights remaining, a line per method, and its
  sanity checks (shuffle, reinit, invert) as dashed lines of the same method;
* supermask: test accuracy vs percent of weights kept, a line per method and weight
  initialisation;
* dynamic sparse training (``lotto dst``): test accuracy vs percent of weights
  remaining (the target density), a line per method (static, SET, RigL, GMP,
  GraNet), and each PaI method of the sweep as a line of its own (``synflow (at
  init)``), as ``experiments/dst_compare.sh`` lays them side by side;
* IMP: best test accuracy vs percent of weights remaining, a line per run (its
  ticket); IMP and train runs also get a table of their headline numbers.

An unfinished run is reported as far as it got (its finished units), marked
``(unfinished)`` in the tables. Values with a replicate axis are shown as mean ±
std and drawn with std bands.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from typing import Any, NamedTuple

import numpy as np

from lotto_jax.runs import layout, plots

__all__ = ["SweepReport", "SweepRun", "dst_series", "figures", "find_runs", "is_sweep", "main",
           "table", "tables"]


class SweepRun(NamedTuple):
    """One run of a sweep.

    Attributes:
      path: its directory.
      kind: ``"pai"``, ``"supermask"``, ``"dst"``, ``"imp"`` or ``"train"``.
      results: PaI, supermask and dst: ``results.json`` (of an unfinished run, the
        same fields assembled from its config and finished units); IMP: ``{"rounds": [metrics of
        each finished round]}``; train: the network's outcome.
      model: the model named in its ``config.json``.
      status: ``"done"`` or ``"partial"``.
    """

    path: str
    kind: str
    results: dict[str, Any]
    model: str | None = None
    status: str = "done"


class SweepReport(NamedTuple):
    """What :func:`main` produced: the runs, the tables as ``(title, header, rows)``,
    the PNG paths."""

    runs: list[SweepRun]
    tables: list[tuple[str, list[str], list[list[str]]]]
    figures: list[str]


def _results(view: layout.RunView) -> dict[str, Any]:
    """The results of a run of ``view.kind`` as far as it got (see SweepRun)."""
    c = view.config
    if view.kind == "imp":
        return {"rounds": [u.metrics for p, u in view.units.items()
                           if re.fullmatch(r"round_\d+", p) and u.status == "done"]}
    if view.results is not None and view.kind != "train":
        return view.results
    if view.kind == "pai":
        variants = {p.split("/", 1)[1]: layout.entry(view, p)
                    for p, u in view.units.items() if u.status == "done"}
        return {"method": c.get("method"), "density": c.get("density"),
                "scope": c.get("scope"), "variants": variants}
    e = {k: v for k, v in layout.entry(view, next(iter(view.units), "")).items()
         if k != "curve"}
    if view.kind == "supermask":
        return {"method": c.get("method"), "keep": c.get("keep"),
                "weight_init": None if c.get("pretrained") else c.get("weight_init"), **e}
    if view.kind == "dst":
        return {"method": c.get("method"), "target_density": c.get("density"),
                "distribution": c.get("distribution"), **e}
    return e


def find_runs(directory: str) -> list[SweepRun]:
    """The runs under ``directory`` (it included, recursively), of every kind.

    Raises:
      FileNotFoundError: ``directory`` is not a directory.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"dir: no directory at {directory}")
    runs = []
    for path in layout.find_runs(directory):
        view = layout.read(path)
        if view.kind not in layout.KINDS:
            continue
        results = _results(view)
        if view.kind == "pai" and not (results.get("method") and results.get("density")):
            continue
        if view.kind == "supermask" and not (results.get("method") and results.get("keep")):
            continue
        if view.kind == "dst" and not (results.get("method") and results.get("target_density")):
            continue
        model = (view.config.get("run") or {}).get("model")
        runs.append(SweepRun(path, view.kind, results, model,
                             "done" if view.done else "partial"))
    return runs


def _label(run: SweepRun, runs: list[SweepRun]) -> str:
    """Method (and weight init), prefixed by the model when the sweep has several."""
    res = run.results
    label = res["method"]
    if run.kind == "supermask" and res.get("weight_init"):
        label += f" ({res['weight_init']})"
    if run.kind == "dst" and len({r.results.get("distribution") for r in runs
                                  if r.kind == "dst"}) > 1:
        label += f" ({res.get('distribution')})"
    if len({r.model for r in runs}) > 1 and run.model:
        label = f"{run.model}: {label}"
    return label


def _mark(run: SweepRun, label: str) -> str:
    return label if run.status == "done" else f"{label} (unfinished)"


def is_sweep(directory: str) -> bool:
    """Whether ``directory`` holds runs."""
    return os.path.isdir(directory) and bool(find_runs(directory))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    arr = np.asarray(value, float)
    if arr.ndim == 0:
        return f"{100 * float(arr):.2f}"
    return f"{100 * arr.mean():.2f} ± {100 * arr.std():.2f}"


def _pai_table(pai: list[SweepRun], metric: str):
    controls = sorted({c for r in pai for c in r.results["variants"]}
                      - {r.results["method"] for r in pai})
    header = ["method", "% weights", metric.replace("_", " "), *controls, "collapsed layers"]
    rows = []
    for r in sorted(pai, key=lambda r: (r.results["method"], -r.results["density"])):
        v = r.results["variants"]
        main_entry = v.get(r.results["method"], {})
        rows.append([
            _mark(r, r.results["method"]),
            f"{100 * r.results['density']:.3g}",
            _fmt(main_entry.get(metric)),
            *[_fmt(v[c].get(metric)) if c in v else "-" for c in controls],
            ", ".join(main_entry.get("collapsed_layers") or []) or "-",
        ])
    return header, rows


def _supermask_table(sm: list[SweepRun], metric: str):
    header = ["method", "% kept", metric.replace("_", " "), "best", "no search"]
    rows = []
    for r in sorted(sm, key=lambda r: (_label(r, sm), r.results["keep"])):
        res = r.results
        rows.append([_mark(r, _label(r, sm)), f"{100 * res['keep']:.3g}", _fmt(res.get(metric)),
                     _fmt(res.get("best_test_accuracy")),
                     _fmt((res.get("baselines") or {}).get("all_ones"))])
    return header, rows


def _dst_table(dst: list[SweepRun], metric: str):
    header = ["method", "% weights", metric.replace("_", " "), "best", "final mask %",
              "updates"]
    rows = []
    for r in sorted(dst, key=lambda r: (_label(r, dst), -r.results["target_density"])):
        res = r.results
        schedule = res.get("schedule")
        rows.append([_mark(r, _label(r, dst)), f"{100 * res['target_density']:.3g}",
                     _fmt(res.get(metric)), _fmt(res.get("best_test_accuracy")),
                     _fmt(res.get("density")), "-" if schedule is None else str(len(schedule))])
    return header, rows


def _headline(run: SweepRun) -> dict[str, Any]:
    """An IMP run's last finished round, a train run's outcome."""
    if run.kind == "imp":
        rounds = run.results["rounds"]
        return rounds[-1] if rounds else {}
    return run.results


def _other_table(others: list[SweepRun], directory: str):
    header = ["run", "kind", "status", "% weights", "final acc", "best acc"]
    rows = []
    for r in others:
        h = _headline(r)
        density = h.get("density")
        rows.append([os.path.relpath(r.path, directory), r.kind,
                     r.status if r.kind == "train" else
                     f"{r.status}: {len(r.results['rounds'])} rounds",
                     "-" if density is None else f"{100 * float(np.mean(density)):.3g}",
                     _fmt(h.get("final_test_accuracy")), _fmt(h.get("best_test_accuracy"))])
    return header, rows


def tables(runs: list[SweepRun], *, metric: str = "final_test_accuracy",
           directory: str = ".") -> list[tuple[str, list[str], list[list[str]]]]:
    """The sweep's tables as ``(title, header, rows)``: PaI runs, supermask runs,
    dst runs, then IMP and train runs (paths relative to ``directory``);
    accuracies in percent (a dst run's ``% weights`` is its target density,
    ``final mask %`` the density its final mask kept)."""
    out = []
    if pai := [r for r in runs if r.kind == "pai"]:
        out.append(("pruning at initialisation", *_pai_table(pai, metric)))
    if sm := [r for r in runs if r.kind == "supermask"]:
        out.append(("supermask search", *_supermask_table(sm, metric)))
    if dst := [r for r in runs if r.kind == "dst"]:
        out.append(("dynamic sparse training", *_dst_table(dst, metric)))
    if others := [r for r in runs if r.kind in ("imp", "train")]:
        out.append(("IMP and train runs", *_other_table(others, directory)))
    return out


def table(runs: list[SweepRun], *, metric: str = "final_test_accuracy"):
    """``(header, rows)`` of the sweep's PaI and supermask runs in one table (the
    supermask rows under the PaI header, after a blank row, when there are both)."""
    sections = [t for t in tables(runs, metric=metric)
                if t[0] in ("pruning at initialisation", "supermask search")]
    if not sections:
        return [], []
    header, rows = sections[0][1], list(sections[0][2])
    for _, _, more in sections[1:]:
        rows += [[""] * len(header), *(row[: len(header)] for row in more)]
    return header, rows


def _series(points: dict[float, Any]) -> plots.Series:
    xs = sorted(points)
    mean, std = plots.mean_std([points[x] for x in xs])
    return (np.asarray(xs) * 100, mean * 100, None if std is None else std * 100)


def _pai_figures(pai_runs: list[SweepRun], directory: str, metric: str) -> list[str]:
    pai: dict[str, dict[float, Any]] = defaultdict(dict)
    for r in pai_runs:
        method = _label(r, pai_runs)
        for name, entry in r.results["variants"].items():
            label = method if name == r.results["method"] else f"{method} + {name}"
            if entry.get(metric) is not None:
                pai[label][r.results["density"]] = entry[metric]
    methods = {k: _series(v) for k, v in pai.items() if "+" not in k}
    out = []
    if methods:
        out.append(plots.accuracy_vs_density(
            methods, os.path.join(directory, "pai_accuracy.png"),
            title="Pruning at initialisation"))
    if checks := {k: _series(v) for k, v in pai.items() if "+" in k}:
        out.append(plots.accuracy_vs_density(
            {**methods, **checks}, os.path.join(directory, "pai_sanity_checks.png"),
            title="PaI methods and their sanity checks"))
    return out


def dst_series(runs: list[SweepRun], metric: str = "final_test_accuracy"
               ) -> dict[str, plots.Series]:
    """``{label: (% weights, accuracy % mean, std or None)}`` of the dst figure: a
    line per dst method (x: its runs' target densities), then a line per PaI
    method of the sweep, labelled ``METHOD (at init)`` (its main variant; the
    sanity checks stay in the PaI figures). Points without ``metric`` (an
    unfinished run) are left out."""
    dst_runs = [r for r in runs if r.kind == "dst"]
    pai_runs = [r for r in runs if r.kind == "pai"]
    points: dict[str, dict[float, Any]] = defaultdict(dict)
    for r in dst_runs:
        if r.results.get(metric) is not None:
            points[_label(r, dst_runs)][r.results["target_density"]] = r.results[metric]
    for r in pai_runs:
        entry = r.results["variants"].get(r.results["method"], {})
        if entry.get(metric) is not None:
            points[f"{_label(r, pai_runs)} (at init)"][r.results["density"]] = entry[metric]
    return {k: _series(v) for k, v in points.items()}


def figures(runs: list[SweepRun], directory: str, *, metric: str = "final_test_accuracy",
            top: str = ".") -> list[str]:
    """Writes the sweep's PNG figures into ``directory``; returns their paths
    (IMP lines are labelled by their path relative to ``top``)."""
    out = _pai_figures([r for r in runs if r.kind == "pai"], directory, metric)
    sm: dict[str, dict[float, Any]] = defaultdict(dict)
    sm_runs = [r for r in runs if r.kind == "supermask"]
    for r in sm_runs:
        if r.results.get(metric) is not None:
            sm[_label(r, sm_runs)][r.results["keep"]] = r.results[metric]
    if sm:
        out.append(plots.metric_vs_density(
            {k: _series(v) for k, v in sm.items()},
            os.path.join(directory, "supermask_accuracy.png"),
            xlabel="Percent of weights kept", title="Supermask search on frozen weights",
            log_x=False, reverse_x=False,
        ))
    if any(r.kind == "dst" for r in runs) and (series := dst_series(runs, metric)):
        out.append(plots.accuracy_vs_density(
            series, os.path.join(directory, "dst_accuracy.png"),
            title="Sparse training: test accuracy vs density, one line per method"))
    imp = {os.path.relpath(r.path, top): _series(
               {rec["density"]: rec.get("best_test_accuracy") for rec in r.results["rounds"]})
           for r in runs if r.kind == "imp" and r.results["rounds"]}
    if imp:
        out.append(plots.accuracy_vs_density(
            imp, os.path.join(directory, "imp_lottery.png"), ylabel="Best test accuracy (%)",
            title="IMP runs: the ticket's best test accuracy"))
    return out


def main(directory: str, *, figures_dir: str | None = None,
         metric: str = "final_test_accuracy") -> SweepReport:
    """Prints the sweep's tables and writes its figures (default ``DIR/figures``).

    Raises:
      FileNotFoundError: ``directory`` is missing or holds no run.
    """
    from rich.console import Console
    from rich.table import Table

    runs = find_runs(directory)
    if not runs:
        raise FileNotFoundError(
            f"dir: no runs under {directory} (a run is a directory with config.json)")
    sections = tables(runs, metric=metric, directory=directory)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    for name, header, rows in sections:
        t = Table(title=f"{name} (sweep: {directory})")
        for i, h in enumerate(header):
            t.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            t.add_row(*row)
        console.print(t)
    paths = figures(runs, figures_dir or os.path.join(directory, "figures"), metric=metric,
                    top=directory)
    for p in paths:
        print(f"wrote {p}")
    return SweepReport(runs, sections, paths)
