"""The grokking-tickets figure and table from the runs of experiments/grokking.sh.

For every variant (dense, ticket, PaI masks, the memorisation ticket) and seed it reads
the stored curve (train and test accuracy every 100 steps) and reports the first
evaluated step with train accuracy >= 99 % (memorisation) and with test accuracy
>= 95 % (generalisation). Writes ``summary.json``, ``summary.md`` and
``figures/grokking_curves.png`` under the results directory.

Run: python experiments/grokking_summary.py [results dir]
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

VARIANTS = {  # name -> (path of metrics.json inside a seed's directory, label)
    "dense": ("imp/round_000/metrics.json", "dense (round 0)"),
    "ticket": ("ticket/train/metrics.json", "grokking ticket (40 % kept, θ0)"),
    "ticket_imp": ("imp/round_001/metrics.json", "grokking ticket, IMP round 1"),
    "random": ("pai_random/variants/random/metrics.json", "PaI random"),
    "snip": ("pai_snip/variants/snip/metrics.json", "PaI SNIP"),
    "grasp": ("pai_grasp/variants/grasp/metrics.json", "PaI GraSP"),
    "synflow": ("pai_synflow/variants/synflow/metrics.json", "PaI SynFlow"),
    "mem_ticket": ("mem_ticket/train/metrics.json", "memorisation ticket (step 1000)"),
    "ticket_wd0": ("ticket_wd0/train/metrics.json", "grokking ticket, weight decay 0"),
    "dense_wd0": ("dense_wd0/train/metrics.json", "dense, weight decay 0"),
}
TEST_TARGET, TRAIN_TARGET = 0.95, 0.99


def seed_dirs(root: str) -> dict[int, str]:
    out = {0: root}
    for name in sorted(os.listdir(root)):
        if name.startswith("seed") and name[4:].isdigit():
            out[int(name[4:])] = os.path.join(root, name)
    return out


def first_step(steps, values, target):
    hit = np.flatnonzero(np.asarray(values, float) >= target)
    return int(steps[hit[0]]) if hit.size else None


def curve(path: str):
    with open(path) as f:
        m = json.load(f)
    c = m["curve"]
    steps = np.array([r["step"] for r in c])
    test = np.array([r["test_accuracy"] for r in c], float)
    train = np.array([np.nan if r.get("train_accuracy") is None else r["train_accuracy"]
                      for r in c], float)
    return steps, train, test, m.get("density")


def main(root: str) -> None:
    rows, curves = {}, {}
    for seed, d in seed_dirs(root).items():
        for name, (rel, _) in VARIANTS.items():
            path = os.path.join(d, rel)
            if not os.path.exists(path):
                continue
            steps, train, test, density = curve(path)
            curves[name, seed] = (steps, train, test)
            rows.setdefault(name, []).append({
                "seed": seed, "density": density,
                "steps_to_train_99": first_step(steps, train, TRAIN_TARGET),
                "steps_to_test_95": first_step(steps, test, TEST_TARGET),
                "final_test_accuracy": float(test[-1]), "final_train_accuracy": float(train[-1]),
                "last_step": int(steps[-1]),
            })
    with open(os.path.join(root, "summary.json"), "w") as f:
        json.dump(rows, f, indent=2)
    lines = ["| variant | density | seeds | steps to train >= 99 % | steps to test >= 95 % "
             "| final test acc (%) |", "|---|---|---|---|---|---|"]
    for name, rs in rows.items():
        def fmt(key, rs=rs):
            return ", ".join("never" if r[key] is None else str(r[key]) for r in rs)

        dens = rs[0]["density"]
        seeds = ", ".join(str(r["seed"]) for r in rs)
        final = ", ".join(f"{100 * r['final_test_accuracy']:.1f}" for r in rs)
        lines.append(
            f"| {VARIANTS[name][1]} | {'-' if dens is None else f'{100 * dens:.0f} %'} "
            f"| {seeds} | {fmt('steps_to_train_99')} | {fmt('steps_to_test_95')} "
            f"| {final} |")
    with open(os.path.join(root, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    figure(curves, os.path.join(root, "figures", "grokking_curves.png"))
    overlay(curves, os.path.join(root, "figures", "grokking_test.png"))


def figure(curves, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [n for n in VARIANTS if any(k[0] == n for k in curves)]
    cols = 4
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(4 * cols, 3 * rows))
    FigureCanvasAgg(fig)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        for (n, seed), (steps, train, test) in sorted(curves.items()):
            if n != name:
                continue
            alpha = 1.0 if seed == 0 else 0.4
            ax.plot(steps, 100 * train, color="tab:blue", alpha=alpha,
                    label="train" if seed == 0 else None)
            ax.plot(steps, 100 * test, color="tab:red", alpha=alpha,
                    label="test" if seed == 0 else None)
        ax.axhline(100 * TEST_TARGET, color="grey", lw=0.5, ls="--")
        ax.set_title(VARIANTS[name][1], fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.legend(fontsize=7, loc="center right")
    fig.suptitle("(a + b) mod 67, grok_mlp, AdamW wd 1, full batch (seed 0 solid)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)


def overlay(curves, path: str) -> None:
    """Every variant's test accuracy on one axis (seed 0)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, (_, label) in VARIANTS.items():
        if (name, 0) in curves:
            steps, _, test = curves[name, 0]
            ax.plot(steps, 100 * test, label=label, lw=1.2)
    ax.axhline(100 * TEST_TARGET, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("(a + b) mod 67: test accuracy, seed 0 (train accuracy is 100 % by step 300)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "experiments/results/grokking")
