"""BiP vs IMP: the table and figure of experiments/bip.sh.

Reads the ``lotto bip`` runs under ``OUT`` (``OUT/<name>/results.json``: the main
runs ``lenet300`` and ``mnist1d`` and any ablation ``lenet300_*`` / ``mnist1d_*``)
and the IMP runs they are compared with (``round_*/metrics.json``, the replicates'
mean ± std): LeNet-300-100 ``OUT/lenet300_imp`` (lenet300-5k-imp extended to 17
rounds) and MNIST-1D ``experiments/results/mnist1d_lottery/kernels_only``.

For each keep: BiP's final test accuracy (mean ± std over replicates), the one-shot
magnitude pruning of the pretrained network it starts from (no training), and IMP at
the first round whose density is at most the keep: its density, accuracy and the
steps it took (``(r + 1) × steps per round``: every round trains one network).
BiP's steps are pretraining + BiP (+ fine-tuning). Writes ``OUT/summary.json`` and
``OUT/bip_vs_imp.png`` and prints markdown tables.

Usage: python experiments/bip_summary.py [OUT]   (default experiments/results/bip)
"""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np

IMP = {"lenet300": "{out}/lenet300_imp",
       "mnist1d": "experiments/results/mnist1d_lottery/kernels_only"}


def _stats(v) -> dict[str, float]:
    a = 100 * np.atleast_1d(np.asarray(v, float))
    return {"mean": float(a.mean()), "std": float(a.std()), "n": int(a.size)}


def _fmt(s) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}" if s["n"] > 1 else f"{s['mean']:.2f}"


def imp_rounds(directory: str) -> list[dict]:
    steps = json.load(open(os.path.join(directory, "config.json")))["run"]["train"]["steps"]
    rows = []
    for path in sorted(glob.glob(os.path.join(directory, "round_*", "metrics.json"))):
        m = json.load(open(path))
        r = int(os.path.basename(os.path.dirname(path)).split("_")[1])
        rows.append({"round": r, "density": m["density"], "steps": (r + 1) * steps,
                     "accuracy": _stats(m["final_test_accuracy"])})
    return rows


def compare(run: dict, imp: list[dict]) -> list[dict]:
    out = []
    for k in run["keeps"]:
        at = next((r for r in imp if r["density"] <= k["keep"] + 1e-9), None)
        row = {"keep": k["keep"], "density": k["density"],
               "bip": _stats(k["final_test_accuracy"]),
               "one_shot": _stats(k["start_test_accuracy"]),
               "bip_steps": k["steps"]["total"],
               "mask_changed": float(np.mean(k["mask_changed"]))}
        if k.get("finetune"):
            row["finetuned"] = _stats(k["finetune"]["final_test_accuracy"])
        if at is not None:
            row["imp"] = {"round": at["round"], "density": at["density"],
                          "accuracy": at["accuracy"], "steps": at["steps"]}
        out.append(row)
    return out


def main(out: str) -> dict:
    summary = {}
    for path in sorted(glob.glob(os.path.join(out, "*", "results.json"))):
        name = os.path.basename(os.path.dirname(path))
        run = json.load(open(path))
        if run.get("method") != "bip":
            continue
        base = name.split("_")[0]
        imp_dir = IMP.get(base, "").format(out=out)
        imp = imp_rounds(imp_dir) if imp_dir and os.path.isdir(imp_dir) else []
        summary[name] = {"pretrain": run.get("pretrain") and _stats(
            run["pretrain"]["final_test_accuracy"]), "ig_scale": run["ig_scale"],
            "correction": run["correction"], "rows": compare(run, imp), "imp": imp}
    for name, s in summary.items():
        dense = f", dense {_fmt(s['pretrain'])}" if s["pretrain"] else ""
        print(f"\n### {name} (ig_scale {s['ig_scale']}, {s['correction']}{dense})\n")
        print("| keep | BiP (%) | one-shot magnitude (%) | BiP steps | IMP round (density) "
              "| IMP (%) | IMP steps | mask changed |")
        print("|---|---|---|---|---|---|---|---|")
        for r in s["rows"]:
            i = r.get("imp")
            imp = (f"{i['round']} ({100 * i['density']:.1f} %) | {_fmt(i['accuracy'])} | "
                   f"{i['steps']}") if i else "- | - | -"
            print(f"| {r['keep']:g} | {_fmt(r['bip'])} | {_fmt(r['one_shot'])} | "
                  f"{r['bip_steps']} | {imp} | {int(r['mask_changed'])} |")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    _figure(summary, os.path.join(out, "bip_vs_imp.png"))
    return summary


def _figure(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mains = [n for n in ("lenet300", "mnist1d") if n in summary]
    if not mains:
        return
    fig, axes = plt.subplots(1, len(mains), figsize=(6 * len(mains), 4.8), squeeze=False)
    for ax, name in zip(axes[0], mains, strict=True):
        s = summary[name]
        if s["imp"]:
            d = np.array([r["density"] for r in s["imp"]])
            m = np.array([r["accuracy"]["mean"] for r in s["imp"]])
            e = np.array([r["accuracy"]["std"] for r in s["imp"]])
            ax.plot(100 * d, m, "o-", ms=3, color="C0", label="IMP (rewind to θ0)")
            ax.fill_between(100 * d, m - e, m + e, color="C0", alpha=0.2)
        for other, colour in ((name, "C3"), *[(n, f"C{4 + i}") for i, n in enumerate(
                sorted(n for n in summary if n.startswith(name + "_")))]):
            rows = summary[other]["rows"]
            label = "BiP" if other == name else f"BiP ({other[len(name) + 1:]})"
            ax.errorbar([100 * r["density"] for r in rows], [r["bip"]["mean"] for r in rows],
                        [r["bip"]["std"] for r in rows], fmt="s", color=colour, label=label,
                        capsize=3)
        rows = s["rows"]
        ys = [r["bip"]["mean"] for r in rows] + [r["accuracy"]["mean"] for r in s["imp"]]
        lo, hi = min(ys) - 1.0, max(ys) + 0.5
        ax.set_ylim(lo, hi)
        for r in rows:  # the one-shot start, marked at the bottom when off scale
            y = r["one_shot"]["mean"]
            ax.plot(100 * r["density"], max(y, lo + 0.1), "v" if y < lo else "x",
                    color="gray")
            if y < lo:
                ax.annotate(f"{y:.1f}", (100 * r["density"], lo + 0.1), fontsize=7,
                            color="gray", textcoords="offset points", xytext=(4, 3))
        ax.plot([], [], "x", color="gray",
                label="one-shot magnitude, BiP's start (v: off scale, value shown)")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("weights kept (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(name)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "experiments/results/bip")
