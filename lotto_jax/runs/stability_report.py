"""The table and figures of a ``lotto stability`` run (``lotto report DIR``).

Read from its ``results.json`` (written once every pair is trained and
interpolated; :mod:`lotto_jax.runs.stability`). One row per (round, k): the
round's % of weights remaining, the rewind step k, the two copies' final test
accuracies, the test and train error barriers (in points of error, %) and the
test loss barrier. Figures: ``barrier.png`` (test error barrier vs k, one line
per round) and ``path.png`` (test error along the path vs α, one line per pair).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from lotto_jax.runs import layout, plots
from lotto_jax.runs.report import _fmt

__all__ = ["HEADER", "figures", "format_table", "main", "table"]

HEADER = ["round", "% weights", "k", "acc a", "acc b", "test barrier", "train barrier",
          "test loss barrier"]


def _results(directory: str) -> dict[str, Any]:
    results, ok = layout.load_json(os.path.join(directory, "results.json"))
    if not ok or not isinstance(results, dict) or not isinstance(results.get("pairs"), list):
        raise FileNotFoundError(
            f"{directory}: no finished stability results (results.json); rerun the "
            "lotto stability command to finish the run")
    return results


def table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)``: one row per pair, in percent where a percentage."""
    rows = []
    for p in results["pairs"]:
        acc = list(np.ravel(p.get("final_test_accuracy", [None, None])))
        rows.append([str(p["round"]), _fmt(p.get("density"), scale=100), str(p["k"]),
                     _fmt(acc[0], scale=100), _fmt(acc[-1], scale=100),
                     _fmt(p.get("test_barrier"), scale=100),
                     _fmt(p.get("train_barrier"), scale=100),
                     _fmt(p.get("test_loss_barrier"), digits=4)])
    return HEADER, rows


def _title(results: dict[str, Any]) -> str:
    return (f"stability of {results.get('model', '?')} / {results.get('dataset', '?')}"
            f" ({results.get('points', '?')} points)")


def format_table(results: dict[str, Any]) -> str:
    """The table as aligned plain text under its title."""
    header, rows = table(results)
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([_title(results), line(header), line(["-" * w for w in widths]),
                      *(line(r) for r in rows)])


def figures(results: dict[str, Any], directory: str) -> list[str]:
    """Writes ``barrier.png`` and ``path.png`` into ``directory``; their paths."""
    by_round: dict[str, list[tuple[int, float]]] = {}
    path_series = {}
    for p in results["pairs"]:
        label = f"round {p['round']} ({100 * p['density']:.1f}%)"
        by_round.setdefault(label, []).append((p["k"], 100 * p["test_barrier"]))
        path_series[f"{label}, k={p['k']}"] = (p["alphas"], 100 * np.asarray(p["test_error"]),
                                                None)
    barrier = {label: ([k for k, _ in sorted(v)], [b for _, b in sorted(v)], None)
               for label, v in by_round.items()}
    fig = plots.curve_figure(barrier, xlabel="Rewind step k",
                             ylabel="Test error barrier (%)", title=_title(results))
    for line in fig.axes[0].lines:
        line.set_marker("o")
    out = [plots.save(fig, os.path.join(directory, "barrier.png"))]
    fig = plots.curve_figure(path_series, xlabel="Interpolation α",
                             ylabel="Test error (%)", title=_title(results))
    out.append(plots.save(fig, os.path.join(directory, "path.png")))
    return out


def main(directory: str, *, figures_dir: str | None = None):
    """Prints the table of the stability run in ``directory`` and writes its
    figures (default ``DIR/figures``); returns a
    :class:`lotto_jax.runs.report.Report` whose ``run`` is ``results.json``.

    Raises:
      FileNotFoundError: the run has no finished ``results.json``.
    """
    from lotto_jax.runs.report import Report

    results = _results(directory)
    text = format_table(results)
    print(text)
    paths = figures(results, figures_dir or os.path.join(directory, "figures"))
    return Report(results, text, paths)
