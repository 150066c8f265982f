"""The standard figures of the lottery-ticket papers, as PNG files.

Every function takes *series*: ``{label: (x, y_mean, y_std_or_None)}``, draws one
line per label (with a ±std band when ``y_std`` is given, e.g. over replicates) and
writes a PNG. The IMP report (accuracy and early-stop iteration vs percent of weights
remaining), pruning-at-initialisation reports (accuracy vs density per method) and
supermask reports (accuracy vs fraction of weights kept) all go through
:func:`metric_vs_density`; training curves through :func:`curves`; a dynamic
sparse training's mask schedule through :func:`schedule_figure`. Use
:func:`mean_std` to turn per-point values that may carry a replicate axis into
``(mean, std)``.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global state,
no display needed).

References:
  Frankle & Carbin 2019, "The Lottery Ticket Hypothesis", arXiv:1803.03635
  (Figures 3 and 4: log x axis, sparsity growing to the right).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "Series",
    "accuracy_vs_density",
    "curve_figure",
    "curves",
    "density_figure",
    "early_stop_vs_density",
    "mean_std",
    "metric_vs_density",
    "save",
    "schedule_figure",
]

Series = tuple[Sequence[float], Sequence[float], Sequence[float] | None]
"""``(x, y_mean, y_std or None)`` of one line."""


def mean_std(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-point mean and std of values that may carry a replicate axis.

    Args:
      values: one entry per point: a number, or a sequence over replicates.
        ``None`` entries become NaN (not drawn).

    Returns:
      ``(mean, std)`` arrays over the points; ``std`` is ``None`` when no entry has
      more than one replicate.

    Examples:
      >>> mean_std([1.0, 2.0])
      (array([1., 2.]), None)
      >>> m, s = mean_std([[1.0, 3.0], [2.0, 2.0]])
      >>> m.tolist(), s.tolist()
      ([2.0, 2.0], [1.0, 0.0])
    """
    rows = [np.atleast_1d(np.asarray(np.nan if v is None else v, float)) for v in values]
    mean = np.array([r.mean() for r in rows])
    if all(r.size <= 1 for r in rows):
        return mean, None
    return mean, np.array([r.std() for r in rows])


