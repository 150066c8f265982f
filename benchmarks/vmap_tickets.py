"""Many tickets in one compiled step: K LeNet-300-100 networks vmapped vs sequential.

For K = 1, 2, 4, 8 tickets (different params, masks and data orders), it times
``Trainer.train_chunk`` with ``replicates=True`` (one vmapped scan over K networks)
against K calls of the single-network chunk, interleaved in one run, and prints the
throughput (network-steps/s), the ratio vmapped / sequential, and the compiled
memory footprint (XLA's memory analysis: arguments + outputs + temporaries).
Goal (issue 6/6): K = 8 vmapped >= 2x the throughput of 8 sequential on 2 CPU cores.

Run: python benchmarks/vmap_tickets.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import (
    add_common_args,
    interleave,
    machine_info,
    print_machine,
    print_table,
    write_json,
)

from lotto_jax import masks, models, prune, scores, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,2,4,8", help="numbers of tickets")
    parser.add_argument("--density", type=float, default=0.2)
    add_common_args(parser)
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    chunk = 50 if args.quick else 200
    repeats = args.repeats or (3 if args.quick else 5)
    info = machine_info()
    print_machine(info)

    module = models.build("lenet300")
    cfg = train.TrainConfig(steps=10**9, batch_size=60, lr=1.2e-3, eval_every=chunk)
    n = 60_000
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, 28, 28, 1)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, n).astype(np.int32))
    trainer = train.make_trainer(train.classifier(module), cfg, num_train=n)

    def ticket(i):
        params = models.init(module, jax.random.key(i), (28, 28, 1))["params"]
        mask = prune.to_density(
            scores.random(params, key=jax.random.key(100 + i)), masks.init(params),
            args.density, scope="layerwise",
        )
        return trainer.init(params), mask, jax.random.key(1000 + i)

    stack = lambda *xs: jnp.stack(xs)  # noqa: E731
    def measure(k):
        tickets = [ticket(i) for i in range(k)]
        seq_states = [t[0] for t in tickets]
        vm_state = jax.tree.map(stack, *[t[0] for t in tickets])
        vm_mask = jax.tree.map(stack, *[t[1] for t in tickets])
        vm_keys = jnp.stack([t[2] for t in tickets])
        state_box = {"seq": seq_states, "vm": vm_state}

        def run_seq():
            import time

            t0 = time.perf_counter()
            out = []
            for st, (_, mask, key) in zip(state_box["seq"], tickets, strict=True):
                st, _ = trainer.train_chunk(st, mask, key, x, y)
                out.append(st)
            jax.block_until_ready(out)
            state_box["seq"] = out
            return time.perf_counter() - t0

        def run_vm():
            import time

            t0 = time.perf_counter()
            st, _ = trainer.train_chunk(
                state_box["vm"], vm_mask, vm_keys, x, y, replicates=True
            )
            jax.block_until_ready(st)
            state_box["vm"] = st
            return time.perf_counter() - t0

        run_seq(), run_vm()  # compile and warm up
        wall, _ = interleave({"sequential": run_seq, "vmapped": run_vm}, repeats)
        seq_rate = [k * chunk / t for t in wall["sequential"]]
        vm_rate = [k * chunk / t for t in wall["vmapped"]]
        ratio = float(np.median([a / b for a, b in zip(wall["sequential"], wall["vmapped"], strict=True)]))
        vm_orders = trainer._orders(vm_keys, 0, replicates=True)
        mem = trainer._train_chunk_vmapped.lower(
            vm_state, vm_mask, vm_keys, vm_orders, x, y, jnp.int32(-1), jnp.int32(chunk)
        ).compile().memory_analysis()
        orders = trainer._orders(tickets[0][2], 0)
        mem_single = trainer._train_chunk.lower(
            seq_states[0], tickets[0][1], tickets[0][2], orders, x, y, jnp.int32(-1),
            jnp.int32(chunk),
        ).compile().memory_analysis()

        def footprint(m):
            if m is None:
                return float("nan")
            data_bytes = x.nbytes + y.nbytes  # the shared dataset and orders are not per ticket
            total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            return (total - data_bytes) / 2**20  # the shared dataset is not per ticket

        return {
            "sequential_steps_per_s": float(np.median(seq_rate)),
            "vmapped_steps_per_s": float(np.median(vm_rate)),
            "vmapped_over_sequential": ratio,
            "vmapped_mib": footprint(mem),
            "single_mib_times_k": k * footprint(mem_single),
            "ratio": ratio,
        }

    rows, results = [], {}
    for k in ks:
        r = results[k] = measure(k)
        ratio = r.pop("ratio")
        rows.append([
            str(k), f"{r['sequential_steps_per_s']:.0f}", f"{r['vmapped_steps_per_s']:.0f}",
            f"{ratio:.2f}x", f"{r['vmapped_mib']:.1f}", f"{r['single_mib_times_k']:.1f}",
        ])
    print()
    print(f"LeNet-300-100, batch 60, Adam, density {args.density}, chunk {chunk} steps, "
          f"median of {repeats} interleaved repeats; network-steps/s")
    print_table(rows, ["K", "sequential", "vmapped", "vmapped/sequential",
                       "vmapped MiB", "K x single MiB"])
    write_json(args.json, {"machine": info, "chunk": chunk, "results": results})


if __name__ == "__main__":
    main()
