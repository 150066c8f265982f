"""The record, table and figure of a ``lotto oneshot`` run (:mod:`lotto_jax.runs.oneshot`).

``results.json`` holds, per scope, the test accuracy at every density for every
replicate (``test_accuracy[i][r]``: density ``i``, replicate ``r``), its mean and
std over the replicates, the exact kept counts, and the knees of the mean curve by
every rule of :func:`lotto_jax.oneshot.knee` (and of each replicate's curve by the
chosen rule); the same for the retrained networks under ``retrained``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["figure", "format_table", "main", "print_table", "record"]


def _knees(densities, accuracy, dense: float, rule: str, tolerance: float) -> dict[str, Any]:
    from lotto_jax import oneshot

    out = {}
    for r in oneshot.KNEE_RULES:
        k = oneshot.knee(densities, accuracy, dense, rule=r, tolerance=tolerance)
        out[r] = {"density": k.density, "sparsity": k.sparsity}
    return {"rule": rule, **out[rule], "rules": out}


def _curve(densities, acc, dense, config) -> dict[str, Any]:
    """``acc[i][r]`` (density i, replicate r) with its mean, std and knees; the knee
    of the mean curve is measured from the mean dense accuracy."""
    from lotto_jax import oneshot

    a = np.asarray(acc, float)
    per = [oneshot.knee(densities, a[:, r], dense[r], rule=config.knee,
                        tolerance=config.tolerance).sparsity for r in range(a.shape[1])]
    return {"test_accuracy": a.tolist(), "mean": a.mean(1).tolist(), "std": a.std(1).tolist(),
            "knee": _knees(densities, a.mean(1), float(np.mean(dense)), config.knee,
                           config.tolerance),
            "knee_sparsity_per_replicate": per}


def record(config, src, run_config, curves, retrained) -> dict[str, Any]:
    """The ``results.json`` record (module docs)."""
    densities = list(config.densities)
    dense = next(iter(curves.values()))["dense"]
    scopes = {}
    for scope, c in curves.items():
        entry = {**_curve(densities, c["accuracy"], dense, config), "kept": c["kept"]}
        if retrained is not None:
            entry["retrained"] = _curve(densities, retrained[scope], dense, config)
        scopes[scope] = entry
    return {
        "run": src.path, "unit": src.unit, "model": run_config.model,
        "dataset": run_config.dataset, "replicates": src.replicates,
        "densities": densities, "sparsities": [round(1.0 - d, 12) for d in densities],
        "knee_rule": config.knee, "tolerance": config.tolerance,
        "dense_test_accuracy": dense, "dense_mean": float(np.mean(dense)),
        "dense_std": float(np.std(dense)),
        "retrain": None if retrained is None else {
            "steps": config.retrain_steps, "lr": run_config.train.lr,
            "optimizer": run_config.train.optimizer,
            "batch_size": run_config.train.batch_size},
        "scopes": scopes,
        "knee": {s: {k: e["knee"][k] for k in ("density", "sparsity")}
                 for s, e in scopes.items()},
    }


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if std else f"{100 * mean:.2f}"


def format_table(results: dict[str, Any]) -> str:
    """The accuracies (%) per density and scope, then the knees, as plain text."""
    scopes = results["scopes"]
    header = ["density", "sparsity"]
    for s, e in scopes.items():
        header += [f"{s}", *([f"{s} +{results['retrain']['steps']}"] if "retrained" in e
                             else [])]
    rows = [["1", "0", *[_pm(results["dense_mean"], results["dense_std"])] * (len(header) - 2)]]
    for i, d in enumerate(results["densities"]):
        row = [f"{d:g}", f"{1 - d:.3g}"]
        for e in scopes.values():
            for c in (e, e.get("retrained")):
                if c is not None:
                    row.append(_pm(c["mean"][i], c["std"][i]))
        rows.append(row)
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    title = (f"lotto oneshot: {results['model']} / {results['dataset']}, test accuracy (%), "
             f"{results['replicates']} replicate(s)")
    knees = []
    for s, e in scopes.items():
        for label, c in (("one-shot", e), ("retrained", e.get("retrained"))):
            if c is not None:
                k = c["knee"]
                knees.append(f"knee ({k['rule']}), {s} {label}: sparsity "
                             f"{100 * k['sparsity']:.0f}% (density {k['density']:g}); "
                             + ", ".join(f"{r} {100 * v['sparsity']:.0f}%"
                                         for r, v in k["rules"].items()))
    return "\n".join([title, line(header), line(["-" * w for w in widths]),
                      *(line(r) for r in rows), *knees])


def print_table(results: dict[str, Any]) -> None:
    """Prints :func:`format_table`."""
    print(format_table(results), flush=True)


def figure(results: dict[str, Any], path: str) -> str:
    """Writes the accuracy-vs-density figure (knees as dotted verticals) at ``path``."""
    from lotto_jax.runs import plots

    pct = 100 * np.asarray(results["densities"], float)
    series = {}
    for s, e in results["scopes"].items():
        steps = (results.get("retrain") or {}).get("steps")
        for label, c in ((f"{s} one-shot", e), (f"{s} +{steps} steps", e.get("retrained"))):
            if c is not None:
                std = np.asarray(c["std"]) * 100
                series[label] = (pct, 100 * np.asarray(c["mean"]),
                                 std if results["replicates"] > 1 else None)
    dense = ("dense", 100 * results["dense_mean"],
             100 * results["dense_std"] if results["replicates"] > 1 else None)
    fig = plots.density_figure(series, reference=dense, title=(
        f"one-shot magnitude pruning: {results['model']} / {results['dataset']}"))
    ax = fig.axes[0]
    colors = {line.get_label(): line.get_color() for line in ax.lines}
    for s, e in results["scopes"].items():
        k = e["knee"]
        ax.axvline(100 * k["density"], color=colors.get(f"{s} one-shot", "0.3"),
                   linestyle=":", linewidth=1.5,
                   label=f"knee {s} ({k['rule']}): {100 * k['sparsity']:.0f}% sparse")
    ax.legend(fontsize=7, loc="lower left")  # not "best": its search warns when slow
    return plots.save(fig, path)


def main(directory: str, *, figures_dir: str | None = None):
    """``lotto report DIR`` of a ``lotto oneshot`` run: prints the table, writes
    ``accuracy.png`` (default into ``DIR/figures``); returns a
    :class:`lotto_jax.runs.report.Report` whose ``run`` is ``results.json``.

    Raises:
      FileNotFoundError: the run has no ``results.json`` yet.
    """
    from lotto_jax.runs import layout
    from lotto_jax.runs.report import Report

    results, ok = layout.load_json(os.path.join(directory, "results.json"))
    if not ok or not isinstance(results, dict) or "scopes" not in results:
        raise FileNotFoundError(f"{directory}: no finished lotto oneshot results "
                                "(results.json); rerun its lotto oneshot command")
    text = format_table(results)
    print(text)
    path = os.path.join(figures_dir or os.path.join(directory, "figures"), "accuracy.png")
    return Report(results, text, [figure(results, path)])