def _figure(title: str | None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    return fig, ax


def _draw(ax, series: Mapping[str, Series], *, marker: str = "o") -> None:
    if not series:
        raise ValueError("series: nothing to plot")
    for label, (x, y, std) in series.items():
        x, y = np.asarray(x, float), np.asarray(y, float)
        if x.shape != y.shape:
            raise ValueError(
                f"series[{label!r}]: x has shape {x.shape} but y_mean has {y.shape}"
            )
        (line,) = ax.plot(x, y, marker=marker, markersize=4, label=label)
        if std is not None:
            s = np.asarray(std, float)
            if s.shape != y.shape:
                raise ValueError(
                    f"series[{label!r}]: y_std has shape {s.shape}, y_mean {y.shape}"
                )
            ax.fill_between(x, y - s, y + s, color=line.get_color(), alpha=0.2)
    if len(series) > 1:
        ax.legend()


def save(fig, path: str) -> str:
    """Writes ``fig`` as a PNG at ``path`` (creating its directory); returns ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with warnings.catch_warnings():  # a legend's "best" search on a loaded machine
        warnings.filterwarnings("ignore", message="Creating legend with loc")
        fig.savefig(path, format="png", bbox_inches="tight")
    return path


def density_figure(
    series: Mapping[str, Series],
    *,
    xlabel: str = "Percent of weights remaining",
    ylabel: str = "Test accuracy (%)",
    title: str | None = None,
    log_x: bool = True,
    reverse_x: bool = True,
    reference: tuple[str, float, float | None] | None = None,
):
    """A figure of a metric against the percent of weights remaining.

    Like Frankle & Carbin 2019's figures: a log x axis, reversed so sparsity grows
    to the right, ticks at the measured densities.

    Args:
      series: ``{label: (percent_remaining, y_mean, y_std or None)}``.
      xlabel: x axis label.
      ylabel: y axis label.
      title: optional title.
      log_x: logarithmic x axis.
      reverse_x: largest density on the left.
      reference: ``(label, mean, std or None)`` of a level drawn as a dashed
        horizontal line across the plot (with a ±std band), e.g. the dense network.

    Returns:
      The matplotlib ``Figure`` (its one ``Axes`` holds a line per label, a
      ``fill_between`` band per label with a std, and the reference line).

    Raises:
      ValueError: empty ``series`` or mismatched lengths (naming the label).
    """
    fig, ax = _figure(title)
    if reference is not None:
        label, level, spread = reference
        ax.axhline(level, color="0.3", linestyle="--", linewidth=1, label=label)
        if spread is not None:
            ax.axhspan(level - spread, level + spread, color="0.3", alpha=0.12)
    _draw(ax, series)
    if reference is not None:
        ax.legend()
    xs = np.unique(np.concatenate([np.asarray(s[0], float) for s in series.values()]))
    if log_x and np.all(xs > 0):
        ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:.3g}" for x in xs], rotation=45, fontsize=7)
        ax.minorticks_off()
    if reverse_x:
        ax.invert_xaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig


def metric_vs_density(series: Mapping[str, Series], path: str, **kwargs: Any) -> str:
    """Writes :func:`density_figure` as a PNG at ``path`` (parent directories are
    created) and returns ``path``; ``kwargs`` are :func:`density_figure`'s (``xlabel``,
    ``ylabel``, ``title``, ``log_x``, ``reverse_x``, ``reference``).
    """
    return save(density_figure(series, **kwargs), path)


def accuracy_vs_density(series: Mapping[str, Series], path: str, **kwargs: Any) -> str:
    """Test accuracy vs percent of weights remaining (trunk, controls, methods).

    For supermask reports pass ``xlabel="Percent of weights kept"``. ``kwargs`` as
    :func:`density_figure` (default ``ylabel="Test accuracy (%)"``).
    """
    return metric_vs_density(series, path, **{"ylabel": "Test accuracy (%)", **kwargs})


def early_stop_vs_density(series: Mapping[str, Series], path: str, **kwargs: Any) -> str:
    """Early-stop iteration (step of minimum validation loss) vs weights remaining.

    ``kwargs`` as :func:`density_figure` (default ``ylabel="Early-stop iteration"``).
    """
    return metric_vs_density(series, path, **{"ylabel": "Early-stop iteration", **kwargs})


def curve_figure(
    series: Mapping[str, Series],
    *,
    xlabel: str = "Training iteration",
    ylabel: str = "Test accuracy (%)",
    title: str | None = None,
):
    """A figure of a metric vs training iteration, one line per label (e.g. per
    round or per variant), with a ±std band where a std is given.

    Args:
      series: ``{label: (steps, y_mean, y_std or None)}``.
      xlabel: x axis label.
      ylabel: y axis label.
      title: optional title.

    Returns:
      The matplotlib ``Figure`` (its one ``Axes`` holds a line per label).

    Raises:
      ValueError: empty ``series`` or mismatched lengths (naming the label).
    """
    fig, ax = _figure(title)
    _draw(ax, series, marker="")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig


def curves(
    series: Mapping[str, Series],
    path: str,
    *,
    xlabel: str = "Training iteration",
    ylabel: str = "Test accuracy (%)",
    title: str | None = None,
) -> str:
    """Writes :func:`curve_figure` as a PNG at ``path``; returns ``path``."""
    return save(curve_figure(series, xlabel=xlabel, ylabel=ylabel, title=title), path)


def schedule_figure(
    steps: Sequence[float],
    density: Sequence[float],
    drop_fraction: Sequence[float],
    *,
    title: str | None = None,
):
    """A dynamic sparse training's mask schedule: density (in percent, top panel)
    and drop fraction (bottom panel) at every mask update, against the step.

    Args:
      steps: the update steps.
      density: the fraction of prunable weights kept after each update.
      drop_fraction: the fraction of kept weights exchanged at each update.
      title: optional title (over the top panel).

    Returns:
      The matplotlib ``Figure``: two ``Axes`` sharing the step axis, one line
      each (``density`` and ``drop fraction``).

    Raises:
      ValueError: no step, or lengths that differ.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = np.asarray(steps, float)
    d, f = np.asarray(density, float), np.asarray(drop_fraction, float)
    if x.size == 0:
        raise ValueError("steps: no mask update to plot")
    if not x.shape == d.shape == f.shape:
        raise ValueError(f"schedule: steps {x.shape}, density {d.shape} and "
                         f"drop_fraction {f.shape} differ in length")
    fig = Figure(figsize=(6.4, 5.2), dpi=120)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(x, 100 * d, marker="o", markersize=3, label="density")
    top.set_ylabel("Density (% of weights)")
    bottom.plot(x, f, marker="o", markersize=3, color="C1", label="drop fraction")
    bottom.set_ylabel("Drop fraction")
    bottom.set_xlabel("Training iteration")
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    if title:
        top.set_title(title)
    return fig
