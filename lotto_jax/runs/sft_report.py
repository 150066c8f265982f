"""The table and figures of a ``lotto sft`` run (:mod:`lotto_jax.runs.sft`), and
its ``lotto report`` (:func:`main`).

A run with ``--replicates S > 1`` holds a list over the replicates in every
per-replicate field of ``results.json`` (:func:`lotto_jax.runs.sft_stages.merge`):
the table shows mean ± std (population std), the figures the means with ±std bands.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["figures", "format_table", "main", "mean_std", "print_table"]


def mean_std(v: Any) -> tuple[float, float | None]:
    """``(mean, std)`` of a per-replicate value (std None for one replicate)."""
    a = np.asarray(v, float)
    return (float(a.mean()), float(a.std())) if a.ndim else (float(a), None)


def _pct(v: Any) -> str:
    if v is None or (isinstance(v, list) and None in v):
        return "-"
    m, s = mean_std(v)
    return f"{100 * m:.2f}" + ("" if s is None else f" ± {100 * s:.2f}")


def _count(v: Any) -> str:
    m, s = mean_std(v)
    return f"{m:g}" if s is None else f"{m:g} ± {s:.3g}"


def _halves(v: Any, replicates: int) -> list[Any]:
    """A composition field per half: ``[B1, B2]``, each a value or, with a
    replicate axis ``[[B1, B2] per replicate]``, a list over the replicates."""
    return [list(x) for x in zip(*v, strict=True)] if replicates > 1 else list(v)


def format_table(results: dict[str, Any]) -> str:
    """The run's accuracies (percent) as plain-text tables."""
    pre, full = results["pretrained"], results["finetuned"]
    n = int(results.get("replicates") or 1)
    lines = [f"lotto sft: {results['model']} / {results['dataset']}, tasks "
             + ", ".join(f"{t}={v}" for t, v in results["tasks"].items())
             + (f" ({n} replicates: mean ± std)" if n > 1 else ""),
             f"pretrained on A: acc A {_pct(pre['A'])}, acc B {_pct(pre['B'])}",
             "full fine-tuning: " + ", ".join(
                 f"{t} acc {_pct(r['accuracy'])} (A after: {_pct(r['accuracy_A'])})"
                 for t, r in full.items()),
             "", f"{'method':<8} {'task':<4} {'K':>8} {'% weights':>9} {'selected':>9} "
             f"{'acc':>7} {'acc A':>7}"]
    for r in results["sparse"]:
        lines.append(f"{r['kind']:<8} {r['task']:<4} {r['k']:>8} {100 * r['fraction']:>9.3f} "
                     f"{_count(r['selected']):>9} {_pct(r['accuracy']):>7} "
                     f"{_pct(r['accuracy_A']):>7}")
    if results.get("compose"):
        lines += ["", "composition θ0 + φ_B1 + φ_B2: accuracy own -> composed "
                  "(interference) per half; B overall"]
        def halves(r):
            return "; ".join(f"{_pct(o)} -> {_pct(c)} ({_pct(i)})" for o, c, i in zip(
                *(_halves(r[f], n) for f in ("own", "composed", "interference")),
                strict=True))

        for r in results["compose"]:
            lines.append(f"  K={r['k']:<8} {halves(r)}; B {_pct(r['composed_B'])}; "
                         f"overlap {_count(r['overlap'])}")
        f = results["compose_full"]
        lines.append(f"  full FT    {halves(f)}; B {_pct(f['composed_B'])}")
    if results.get("graft"):
        lines += ["", f"{'graft base':>10} {'lr':>6} {'region':>8} {'% weights':>9} {'base acc':>8} "
                  f"{'acc':>7} {'ft acc':>7} {'recovered':>9}"]
        for g in results["graft"]:
            rec = "-"
            if not (g["recovered"] is None or (isinstance(g["recovered"], list)
                                               and None in g["recovered"])):
                m, sd = mean_std(g["recovered"])
                rec = f"{100 * m:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}") + "%"
            region = mean_std(g["region_fraction"])[0]
            lines.append(f"{g['fraction']:>10g} {g['lr']:>6.0e} {_count(g['region']):>8} "
                         f"{100 * region:>9.4f} {_pct(g['base_accuracy']):>8} "
                         f"{_pct(g['accuracy']):>7} {_pct(g['finetuned_accuracy']):>7} "
                         f"{rec:>9}")
    return "\n".join(lines)


