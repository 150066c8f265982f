"""Reports over a directory of pruning-at-init or supermask runs (a sweep).

``lotto pai`` and ``lotto supermask`` write one run per directory (``results.json``
beside ``config.json``). A sweep is a directory holding several of them, e.g. every
method at every density (``experiments/pai_compare.sh``). :func:`main` finds the runs,
prints one table and draws one figure per kind:

* PaI: test accuracy vs percent of weights remaining, a line per method, and its
  sanity checks (shuffle, reinit, invert) as dashed lines of the same method;
* supermask: test accuracy vs percent of weights kept, a line per method and weight
  initialisation.

Values with a replicate axis are shown as mean ± std and drawn with std bands.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any, NamedTuple

import numpy as np

from lotto_jax.runs import plots

__all__ = ["SweepRun", "figures", "find_runs", "is_sweep", "main", "table"]


class SweepRun(NamedTuple):
    """One run of a sweep: where, which kind (``"pai"`` or ``"supermask"``), results,
    and the model named in its ``config.json``."""

    path: str
    kind: str
    results: dict[str, Any]
    model: str | None = None


def _kind(results: dict[str, Any]) -> str | None:
    if "variants" in results and "method" in results:
        return "pai"
    if "keep" in results and "method" in results:
        return "supermask"
    return None


def find_runs(directory: str) -> list[SweepRun]:
    """The PaI and supermask runs directly under ``directory`` (or it itself)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"dir: no directory at {directory}")
    candidates = [directory, *sorted(os.path.join(directory, d) for d in os.listdir(directory))]
    runs = []
    for path in candidates:
        file = os.path.join(path, "results.json")
        if os.path.isfile(file):
            with open(file) as f:
                results = json.load(f)
            kind = _kind(results)
            if kind is not None:
                runs.append(SweepRun(path, kind, results, _model(path)))
    return runs


def _model(path: str) -> str | None:
    try:
        with open(os.path.join(path, "config.json")) as f:
            return json.load(f)["run"]["model"]
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _label(run: SweepRun, runs: list[SweepRun]) -> str:
    """Method (and weight init), prefixed by the model when the sweep has several."""
    res = run.results
    label = res["method"]
    if run.kind == "supermask" and res.get("weight_init"):
        label += f" ({res['weight_init']})"
    if len({r.model for r in runs}) > 1 and run.model:
        label = f"{run.model}: {label}"
    return label


def is_sweep(directory: str) -> bool:
    """Whether ``directory`` holds PaI or supermask runs."""
    return os.path.isdir(directory) and bool(find_runs(directory))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    arr = np.asarray(value, float)
    if arr.ndim == 0:
        return f"{100 * float(arr):.2f}"
    return f"{100 * arr.mean():.2f} ± {100 * arr.std():.2f}"


def _metric(entry: dict[str, Any], metric: str) -> Any:
    return entry.get(metric)


def table(runs: list[SweepRun], *, metric: str = "final_test_accuracy"):
    """``(header, rows)`` of the sweep (accuracies in percent)."""
    pai = [r for r in runs if r.kind == "pai"]
    sm = [r for r in runs if r.kind == "supermask"]
    header: list[str] = []
    rows: list[list[str]] = []
    if pai:
        controls = sorted({c for r in pai for c in r.results["variants"]} - {r.results["method"] for r in pai})
        header = ["method", "% weights", metric.replace("_", " "), *controls, "collapsed layers"]
        for r in sorted(pai, key=lambda r: (r.results["method"], -r.results["density"])):
            method = r.results["method"]
            v = r.results["variants"]
            main_entry = v[method]
            rows.append([
                method,
                f"{100 * r.results['density']:.3g}",
                _fmt(_metric(main_entry, metric)),
                *[_fmt(_metric(v[c], metric)) if c in v else "-" for c in controls],
                ", ".join(main_entry.get("collapsed_layers") or []) or "-",
            ])
    if sm:
        if rows:
            rows.append([""] * len(header))
        header = header or ["method", "% kept", metric.replace("_", " "), "best", "no search"]
        for r in sorted(sm, key=lambda r: (_label(r, sm), r.results["keep"])):
            res = r.results
            rows.append([
                _label(r, sm),
                f"{100 * res['keep']:.3g}",
                _fmt(res.get(metric)),
                _fmt(res.get("best_test_accuracy")),
                _fmt(res.get("baselines", {}).get("all_ones")),
            ][: len(header)])
    return header, rows


def _series(points: dict[float, Any]) -> plots.Series:
    xs = sorted(points)
    mean, std = plots.mean_std([points[x] for x in xs])
    return (np.asarray(xs) * 100, mean * 100, None if std is None else std * 100)


def figures(runs: list[SweepRun], directory: str, *, metric: str = "final_test_accuracy") -> list[str]:
    """Writes the sweep's PNG figures into ``directory``; returns their paths."""
    out = []
    pai: dict[str, dict[float, Any]] = defaultdict(dict)
    pai_runs = [r for r in runs if r.kind == "pai"]
    for r in pai_runs:
        method = _label(r, pai_runs)
        for name, entry in r.results["variants"].items():
            label = method if name == r.results["method"] else f"{method} + {name}"
            if entry.get(metric) is not None:
                pai[label][r.results["density"]] = entry[metric]
    if pai:
        methods = {k: _series(v) for k, v in pai.items() if "+" not in k}
        out.append(plots.accuracy_vs_density(
            methods, os.path.join(directory, "pai_accuracy.png"),
            title="Pruning at initialisation",
        ))
        checks = {k: _series(v) for k, v in pai.items() if "+" in k}
        if checks:
            out.append(plots.accuracy_vs_density(
                {**methods, **checks}, os.path.join(directory, "pai_sanity_checks.png"),
                title="PaI methods and their sanity checks",
            ))
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
    return out


def main(directory: str, *, figures_dir: str | None = None, metric: str = "final_test_accuracy"):
    """Prints the sweep's table and writes its figures (default ``DIR/figures``)."""
    from rich.console import Console
    from rich.table import Table

    runs = find_runs(directory)
    if not runs:
        raise FileNotFoundError(f"dir: no PaI or supermask runs (results.json) under {directory}")
    header, rows = table(runs, metric=metric)
    t = Table(title=f"sweep: {directory}")
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*row)
    Console().print(t)
    paths = figures(runs, figures_dir or os.path.join(directory, "figures"), metric=metric)
    for p in paths:
        print(f"wrote {p}")
    return runs, (header, rows), paths
