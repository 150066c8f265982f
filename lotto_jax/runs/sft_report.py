"""The table and figures of a ``lotto sft`` run (:mod:`lotto_jax.runs.sft`)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["figures", "format_table", "print_table"]


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def format_table(results: dict[str, Any]) -> str:
    """The run's accuracies (percent) as plain-text tables."""
    pre, full = results["pretrained"], results["finetuned"]
    lines = [f"lotto sft: {results['model']} / {results['dataset']}, tasks "
             + ", ".join(f"{t}={v}" for t, v in results["tasks"].items()),
             f"pretrained on A: acc A {_pct(pre['A'])}, acc B {_pct(pre['B'])}",
             "full fine-tuning: " + ", ".join(
                 f"{t} acc {_pct(r['accuracy'])} (A after: {_pct(r['accuracy_A'])})"
                 for t, r in full.items()),
             "", f"{'method':<8} {'task':<4} {'K':>8} {'% weights':>9} {'selected':>9} "
             f"{'acc':>7} {'acc A':>7}"]
    for r in results["sparse"]:
        lines.append(f"{r['kind']:<8} {r['task']:<4} {r['k']:>8} {100 * r['fraction']:>9.3f} "
                     f"{r['selected']:>9} {_pct(r['accuracy']):>7} {_pct(r['accuracy_A']):>7}")
    if results.get("compose"):
        lines += ["", "composition θ0 + φ_B1 + φ_B2: accuracy own -> composed "
                  "(interference) per half; B overall"]
        for r in results["compose"]:
            halves = "; ".join(f"{_pct(o)} -> {_pct(c)} ({_pct(i)})" for o, c, i in zip(
                r["own"], r["composed"], r["interference"], strict=True))
            lines.append(f"  K={r['k']:<8} {halves}; B {_pct(r['composed_B'])}; "
                         f"overlap {r['overlap']}")
        f = results["compose_full"]
        halves = "; ".join(f"{_pct(o)} -> {_pct(c)} ({_pct(i)})" for o, c, i in zip(
            f["own"], f["composed"], f["interference"], strict=True))
        lines.append(f"  full FT    {halves}; B {_pct(f['composed_B'])}")
    if results.get("graft"):
        lines += ["", f"{'graft base':>10} {'lr':>6} {'region':>8} {'% weights':>9} {'base acc':>8} "
                  f"{'acc':>7} {'ft acc':>7} {'recovered':>9}"]
        for g in results["graft"]:
            rec = "-" if g["recovered"] is None else f"{100 * g['recovered']:.1f}%"
            lines.append(f"{g['fraction']:>10g} {g['lr']:>6.0e} {g['region']:>8} "
                         f"{100 * g['region_fraction']:>9.4f} {_pct(g['base_accuracy']):>8} "
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

    out = []
    series = {}
    for kind, label in (("ltsft", "LT-SFT"), ("random", "random-K")):
        rows = [r for r in results["sparse"] if r["kind"] == kind and r["task"] == "B"]
        if rows:
            series[label] = ([100 * r["fraction"] for r in rows],
                             [100 * r["accuracy"] for r in rows], None)
    full = results["finetuned"]["B"]["accuracy"]
    fig = plots.density_figure(series, xlabel="Percent of weights fine-tuned",
                               ylabel="Task B test accuracy (%)", reverse_x=False,
                               reference=("full fine-tuning", 100 * full, None),
                               title=f"sparse fine-tuning: {results['model']}")
    out.append(plots.save(fig, os.path.join(directory, "sft.png")))
    if results.get("graft"):
        series = {}
        for f in sorted({r["fraction"] for r in results["graft"]}):
            g = sorted((r for r in results["graft"] if r["fraction"] == f),
                       key=lambda r: r["region_fraction"])
            series[f"graft, base patch {100 * f:g} %"] = (
                [100 * r["region_fraction"] for r in g],
                [100 * (r["recovered"] or 0.0) for r in g], None)
        lt = [r for r in results["sparse"] if r["kind"] == "ltsft" and r["task"] == "B"]
        if lt and full:
            series["LT-SFT (trained)"] = ([100 * r["fraction"] for r in lt],
                                          [100 * r["accuracy"] / full for r in lt], None)
        g = sorted(results["graft"], key=lambda r: r["base"])
        series["base patch only"] = (
            [100 * r["base"] / results["num_weights"] for r in g],
            [100 * r["base_accuracy"] / r["finetuned_accuracy"] if r["finetuned_accuracy"]
             else 0.0 for r in g], None)
        fig = plots.density_figure(
            series, xlabel="Percent of weights grafted", ylabel="% of fine-tuned accuracy",
            reverse_x=False, title="grafting: region size vs recovered accuracy")
        out.append(plots.save(fig, os.path.join(directory, "graft.png")))
    return out