def print_table(results: dict[str, Any]) -> None:
    """Prints :func:`format_table`."""
    print(format_table(results), flush=True)


def figures(results: dict[str, Any], directory: str) -> list[str]:
    """``sft.png`` (task-B accuracy vs % of weights fine-tuned: LT-SFT, random-K,
    full fine-tuning as a line) and ``graft.png`` (the fraction of the fine-tuned
    accuracy recovered vs the region size, one line per base patch over the
    rates; the base patch alone; LT-SFT's trained weights for comparison) in
    ``directory``; returns their paths."""
    from lotto_jax.runs import plots

    def line(xs, ys):
        """``(x, y mean, y std or None)`` in percent; ``ys``: per point a value or a
        list over the replicates."""
        stats = [mean_std(y) for y in ys]
        std = None if any(st is None for _, st in stats) else [100 * st for _, st in stats]
        return ([100 * mean_std(x)[0] for x in xs], [100 * m for m, _ in stats], std)

    def ratio(a, b):
        """``a / b`` per replicate (0 where ``b`` is 0)."""
        a, b = np.asarray(a, float), np.asarray(b, float)
        return (np.where(b != 0, a / np.where(b != 0, b, 1), 0.0)).tolist()

    out = []
    series = {}
    for kind, label in (("ltsft", "LT-SFT"), ("random", "random-K")):
        rows = [r for r in results["sparse"] if r["kind"] == kind and r["task"] == "B"]
        if rows:
            series[label] = line([r["fraction"] for r in rows], [r["accuracy"] for r in rows])
    full = results["finetuned"]["B"]["accuracy"]
    m, st = mean_std(full)
    fig = plots.density_figure(series, xlabel="Percent of weights fine-tuned",
                               ylabel="Task B test accuracy (%)", reverse_x=False,
                               reference=("full fine-tuning", 100 * m,
                                          None if st is None else 100 * st),
                               title=f"sparse fine-tuning: {results['model']}")
    out.append(plots.save(fig, os.path.join(directory, "sft.png")))
    if results.get("graft"):
        series = {}
        for f in sorted({r["fraction"] for r in results["graft"]}):
            g = sorted((r for r in results["graft"] if r["fraction"] == f),
                       key=lambda r: mean_std(r["region_fraction"])[0])
            series[f"graft, base patch {100 * f:g} %"] = line(
                [r["region_fraction"] for r in g],
                [ratio(r["accuracy"], r["finetuned_accuracy"]) for r in g])
        lt = [r for r in results["sparse"] if r["kind"] == "ltsft" and r["task"] == "B"]
        if lt:
            series["LT-SFT (trained)"] = line([r["fraction"] for r in lt],
                                              [ratio(r["accuracy"], full) for r in lt])
        g = sorted(results["graft"], key=lambda r: mean_std(r["base"])[0])
        series["base patch only"] = line(
            [np.asarray(r["base"], float) / results["num_weights"] for r in g],
            [ratio(r["base_accuracy"], r["finetuned_accuracy"]) for r in g])
        fig = plots.density_figure(
            series, xlabel="Percent of weights grafted", ylabel="% of fine-tuned accuracy",
            reverse_x=False, title="grafting: region size vs recovered accuracy")
        out.append(plots.save(fig, os.path.join(directory, "graft.png")))
    return out


def main(directory: str, *, figures_dir: str | None = None):
    """``lotto report DIR`` of a ``lotto sft`` run: prints the tables, writes
    ``sft.png`` and ``graft.png`` (default into ``DIR/figures``); returns a
    :class:`lotto_jax.runs.report.Report` whose ``run`` is ``results.json``.

    Raises:
      FileNotFoundError: the run has no ``results.json`` yet (``lotto ls`` shows
        how far it got).
    """
    from lotto_jax.runs import layout
    from lotto_jax.runs.report import Report

    results, ok = layout.load_json(os.path.join(directory, "results.json"))
    if not ok or not isinstance(results, dict) or results.get("method") != "sft":
        raise FileNotFoundError(f"{directory}: no finished lotto sft results "
                                "(results.json); rerun its lotto sft command (lotto ls "
                                "shows how far it got)")
    text = format_table(results)
    print(text, flush=True)
    paths = figures(results, figures_dir or os.path.join(directory, "figures"))
    return Report(results, text, paths)
