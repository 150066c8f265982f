"""The grokking-tickets figure and table from the runs of experiments/grokking.sh.

For every variant (dense, ticket, PaI masks, the memorisation ticket) and seed it reads
the stored curve (train and test accuracy every 100 steps) and reports the first
evaluated step with train accuracy >= 99 % (memorisation) and with test accuracy
>= 95 % (generalisation). Seeds: a run with ``--replicates S`` (its curve holds lists)
gives seeds ``seed + i``; ``seedN/`` directories beside the variants give seed N.
Per variant: the steps per seed ("never": not reached), the mean ± std (population
std) over the seeds that reached 95 % with how many did, and the final test
accuracy's mean ± std. Writes ``summary.json``, ``summary.md`` and ``figures/grokking_curves.png`` and
``figures/grokking_test.png`` under the results directory.

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


def curves_of(path: str) -> dict[int, tuple]:
    """``{seed: (steps, train, test)}`` and the density of one run's metrics.json:
    replicate ``i`` of a ``--replicates S`` run is seed ``seed + i`` (its
    config.json, two levels up for imp rounds and pai variants, one for train)."""
    with open(path) as f:
        m = json.load(f)
    c = m["curve"]
    steps = np.array([r["step"] for r in c])

    def column(key):
        return np.array([np.nan if r.get(key) is None else r[key] for r in c], float)

    train, test = column("train_accuracy"), column("test_accuracy")
    if test.ndim == 1:
        return {0: (steps, train, test)}, m.get("density")
    seed = 0
    for up in ("..", "../.."):
        cfg = os.path.join(os.path.dirname(path), up, "config.json")
        if os.path.exists(cfg):
            with open(cfg) as f:
                seed = json.load(f)["run"]["seed"]
    if train.ndim == 1:  # no train accuracy recorded: NaN for every replicate
        train = np.repeat(train[:, None], test.shape[1], 1)
    return ({seed + i: (steps, train[:, i], test[:, i]) for i in range(test.shape[1])},
            m.get("density"))


def _mean_std(values) -> list | None:
    """``[mean, std]`` (population std; None for one value); None for no values."""
    if not values:
        return None
    return [float(np.mean(values)), float(np.std(values)) if len(values) > 1 else None]


def aggregate(rs: list[dict]) -> dict:
    """Over a variant's seeds: steps to 95 % test (of the seeds that reached it)
    and the final test accuracy, as ``[mean, std]``, and how many reached 95 %."""
    reached = [r["steps_to_test_95"] for r in rs if r["steps_to_test_95"] is not None]
    return {"seeds": len(rs), "reached_test_95": len(reached),
            "steps_to_test_95": _mean_std(reached),
            "final_test_accuracy": _mean_std([r["final_test_accuracy"] for r in rs])}


def _pm(v, scale=1.0, digits=0) -> str:
    if v is None:
        return "-"
    mean = f"{scale * v[0]:,.{digits}f}"
    return mean if v[1] is None else f"{mean} ± {scale * v[1]:,.{digits}f}"


def table(rows: dict, aggs: dict) -> list[str]:
    lines = ["| variant | density | seeds | steps to train >= 99 % | steps to test >= 95 % "
             "| steps to test >= 95 %: mean ± std (reached) | final test acc (%) "
             "| final test acc (%): mean ± std | last step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, rs in rows.items():
        def fmt(key, rs=rs):
            return ", ".join("never" if r[key] is None else f"{r[key]:,}" for r in rs)

        a, dens = aggs[name], rs[0]["density"]
        dens = "-" if dens is None else f"{100 * float(np.mean(dens)):.0f} %"
        seeds = ", ".join(str(r["seed"]) for r in rs)
        final = ", ".join(f"{100 * r['final_test_accuracy']:.1f}" for r in rs)
        last = ", ".join(f"{s:,}" for s in sorted({r["last_step"] for r in rs}))
        lines.append(
            f"| {VARIANTS[name][1]} | {dens} | {seeds} "
            f"| {fmt('steps_to_train_99')} | {fmt('steps_to_test_95')} "
            f"| {_pm(a['steps_to_test_95'])} ({a['reached_test_95']}/{a['seeds']}) "
            f"| {final} | {_pm(a['final_test_accuracy'], 100, 1)} | {last} |")
    return lines


def main(root: str) -> None:
    rows, curves = {}, {}
    for d in seed_dirs(root).values():
        for name, (rel, _) in VARIANTS.items():
            path = os.path.join(d, rel)
            if not os.path.exists(path):
                continue
            per_seed, density = curves_of(path)
            for seed, (steps, train, test) in per_seed.items():
                if d != root:  # a seedN directory of single runs
                    seed = int(os.path.basename(d)[4:])
                curves[name, seed] = (steps, train, test)
                rows.setdefault(name, []).append({
                    "seed": seed, "density": density,
                    "steps_to_train_99": first_step(steps, train, TRAIN_TARGET),
                    "steps_to_test_95": first_step(steps, test, TEST_TARGET),
                    "final_test_accuracy": float(test[-1]),
                    "final_train_accuracy": float(train[-1]), "last_step": int(steps[-1]),
                })
    for rs in rows.values():
        rs.sort(key=lambda r: r["seed"])
    aggs = {name: aggregate(rs) for name, rs in rows.items()}
    with open(os.path.join(root, "summary.json"), "w") as f:
        json.dump({name: {"seeds": rs, "over_seeds": aggs[name]} for name, rs in rows.items()},
                  f, indent=2)
    lines = table(rows, aggs)
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
    """Every variant's test accuracy on one axis (one colour per variant; seed 0
    solid, the other seeds thin and dashed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, (_, label)) in enumerate(VARIANTS.items()):
        for seed in sorted(s for n, s in curves if n == name):
            steps, _, test = curves[name, seed]
            ax.plot(steps, 100 * test, color=f"C{i}", lw=1.2 if seed == 0 else 0.7,
                    ls="-" if seed == 0 else "--", label=label if seed == 0 else None)
    ax.axhline(100 * TEST_TARGET, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy (%)")
    seeds = sorted({s for _, s in curves})
    ax.set_title(f"(a + b) mod 67: test accuracy, seeds {', '.join(map(str, seeds))} "
                 "(seed 0 solid; train accuracy is 100 % by step 300)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "experiments/results/grokking")
