"""Tables and figures of experiments/supermask_variants.sh.

Reads the runs' results.json files (and, for IMP, the committed metrics.json files of
experiments/results/structured/lenet300_weight), writes summary.json and
jackpot_vs_imp.png / signed_vs_edge_popup.png into the output directory, and prints
markdown tables. Jackpot seeds: seed 0 at the top of the output directory, seed S in
``seedS/``; every number is mean ± std over them (population std), per seed in
summary.json.

Usage: python experiments/supermask_variants_summary.py [out dir]
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

IMP = pathlib.Path("experiments/results/structured/lenet300_weight")
IMP_ROUNDS = (3, 7, 10)
JACKPOT_KEEPS = ("0.5", "0.2", "0.1", "0.05")
MNIST1D_KEEPS = ("0.5", "0.3", "0.1")


def _read(path: pathlib.Path):
    return json.loads(path.read_text()) if path.exists() else None


def _stats(v):
    a = 100 * np.atleast_1d(np.asarray(v, float))
    return {"mean": float(a.mean()), "std": float(a.std()), "n": int(a.size)}


def _seed_dirs(out: pathlib.Path) -> dict[int, pathlib.Path]:
    dirs = {0: out}
    for d in sorted(out.glob("seed*")):
        if d.name[4:].isdigit():
            dirs[int(d.name[4:])] = d
    return dirs


def jackpot_rows(out: pathlib.Path) -> list[dict]:
    """Per keep: every seed's row (:func:`jackpot_seed_rows`) and over the seeds
    ``{"mean", "std", "n"}`` of each accuracy."""
    per_seed = {seed: {r["keep"]: r for r in jackpot_seed_rows(d)}
                for seed, d in _seed_dirs(out).items()}
    rows = []
    for keep in map(float, JACKPOT_KEEPS):
        seeds = {s: rs[keep] for s, rs in per_seed.items() if keep in rs}
        if not seeds:
            continue
        row = {"keep": keep, "seeds": sorted(seeds),
               "density": float(np.mean([r["density"] for r in seeds.values()]))}
        for key in ("jackpot_final", "jackpot_early_stop", "magnitude_baseline",
                    "magnitude_zero_lr_run", "dense_pretrained", "shuffled"):
            vals = [r[key] for r in seeds.values() if r[key] is not None]
            a = np.asarray(vals, float)
            row[key] = (None if not vals else
                        {"mean": float(a.mean()), "std": float(a.std()), "n": int(a.size)})
        row["per_seed"] = {str(s): r for s, r in seeds.items()}
        rows.append(row)
    return rows


def jackpot_seed_rows(out: pathlib.Path) -> list[dict]:
    rows = []
    for keep in JACKPOT_KEEPS:
        res = _read(out / f"jackpot_k{keep}" / "results.json")
        mag = _read(out / f"magnitude_k{keep}" / "results.json")
        if res is None:
            continue
        rows.append({
            "keep": float(keep), "density": res["density"],
            "layer_density": res["layer_density"],
            "jackpot_final": 100 * res["final_test_accuracy"],
            "jackpot_early_stop": (None if res["early_stop_test_accuracy"] is None
                                   else 100 * res["early_stop_test_accuracy"]),
            "magnitude_baseline": 100 * res["baselines"]["magnitude"],
            "magnitude_zero_lr_run": None if mag is None else 100 * mag["final_test_accuracy"],
            "dense_pretrained": 100 * res["baselines"]["all_ones"],
            "shuffled": 100 * res["baselines"]["shuffled"],
        })
    return rows


def imp_rows() -> list[dict]:
    rows = []
    for r in IMP_ROUNDS:
        m = _read(IMP / f"round_{r:03d}" / "metrics.json")
        if m is not None:
            rows.append({"round": r, "density": m["density"],
                         "final": _stats(m["final_test_accuracy"]),
                         "early_stop": _stats(m["early_stop_test_accuracy"])})
    return rows


def mnist1d_rows(out: pathlib.Path) -> list[dict]:
    rows = []
    for keep in MNIST1D_KEEPS:
        row = {"keep": float(keep)}
        for method in ("signed", "edge-popup"):
            res = _read(out / f"mnist1d_{method}_k{keep}" / "results.json")
            if res is not None:
                row[method] = {"final": _stats(res["final_test_accuracy"]),
                               "best": _stats(res["best_test_accuracy"]),
                               "density": res["density"]}
        rows.append(row)
    return rows


def _figures(out, jack, imp, m1d):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if jack:
        fig, ax = plt.subplots(figsize=(6, 4))
        d = [100 * r["density"] for r in jack]
        n = jack[0]["jackpot_final"]["n"]
        for key, fmt, label in (("jackpot_final", "o-", "jackpot (2,000 steps)"),
                                ("magnitude_baseline", "s--",
                                 "one-shot magnitude (no search)")):
            ax.errorbar(d, [r[key]["mean"] for r in jack], yerr=[r[key]["std"] for r in jack],
                        fmt=fmt, capsize=2, label=f"{label}, {n} seed{'s' * (n > 1)}")
        if imp:
            ax.errorbar([100 * r["density"] for r in imp],
                        [r["final"]["mean"] for r in imp],
                        yerr=[r["final"]["std"] for r in imp], fmt="^-",
                        label="IMP, rewind to init (3 seeds)")
        ax.axhline(jack[0]["dense_pretrained"]["mean"], color="gray", lw=0.8,
                   label="dense (mean)")
        ax.set_xscale("log")
        ax.set_xlabel("weights kept (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("LeNet-300-100 / MNIST")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "jackpot_vs_imp.png", dpi=120)
    if any(len(r) > 1 for r in m1d):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, marker in (("signed", "o-"), ("edge-popup", "s--")):
            pts = [(100 * r["keep"], r[method]["final"]) for r in m1d if method in r]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts],
                            yerr=[p[1]["std"] for p in pts], fmt=marker, label=method)
        ax.set_xlabel("weights kept per layer (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("MNIST-1D MLP, frozen random weights (3 seeds)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "signed_vs_edge_popup.png", dpi=120)


def main(out: pathlib.Path) -> None:
    jack, imp, m1d = jackpot_rows(out), imp_rows(), mnist1d_rows(out)
    (out / "summary.json").write_text(json.dumps(
        {"jackpot": jack, "imp": imp, "mnist1d": m1d}, indent=2) + "\n")
    def pm(v):
        return "-" if v is None else f"{v['mean']:.2f} ± {v['std']:.2f}"

    print("| keep | density | seeds | jackpot | one-shot magnitude | zero-lr run | shuffled "
          "| dense |")
    print("|---|---|---|---|---|---|---|---|")
    for r in jack:
        print(f"| {r['keep']} | {100 * r['density']:.1f} % | "
              f"{', '.join(map(str, r['seeds']))} | {pm(r['jackpot_final'])} | "
              f"{pm(r['magnitude_baseline'])} | {pm(r['magnitude_zero_lr_run'])} | "
              f"{pm(r['shuffled'])} | {pm(r['dense_pretrained'])} |")
    print("\n| IMP round | density | final (3 seeds) |\n|---|---|---|")
    for r in imp:
        print(f"| {r['round']} | {100 * r['density']:.1f} % | "
              f"{r['final']['mean']:.2f} ± {r['final']['std']:.2f} |")
    print("\n| keep | signed | edge-popup |\n|---|---|---|")
    for r in m1d:
        cell = {m: (f"{r[m]['final']['mean']:.2f} ± {r[m]['final']['std']:.2f}"
                    if m in r else "-") for m in ("signed", "edge-popup")}
        print(f"| {r['keep']} | {cell['signed']} | {cell['edge-popup']} |")
    _figures(out, jack, imp, m1d)


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else
                      "experiments/results/supermask_variants"))
