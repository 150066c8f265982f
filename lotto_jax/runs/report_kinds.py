"""``lotto report`` of a PaI, supermask, train or dst run: one table row per unit
and the test-accuracy curves.

The run is read by :func:`lotto_jax.runs.layout.read`: every unit the config names
(PaI: the method and each control, ``variants/NAME``; supermask: ``search``;
train: ``train``; dst: ``dst``), finished or not. A finished unit shows its outcome
(:func:`lotto_jax.runs.layout.entry`: its ``metrics.json`` overlaid with its part
of ``results.json``); an unfinished one its status (``training S/T`` from its
latest checkpoint, ``pending``, ``corrupt``) and ``-``, and the title says the run
is unfinished. Metrics with a replicate axis are shown as mean ± std (population
std) and drawn with ±std bands.

Columns: the unit, its status, % of weights remaining, final test accuracy,
early-stop step, test accuracy there, best test accuracy, then per kind: PaI the
collapsed layers; supermask the exported mask's accuracy on the plain model, the
frozen weights with no search (``all_ones``) and the found mask shuffled per layer;
dst the target density and the number of mask updates (``% weights`` is the final
mask's). Figure ``curves.png``: test accuracy vs training step, one line per unit
(an unfinished unit's curve so far, its label marked); a finished dst run adds
``schedule.png``, its density and drop fraction at every mask update
(``results.json``'s ``schedule``).
"""

from __future__ import annotations

import os
from typing import Any

from lotto_jax.runs import layout, plots
from lotto_jax.runs.report import Report, _fmt

__all__ = ["curve_series", "curves_figure", "figures", "format_table", "main",
           "schedule_figure", "table", "title"]

_HEADER = ["status", "% weights", "final acc", "ES step", "acc @ ES", "best acc"]
_EXTRA = {
    "pai": ["collapsed layers"],
    "supermask": ["exported acc", "no search", "shuffled mask"],
    "train": [],
    "dst": ["target %", "updates"],
}
_NAME = {"pai": "variant", "supermask": "search", "train": "network", "dst": "method"}


def _label(view: layout.RunView, prefix: str) -> str:
    if view.kind == "pai":
        return prefix.split("/", 1)[1]
    if view.kind in ("supermask", "dst"):
        return str(view.config.get("method") or (view.results or {}).get("method") or prefix)
    return str((view.config.get("run") or {}).get("model") or prefix)


def _status(view: layout.RunView, unit: layout.UnitState) -> str:
    if unit.status == "training" and unit.step is not None:
        steps = layout.total_steps(view.config)
        return f"training {unit.step}/{steps if steps is not None else '?'}"
    return unit.status


def _extra(kind: str, e: dict[str, Any]) -> list[str]:
    if kind == "pai":
        collapsed = e.get("collapsed_layers")
        return [", ".join(collapsed) if collapsed else "-" if collapsed is None else "none"]
    if kind == "supermask":
        base = e.get("baselines") or {}
        return [_fmt(e.get("exported_test_accuracy"), scale=100),
                _fmt(base.get("all_ones"), scale=100), _fmt(base.get("shuffled"), scale=100)]
    if kind == "dst":
        schedule = e.get("schedule")
        return [_fmt(e.get("target_density"), scale=100),
                "-" if schedule is None else str(len(schedule))]
    return []


