"""What pruning at initialisation costs: SynFlow (100 rounds) and GraSP on ResNet-20.

CIFAR shapes (32x32x3, 10 classes), synthetic data. Prints, in one run:

* wall time of ``pai.synflow`` with 100 rounds to 1 % density (scoring and pruning
  per round, one compiled score function) and of one-shot GraSP and SNIP on a sample of
  100 labelled examples (10 per class, Synaptic-Flow's default);
* peak memory of each compiled score function from XLA's memory analysis
  (arguments + outputs + temporaries), beside a plain gradient of the same loss on the
  same batch: GraSP's Hessian-vector product (double backprop) must stay within a
  small multiple of it, never a dense Hessian.

Run: python benchmarks/pai_cost.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (
    add_common_args,
    machine_info,
    print_machine,
    print_table,
    write_json,
)

from lotto_jax import masks, models, pai, scores, train


def _mib(analysis) -> float:
    if analysis is None:
        return float("nan")
    total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
             + analysis.temp_size_in_bytes)
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--density", type=float, default=0.01)
    add_common_args(parser)
    args = parser.parse_args()
    rounds = 10 if args.quick else 100
    info = machine_info()
    print_machine(info)

    module = models.build(args.model)
    variables = models.init(module, jax.random.key(0), (32, 32, 3))
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    n_params = models.count_params(params)
    apply = train.classifier(module)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(100, 32, 32, 3)).astype(np.float32))
    y = jnp.asarray(np.repeat(np.arange(10), 10).astype(np.int32))
    batches = [(x, y)]
    loss_fn = scores.cross_entropy(lambda p, xb: apply(p, model_state, xb, False)[0])
    mask = masks.init(params)

    def plain_grad(p):
        return jax.grad(lambda q: loss_fn(q, (x, y)))(p)

    fns = {
        "plain gradient (reference)": plain_grad,
        "snip": lambda p: scores.snip(loss_fn, p, mask, batches),
        "grasp": lambda p: scores.grasp(loss_fn, p, mask, batches),
        "synflow (one round)": lambda p: scores.synflow_scores(
            lambda q, s, xb: apply(q, s, xb, False)[0], p, mask, (32, 32, 3),
            model_state=model_state,
        ),
    }
    results, rows = {}, []
    for name, fn in fns.items():
        jitted = jax.jit(fn)
        compiled = jitted.lower(params).compile()
        t0 = time.perf_counter()
        jax.block_until_ready(jitted(params))  # includes nothing of compile: cached
        first = time.perf_counter() - t0
        times = []
        for _ in range(1 if args.quick else 3):
            t0 = time.perf_counter()
            jax.block_until_ready(jitted(params))
            times.append(time.perf_counter() - t0)
        results[name] = {"seconds": float(np.median(times)), "first_call_s": first,
                         "peak_mib": _mib(compiled.memory_analysis())}
    ref = results["plain gradient (reference)"]["peak_mib"]
    for name, r in results.items():
        rows.append([name, f"{r['seconds']:.3f}", f"{r['peak_mib']:.1f}",
                     f"{r['peak_mib'] / ref:.2f}x"])

    t0 = time.perf_counter()
    found = pai.synflow(
        lambda q, s, xb: apply(q, s, xb, False)[0], params, mask, (32, 32, 3),
        density=args.density, rounds=rounds, model_state=model_state,
    )
    jax.block_until_ready(found)
    synflow_s = time.perf_counter() - t0
    kept = masks.density(found)
    collapsed = pai.collapsed_layers(found)
    results["synflow_iterative"] = {"rounds": rounds, "seconds": synflow_s,
                                    "density": kept, "collapsed_layers": collapsed}
    rows.append([f"synflow, {rounds} rounds to {100 * args.density:g} %",
                 f"{synflow_s:.1f}", "-", "-"])

    print()
    print(f"{args.model}: {n_params:,} params, CIFAR shapes, sample of 100 examples")
    print_table(rows, ["score", "seconds", "peak MiB (XLA)", "vs plain gradient"])
    print(f"SynFlow final density {100 * kept:.3f} %, collapsed layers: {collapsed or 'none'}")
    write_json(args.json, {"machine": info, "model": args.model, "params": n_params,
                           "results": results})


if __name__ == "__main__":
    main()
