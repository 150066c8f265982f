"""Prints the Markdown result tables of experiments/README.md from experiments/results.

Run: python experiments/summarize.py [results dir]
"""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np

from lotto_jax import sweeps


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


def sweep_table(directory: str, metric: str):
    runs = sweeps.find_runs(directory)
    header, rows = sweeps.table(runs, metric=metric)
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        if any(row):
            print("| " + " | ".join(row) + " |")


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")
    for name in ("lenet300_imp", "mnist1d_lottery"):
        path = os.path.join(base, name)
        if os.path.isdir(path):
            print(f"\n### {name}\n")
            imp_table(path, ("early_stop_test_accuracy", "final_test_accuracy")
                      if name.startswith("lenet") else ("best_test_accuracy",))
    for name, metric in (("pai_lenet300", "final_test_accuracy"), ("pai_mnist1d", "best_test_accuracy"),
                         ("edge_popup", "final_test_accuracy")):
        path = os.path.join(base, name)
        if os.path.isdir(path):
            print(f"\n### {name} ({metric.replace('_', ' ')})\n")
            sweep_table(path, metric)


if __name__ == "__main__":
    main()
