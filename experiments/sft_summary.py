"""Mean ± std over the seeds of experiments/sft.sh: summary.json and markdown tables.

Usage: python experiments/sft_summary.py experiments/results/sft
"""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np


def _ms(values):
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}


def _fmt(m, scale=100.0, digits=2):
    return f"{scale * m['mean']:.{digits}f} ± {scale * m['std']:.{digits}f}"


def summarize(runs):
    first = runs[0]
    out = {"seeds": len(runs), "num_weights": first["num_weights"],
           "pretrained_A": _ms([r["pretrained"]["A"] for r in runs]),
           "finetuned_B": _ms([r["finetuned"]["B"]["accuracy"] for r in runs]),
           "finetuned_B_acc_A": _ms([r["finetuned"]["B"]["accuracy_A"] for r in runs]),
           "sparse": [], "compose": [], "graft": []}
    for kind in ("ltsft", "random"):
        for k in first["ks"]:
            rows = [next(x for x in r["sparse"] if x["kind"] == kind and x["task"] == "B"
                         and x["k"] == k) for r in runs]
            out["sparse"].append({"kind": kind, "k": k, "fraction": rows[0]["fraction"],
                                  "accuracy": _ms([x["accuracy"] for x in rows]),
                                  "accuracy_A": _ms([x["accuracy_A"] for x in rows])})
    for i, k in enumerate(first["ks"]):
        rows = [r["compose"][i] for r in runs]
        out["compose"].append({"k": k, **{
            f"{f}_{h}": _ms([x[f][j] for x in rows]) for f in ("own", "composed",
                                                                "interference")
            for j, h in enumerate(("B1", "B2"))}, "composed_B": _ms(
                [x["composed_B"] for x in rows]), "overlap": _ms([x["overlap"] for x in rows])})
    full = [r["compose_full"] for r in runs]
    out["compose_full"] = {**{f"{f}_{h}": _ms([x[f][j] for x in full])
                              for f in ("own", "composed", "interference")
                              for j, h in enumerate(("B1", "B2"))},
                           "composed_B": _ms([x["composed_B"] for x in full])}
    for i, g in enumerate(first["graft"]):
        rows = [r["graft"][i] for r in runs]
        out["graft"].append({"fraction": g["fraction"], "lr": g["lr"],
                             "region_fraction": _ms([x["region_fraction"] for x in rows]),
                             "accuracy": _ms([x["accuracy"] for x in rows]),
                             "base_accuracy": _ms([x["base_accuracy"] for x in rows]),
                             "recovered": _ms([x["recovered"] or 0.0 for x in rows])})
    return out


def tables(s):
    lines = [f"full fine-tuning on B: {_fmt(s['finetuned_B'])} % (task A after: "
             f"{_fmt(s['finetuned_B_acc_A'])} %); pretrained on A: {_fmt(s['pretrained_A'])} %",
             "", "| % weights fine-tuned | LT-SFT acc B | random-K acc B | LT-SFT acc A | "
             "random-K acc A |", "|---|---|---|---|---|"]
    lt = [x for x in s["sparse"] if x["kind"] == "ltsft"]
    rd = [x for x in s["sparse"] if x["kind"] == "random"]
    for a, b in zip(lt, rd, strict=True):
        lines.append(f"| {100 * a['fraction']:.2f} | {_fmt(a['accuracy'])} | "
                     f"{_fmt(b['accuracy'])} | {_fmt(a['accuracy_A'])} | "
                     f"{_fmt(b['accuracy_A'])} |")
    lines += ["", "| K | B1 own → composed | B2 own → composed | B (composed) | overlap |",
              "|---|---|---|---|---|"]
    for c in s["compose"]:
        lines.append(f"| {c['k']} | {_fmt(c['own_B1'])} → {_fmt(c['composed_B1'])} | "
                     f"{_fmt(c['own_B2'])} → {_fmt(c['composed_B2'])} | "
                     f"{_fmt(c['composed_B'])} | {c['overlap']['mean']:.0f} |")
    f = s["compose_full"]
    lines.append(f"| full FT | {_fmt(f['own_B1'])} → {_fmt(f['composed_B1'])} | "
                 f"{_fmt(f['own_B2'])} → {_fmt(f['composed_B2'])} | {_fmt(f['composed_B'])} "
                 "| - |")
    lines += ["", "| base patch | lr | region (% weights) | graft acc B | "
              "% of fine-tuned acc |", "|---|---|---|---|---|"]
    for g in s["graft"]:
        lines.append(f"| {100 * g['fraction']:g} % | {g['lr']:g} | "
                     f"{_fmt(g['region_fraction'], digits=3)} | {_fmt(g['accuracy'])} | "
                     f"{_fmt(g['recovered'], digits=1)} |")
    return "\n".join(lines)


def main(directory):
    paths = sorted(glob.glob(os.path.join(directory, "seed*", "results.json")))
    if not paths:
        raise SystemExit(f"{directory}: no seed*/results.json")
    runs = [json.load(open(p)) for p in paths]
    s = summarize(runs)
    with open(os.path.join(directory, "summary.json"), "w") as f:
        json.dump(s, f, indent=2)
    text = tables(s)
    with open(os.path.join(directory, "summary.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "experiments/results/sft")