def table(view: layout.RunView) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of a PaI, supermask or train run (module docs); one row
    per unit, accuracies in percent, ``-`` where not (yet) known."""
    header = [_NAME[view.kind], *_HEADER, *_EXTRA[view.kind]]
    rows = []
    for prefix, unit in view.units.items():
        e = layout.entry(view, prefix) if unit.status == "done" else {}
        density = e.get("density")
        rows.append([
            _label(view, prefix), _status(view, unit),
            _fmt(density, scale=100),
            _fmt(e.get("final_test_accuracy"), scale=100),
            _fmt(e.get("early_stop_step"), digits=0),
            _fmt(e.get("early_stop_test_accuracy"), scale=100),
            _fmt(e.get("best_test_accuracy"), scale=100),
            *(_extra(view.kind, e) if e else ["-"] * len(_EXTRA[view.kind])),
        ])
    return header, rows


def _replicates(view: layout.RunView) -> int:
    return int((view.config.get("run") or {}).get("replicates") or 1)


def title(view: layout.RunView) -> str:
    """The table's and figure's title: what ran, on what, and whether it is done."""
    c, res = view.config, view.results or {}
    run = c.get("run") or {}
    on = f" on {run.get('model', '?')} / {run.get('dataset', '?')}" if run else ""
    if view.kind == "pai":
        method, density = c.get("method") or res.get("method"), c.get("density", res.get("density"))
        scope = c.get("scope") or res.get("scope") or "?"
        what = (f"PaI: {method} at {100 * float(density):.3g}% ({scope})"
                if density is not None else f"PaI: {method}")
    elif view.kind == "supermask":
        keep = c.get("keep", res.get("keep"))
        what = f"supermask: {c.get('method') or res.get('method')}" + (
            f", keep {100 * float(keep):.3g}%" if keep is not None else "")
    elif view.kind == "dst":
        density = c.get("density", res.get("target_density"))
        what = f"DST: {c.get('method') or res.get('method')}" + (
            f" at {100 * float(density):.3g}%" if density is not None else "")
        if c.get("distribution") and c.get("update_every"):
            what += f" ({c['distribution']}, update every {c['update_every']})"
    else:
        what = "train"
    n = _replicates(view)
    out = what + on + (f" ({n} replicates: mean ± std)" if n > 1 else "")
    if not view.done:
        out += f" [unfinished: {view.finished}/{len(view.units)} units done]"
    return out


def curve_series(view: layout.RunView) -> dict[str, plots.Series]:
    """``{label: (steps, test accuracy % mean, std or None)}`` of every unit with
    a curve; an unfinished unit's label says how far it got."""
    out = {}
    for prefix, unit in view.units.items():
        points = [c for c in unit.curve if c.get("test_accuracy") is not None]
        if not points:
            continue
        mean, std = plots.mean_std([c["test_accuracy"] for c in points])
        label = _label(view, prefix)
        if unit.status != "done":
            label += f" ({_status(view, unit)})"
        out[label] = ([c["step"] for c in points], 100 * mean,
                      None if std is None else 100 * std)
    return out


def curves_figure(view: layout.RunView):
    """The test-accuracy curves as a matplotlib ``Figure`` (None: no curve yet)."""
    series = curve_series(view)
    return plots.curve_figure(series, title=title(view)) if series else None


def schedule_figure(view: layout.RunView):
    """A finished dst run's density and drop fraction over the steps, from
    ``results.json``'s ``schedule`` (None: not a finished dst run, or a schedule
    without updates, e.g. ``static``)."""
    schedule = (view.results or {}).get("schedule") if view.kind == "dst" else None
    if not schedule:
        return None
    return plots.schedule_figure([p["step"] for p in schedule],
                                 [p["density"] for p in schedule],
                                 [p["drop_fraction"] for p in schedule], title=title(view))


def figures(view: layout.RunView, directory: str) -> list[str]:
    """Writes ``curves.png`` (when a unit has a curve) and, for a finished dst run
    with mask updates, ``schedule.png`` into ``directory``."""
    out = []
    for name, fig in (("curves.png", curves_figure(view)),
                      ("schedule.png", schedule_figure(view))):
        if fig is not None:
            out.append(plots.save(fig, os.path.join(directory, name)))
    return out


def format_table(view: layout.RunView) -> str:
    """The table as aligned plain text under its title."""
    header, rows = table(view)
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([title(view), line(header), line(["-" * w for w in widths]),
                      *(line(r) for r in rows)])


def main(directory: str, *, figures_dir: str | None = None) -> Report:
    """Prints the table of the run in ``directory`` and writes its figure
    (default ``DIR/figures``); returns a :class:`lotto_jax.runs.report.Report`
    whose ``run`` is the :class:`lotto_jax.runs.layout.RunView`."""
    from rich.console import Console
    from rich.table import Table

    view = layout.read(directory)
    header, rows = table(view)
    t = Table(title=f"{title(view)}: {view.path}")
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i in (0, 1) or h == "collapsed layers" else "right")
    for r in rows:
        t.add_row(*r)
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(120, 14 * len(header)))
    console.print(t)
    for problem in view.problems:
        print(f"{directory}: {problem}")
    paths = figures(view, figures_dir or os.path.join(directory, "figures"))
    return Report(view, format_table(view), paths)
