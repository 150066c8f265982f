"""Prints the Markdown result tables of experiments/README.md from experiments/results.

Run: python experiments/summarize.py [results dir]
"""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np

from lotto_jax.runs import sweeps


def pct(v, digits=1):
    if v is None:
        return "-"
    a = np.asarray(v, float)
    return f"{100 * a.mean():.{digits}f}" + (f" ± {100 * a.std():.{digits}f}" if a.ndim else "")


def imp_table(run: str, metrics=("early_stop_test_accuracy", "final_test_accuracy", "best_test_accuracy")):
    rounds = sorted(glob.glob(os.path.join(run, "round_*/metrics.json")))
    controls = sorted(os.path.basename(p) for p in glob.glob(os.path.join(run, "controls/*")))
    short = {"early_stop_test_accuracy": "acc @ ES", "final_test_accuracy": "final acc",
             "best_test_accuracy": "best acc"}
    head = ["round", "% weights", "ES step", *[short[m] for m in metrics]]
    head += [f"{c} {short[m]}" for c in controls for m in metrics]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for path in rounds:
        with open(path) as f:
            d = json.load(f)
        r = os.path.basename(os.path.dirname(path))
        row = [r.split("_")[1].lstrip("0") or "0", f"{100 * d['density']:.3g}",
               str(d.get("early_stop_step", "-")), *[pct(d.get(m)) for m in metrics]]
        for c in controls:
            cp = os.path.join(run, "controls", c, r, "metrics.json")
            if os.path.exists(cp):
                with open(cp) as f:
                    dc = json.load(f)
                row += [pct(dc.get(m)) for m in metrics]
            else:
                row += ["-"] * len(metrics)
        print("| " + " | ".join(row) + " |")


def _best(run: str, r: int, control: str | None = None):
    sub = os.path.join(run, "controls", control) if control else run
    path = os.path.join(sub, f"round_{r:03d}", "metrics.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def grouping_table(directory: str, runs=("pooled", "per_leaf", "kernels_only")):
    """The MNIST-1D lottery curve under each pruning grouping, side by side: best test
    accuracy, mean ± std over replicates, ticket and random mask (and reinit)."""
    runs = [r for r in runs if os.path.isdir(os.path.join(directory, r))]
    head = ["round", "% weights"]
    cols = []
    for r in runs:
        for c in (None, "random", "reinit"):
            if c is None or os.path.isdir(os.path.join(directory, r, "controls", c)):
                cols.append((r, c))
                head.append(f"{r} {c or 'ticket'}")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    rnd = 0
    while (d := _best(os.path.join(directory, runs[0]), rnd)) is not None:
        row = [str(rnd), f"{100 * d['density']:.3g}"]
        for run, c in cols:
            m = _best(os.path.join(directory, run), rnd, c)
            row.append(pct(m and m.get("best_test_accuracy")))
        print("| " + " | ".join(row) + " |")
        rnd += 1


def sweep_table(directory: str, metric: str):
    runs = sweeps.find_runs(directory)
    header, rows = sweeps.table(runs, metric=metric)
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        if any(row):
            print("| " + " | ".join(row) + " |")


DST_METHODS = ("static", "set", "rigl", "gmp", "granet")


def _dst_acc(directory: str, name: str, metric: str):
    path = os.path.join(directory, name, "results.json")
    if not os.path.exists(path):
        return None, None
    with open(path) as f:
        d = json.load(f)
    if "variants" in d:  # a PaI run
        v = d["variants"].get("synflow", {})
        return v.get(metric), None
    return d.get(metric), d.get("steps")


def _imp_nearest(imp_run: str, density: float):
    """The IMP round whose density is nearest to ``density`` (in log): its metrics,
    round index and density."""
    best = None
    for path in sorted(glob.glob(os.path.join(imp_run, "round_*/metrics.json"))):
        with open(path) as f:
            d = json.load(f)
        gap = abs(np.log(d["density"]) - np.log(density))
        if best is None or gap < best[0]:
            best = (gap, d, int(path.split("round_")[1][:3]))
    return None if best is None else best[1:]


def dst_table(directory: str, metric: str, imp_run: str | None):
    """Accuracy (mean ± std of 3 seeds) per density: every DST method, SynFlow at
    init with the same budget, and the IMP ticket of the nearest density (with its
    total training budget)."""
    head = ["% weights", *DST_METHODS, "SynFlow (PaI)", "IMP ticket (its % weights)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    steps = None
    imp_steps = []
    for density in (0.1, 0.05, 0.02, 0.01):
        row = [f"{100 * density:g}"]
        for m in DST_METHODS:
            acc, st = _dst_acc(directory, f"{m}_d{density}", metric)
            steps = steps or st
            row.append(pct(acc))
        row.append(pct(_dst_acc(directory, f"synflow_d{density}", metric)[0]))
        near = _imp_nearest(imp_run, density) if imp_run else None
        if near:
            d, r = near
            row.append(f"{pct(d.get(metric))} ({100 * d['density']:.2g})")
            imp_steps.append(r + 1)
        else:
            row.append("-")
        print("| " + " | ".join(row) + " |")
    if steps:
        with open(os.path.join(imp_run, "config.json")) as f:
            imp_cfg = json.load(f)
        per_round = imp_cfg["run"]["train"]["steps"]
        print(f"\nTraining steps per network: {steps:,} for every DST method and SynFlow; "
              f"the IMP tickets above took {', '.join(f'{r} x {per_round:,}' for r in imp_steps)} "
              "(rounds x steps per round).")


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")
    path = os.path.join(base, "mnist1d_lottery")
    if os.path.isdir(os.path.join(path, "pooled")):
        print("\n### mnist1d_lottery (best test accuracy, mean ± std of 3 seeds)\n")
        grouping_table(path)
    for name in ("lenet300_imp",):
        path = os.path.join(base, name)
        if os.path.isdir(path):
            print(f"\n### {name}\n")
            imp_table(path, ("early_stop_test_accuracy", "final_test_accuracy")
                      if name.startswith("lenet") else ("best_test_accuracy",))
    for name, metric, imp in (("dst_lenet300", "final_test_accuracy", "lenet300_imp"),
                              ("dst_mnist1d", "best_test_accuracy", "mnist1d_lottery/pooled")):
        path = os.path.join(base, name)
        if os.path.isdir(path):
            print(f"\n### {name} ({metric.replace('_', ' ')}, mean ± std of 3 seeds)\n")
            dst_table(path, metric, os.path.join(base, imp))
    for name, metric in (("pai_lenet300", "final_test_accuracy"), ("pai_mnist1d", "best_test_accuracy"),
                         ("edge_popup", "final_test_accuracy")):
        path = os.path.join(base, name)
        if os.path.isdir(path):
            print(f"\n### {name} ({metric.replace('_', ' ')})\n")
            sweep_table(path, metric)


if __name__ == "__main__":
    main()
