"""COLT vs IMP: the tables and figure of experiments/colt.sh.

Reads the runs under ``OUT``: ``colt`` and ``colt_keep`` (lotto colt, its
``results.json``), ``imp`` and ``imp_f25`` (lotto imp, ``round_*/metrics.json``);
absent ones are skipped. Writes ``OUT/summary.json`` and ``OUT/colt_vs_imp.png`` and
prints two markdown tables:

1. rounds and training steps to reach each density (the first round whose mask
   keeps at most that fraction of the weights). "pruning steps" are the steps
   trained to *find* the mask (COLT: P partition networks per round; IMP: one
   network per round); "total steps" add the tickets trained so far (COLT trains
   one extra ticket per round on all classes; IMP's round network is its ticket).
2. accuracy at equal density: every COLT round against the other runs interpolated
   linearly in log-density between their two neighbouring rounds (each replicate
   along its own rounds; with replicates, mean ± std over them (population std,
   as the other tables); densities are the replicates' mean).

Usage: python experiments/colt_table.py [OUT]   (default experiments/results/colt)
"""

from __future__ import annotations

import glob
import json
import math
import os
import sys

import numpy as np

TARGETS = (0.5, 0.2, 0.1, 0.05, 0.03)
KEYS = ("final_test_accuracy", "best_test_accuracy", "early_stop_test_accuracy")
RUNS = {"colt": "COLT", "colt_keep": "COLT --labels keep", "imp": "IMP 15 %",
        "imp_f25": "IMP 25 %"}


def _mean(v):
    return None if v is None else float(np.mean(v))


def _reps(v):
    """Per-replicate values as a list (one run: a list of one)."""
    return None if v is None else [float(x) for x in np.atleast_1d(v)]


def _with_reps(r):
    return {**r, **{k: _mean(r[k]) for k in KEYS}, **{f"{k}_reps": _reps(r[k]) for k in KEYS}}


def colt_rows(path: str):
    with open(os.path.join(path, "results.json")) as f:
        return [_with_reps(r) for r in json.load(f)["rounds"]]


def imp_rows(path: str):
    with open(os.path.join(path, "config.json")) as f:
        steps = json.load(f)["run"]["train"]["steps"]
    rows = []
    for p in glob.glob(os.path.join(path, "round_*", "metrics.json")):
        r = int(os.path.basename(os.path.dirname(p)).split("_")[1])
        with open(p) as f:
            m = json.load(f)
        rows.append({**_with_reps({"round": r, "density": m["density"],
                                   **{k: m[k] for k in KEYS}}),
                     "pruning_steps": r * steps, "total_steps": (r + 1) * steps})
    return sorted(rows, key=lambda r: r["round"])


def load(out: str) -> dict[str, list[dict]]:
    runs = {}
    for name in RUNS:
        path = os.path.join(out, name)
        if name.startswith("colt") and os.path.exists(os.path.join(path, "results.json")):
            runs[name] = colt_rows(path)
        elif name.startswith("imp") and glob.glob(os.path.join(path, "round_*",
                                                                "metrics.json")):
            runs[name] = imp_rows(path)
    return runs


def reach(rows, target):
    return next((r for r in rows if r["density"] <= target + 1e-12), None)


def interp(rows, density, key):
    """Per replicate, ``key`` at ``density``, linear in log-density between two
    rounds; the end round's value within 2 % (relative) past either end (COLT's
    last round, 2.76 %, against IMP's last, 2.80 %); None further out."""
    pts = sorted((math.log(r["density"]), r[f"{key}_reps"]) for r in rows
                 if r[key] is not None)
    xs, ys = zip(*pts, strict=True)
    x = math.log(density)
    if not xs[0] - 0.02 <= x <= xs[-1] + 0.02:
        return None
    return [float(np.interp(x, xs, [y[i] for y in ys])) for i in range(len(ys[0]))]


def stats(v):
    """``[mean, std]`` of per-replicate values (population std, as the other
    tables; None for one)."""
    if v is None:
        return None
    return [float(np.mean(v)), float(np.std(v)) if len(v) > 1 else None]


