"""Accuracy vs parameters and vs inference time of the tickets of experiments/structured.sh.

For every IMP round and PaI variant of the runs under DIR (default
experiments/results/structured): the final test accuracy (mean ± std over the
replicates), the parameters of replicate 0's ticket after compaction
(:func:`lotto_jax.export.compact`: pruned units and blocks, and units unstructured
pruning left dead, are gone), and the inference time of that compacted network at
batch 256 and batch 1 against the dense network of round 0, timed interleaved in one
run per model (median per-repeat ratio, benchmarks/inference.py's calibrated blocks).
Unstructured tickets are also timed as sparse matrices
(:func:`lotto_jax.export.sparse_apply`, BCSR) where the model supports it.

Writes DIR/speed.json and DIR/figures/{accuracy_vs_params,accuracy_vs_time}.png
(parameters remaining: the kept entries; time: the compacted network's).
Needs the checkpoints (run the recipe first; they are not committed).
Usage: python experiments/structured_speed.py [DIR] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import interleave, machine_info, paired_ratios  # noqa: E402
from inference import _calibrated  # noqa: E402

from lotto_jax import export, models  # noqa: E402
from lotto_jax.runs.store import RunStore  # noqa: E402

BATCHES = (256, 1)
MODELS = {"resmlp": ("resmlp_weight", "resmlp_neuron", "resmlp_layer", "resmlp_pai_layer"),
          "lenet300": ("lenet300_weight", "lenet300_neuron")}


def _units(path: str) -> list[tuple[str, str]]:
    """``[(label, unit prefix)]`` of an IMP run (its rounds) or a directory of PaI
    runs (each run's method variant)."""
    if os.path.exists(os.path.join(path, "driver.json")):
        rounds = sorted(d for d in os.listdir(path) if d.startswith("round_")
                        and os.path.exists(os.path.join(path, d, "metrics.json")))
        return [(f"round {int(d[6:])}", d) for d in rounds]
    out = []
    for run in sorted(os.listdir(path)):
        variants = os.path.join(path, run, "variants")
        method = json.load(open(os.path.join(path, run, "results.json")))["method"]
        if os.path.exists(os.path.join(variants, method, "metrics.json")):
            out.append((run, os.path.join(run, "variants", method)))
    return out


def _ticket(store: RunStore, prefix: str):
    final = store.restore(f"{prefix}/final")
    mask = store.restore(f"{prefix}/mask")
    first = lambda t: jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[0]), t)  # noqa: E731
    return first(final["params"]), jax.tree.map(lambda m: m.astype(bool), first(mask))


def _accuracy(metrics: dict) -> tuple[float, float]:
    acc = np.asarray(metrics["curve"][-1]["test_accuracy"], float)
    return float(acc.mean()), float(acc.std())


def measure(root: str, model: str, repeats: int) -> list[dict]:
    module = models.build(model)
    rows, nets = [], {}
    for run in MODELS[model]:
        path = os.path.join(root, run)
        if not os.path.isdir(path):
            continue
        for label, prefix in _units(path):
            base = path if prefix.startswith("round_") else os.path.join(
                path, prefix.split("/variants/")[0])
            unit = prefix if prefix.startswith("round_") else "variants/" + prefix.split(
                "/variants/")[1]
            store = RunStore(base)
            params, mask = _ticket(store, unit)
            c = export.compact(module, params, mask)
            mean, std = _accuracy(json.load(open(os.path.join(base, unit, "metrics.json"))))
            key = f"{run}/{label}"
            rows.append({"run": run, "ticket": label, "test_accuracy": mean,
                         "test_accuracy_std": std, "params_after": c.report["params_after"],
                         "params_before": c.report["params_before"],
                         "kept_weights": c.report["kept_before"]})
            nets[key] = (c.module, c.params, params, mask)
            if key == f"{MODELS[model][0]}/round 0":
                nets["dense"] = (module, params, params, mask)
    apply = jax.jit(lambda m, p, x: m.apply({"params": p}, x), static_argnums=0)
    sp_apply = jax.jit(export.sparse_apply, static_argnums=0)
    first = nets["dense"][1]["input" if "input" in nets["dense"][1] else "Dense_0"]["kernel"]
    for batch in BATCHES:
        x = jax.random.normal(jax.random.key(1), (batch, first.shape[0]))
        blocks = {}
        for key, (mod, p, dense_p, mask) in nets.items():
            blocks[key] = _calibrated(apply, (mod, p, x), quick=False)
            if "_weight/" in key:
                try:
                    sp = export.to_sparse(dense_p, mask)
                    blocks[f"{key} sparse"] = _calibrated(sp_apply, (module, sp, x), quick=False)
                except (ValueError, NotImplementedError):
                    pass
        wall, _ = interleave(blocks, repeats)
        dense_us = 1e6 * statistics.median(wall["dense"])
        for row in rows:
            key = f"{row['run']}/{row['ticket']}"
            r = paired_ratios(wall, "dense", key)
            row[f"speedup_b{batch}"] = statistics.median(r)
            row[f"speedup_b{batch}_range"] = [min(r), max(r)]
            row[f"us_b{batch}"] = 1e6 * statistics.median(wall[key])
            if f"{key} sparse" in wall:
                row[f"sparse_speedup_b{batch}"] = statistics.median(
                    paired_ratios(wall, "dense", f"{key} sparse"))
        print(f"{model} batch {batch}: dense {dense_us:.0f} us per call")
    return rows


def plot(results: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    for xkey, xlabel, name in (("kept_weights", "parameters remaining (kept entries, log)",
                                "accuracy_vs_params"),
                               ("us_b256", "inference time per batch of 256, µs (log)",
                                "accuracy_vs_time")):
        fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2))
        for ax, (model, rows) in zip(np.atleast_1d(axes), results.items(), strict=True):
            for run in dict.fromkeys(r["run"] for r in rows):
                pts = [r for r in rows if r["run"] == run]
                xs = [r[xkey] for r in pts]
                ys = [100 * r["test_accuracy"] for r in pts]
                es = [100 * r["test_accuracy_std"] for r in pts]
                style = "s" if "pai" in run else "o-"
                ax.errorbar(xs, ys, yerr=es, fmt=style, capsize=2, label=run)
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("final test accuracy, % (mean ± std, 3 seeds)")
            ax.set_title(model)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"{name}.png"), dpi=120)
        plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default=os.path.join(HERE, "results", "structured"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw the figures from DIR/speed.json")
    args = parser.parse_args(argv)
    if args.plot_only:
        with open(os.path.join(args.dir, "speed.json")) as f:
            results = json.load(f)["models"]
    else:
        results = {m: measure(args.dir, m, args.repeats) for m in MODELS
                   if os.path.isdir(os.path.join(args.dir, MODELS[m][0]))}
        with open(os.path.join(args.dir, "speed.json"), "w") as f:
            json.dump({"machine": machine_info(), "repeats": args.repeats, "models": results},
                      f, indent=2)
    plot(results, os.path.join(args.dir, "figures"))
    for model, rows in results.items():
        print(f"\n{model}")
        for r in rows:
            sp = r.get("sparse_speedup_b1")
            print(f"  {r['run']:18s} {r['ticket']:12s} acc {100 * r['test_accuracy']:5.1f} "
                  f"± {100 * r['test_accuracy_std']:.1f}  params {r['params_after']:>8,}  "
                  f"x{r['speedup_b256']:.2f} @256  x{r['speedup_b1']:.2f} @1"
                  + (f"  sparse x{sp:.2f} @1" if sp else ""))
    return results


if __name__ == "__main__":
    main()