def fmt(v):
    """A value, or ``[mean, std]`` as ``mean ± std`` (percent)."""
    if v is None:
        return "-"
    if isinstance(v, list):
        return fmt(v[0]) if v[1] is None else f"{100 * v[0]:.2f} ± {100 * v[1]:.2f}"
    return f"{100 * v:.2f}"


def reach_table(runs):
    names = list(runs)
    lines = ["| density ≤ | " + " | ".join(f"{RUNS[n]}: round (density), pruning / total "
                                         "steps" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    out = []
    for t in TARGETS:
        cells, rec = [], {"target": t}
        for n in names:
            r = reach(runs[n], t)
            rec[n] = r and {k: r[k] for k in ("round", "density", "pruning_steps",
                                              "total_steps")}
            cells.append("-" if r is None else f"{r['round']} ({100 * r['density']:.2f} %), "
                         f"{r['pruning_steps']:,} / {r['total_steps']:,}")
        out.append(rec)
        lines.append(f"| {100 * t:g} % | " + " | ".join(cells) + " |")
    return lines, out


def equal_table(runs):
    others = [n for n in runs if n != "colt"]
    lines = ["| COLT round | % weights | COLT final / best | "
             + " | ".join(f"{RUNS[n]} final / best" for n in others)
             + " | partitions' own-class final acc |",
             "|---|---|---|" + "---|" * len(others) + "---|"]
    out = []
    for r in runs["colt"]:
        rec = {"round": r["round"], "density": r["density"],
               "colt": [stats(r[f"{k}_reps"]) for k in ("final_test_accuracy",
                                                         "best_test_accuracy")]}
        cells = []
        for n in others:
            rec[n] = [stats(interp(runs[n], r["density"], k))
                      for k in ("final_test_accuracy", "best_test_accuracy")]
            cells.append(f"{fmt(rec[n][0])} / {fmt(rec[n][1])}")
        parts = r.get("partition_final_test_accuracy")
        rec["partitions"] = None if parts is None else [_mean(p) for p in parts]
        out.append(rec)
        lines.append(f"| {r['round']} | {100 * r['density']:.2f} | "
                     f"{fmt(rec['colt'][0])} / {fmt(rec['colt'][1])} | "
                     + " | ".join(cells) + " | "
                     + ("-" if parts is None else " / ".join(fmt(a) for a in rec["partitions"]))
                     + " |")
    return lines, out


def figure(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"colt": "o-", "colt_keep": "^--", "imp": "s-", "imp_f25": "d--"}
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for n, rows in runs.items():
        d = [100 * r["density"] for r in rows]
        line, = a.plot(d, [100 * r["best_test_accuracy"] for r in rows], styles[n],
                       label=RUNS[n], ms=4)
        reps = np.array([r["best_test_accuracy_reps"] for r in rows])
        if reps.shape[1] > 1:  # ± one std over the replicates
            m, sd = 100 * reps.mean(1), 100 * reps.std(1)
            a.fill_between(d, m - sd, m + sd, color=line.get_color(), alpha=0.2, lw=0)
        b.plot([r["pruning_steps"] for r in rows], d, styles[n], label=RUNS[n], ms=4)
    a.set_xscale("log")
    a.invert_xaxis()
    a.set_xlabel("% weights remaining")
    a.set_ylabel("best test accuracy (%), ticket on all classes\n(mean, ± std shaded)")
    b.set_yscale("log")
    b.set_xlabel("training steps spent finding the mask")
    b.set_ylabel("% weights remaining")
    for ax in (a, b):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("COLT vs IMP, LeNet-300-100 / MNIST, global magnitude pruning")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(out: str) -> None:
    runs = load(out)
    t1, reached = reach_table(runs)
    t2, equal = equal_table(runs)
    print("\n".join([*t1, "", *t2]))
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"runs": {n: RUNS[n] for n in runs}, "reach": reached,
                   "equal_density": equal}, f, indent=2)
    figure(runs, os.path.join(out, "colt_vs_imp.png"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "experiments/results/colt")
