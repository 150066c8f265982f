"""Cost of changing masks inside the compiled loop: DST vs static masked training.

LeNet-300-100, Adam 1.2e-3, density 10 % (ERK), on synthetic MNIST-shaped data
(random images and labels: it runs anywhere; the work per step is the same).
Every variant runs :meth:`lotto_jax.train.Trainer.train_chunk` over blocks of
``--block`` steps (default 1,000: 10 mask updates at ``update_every=100``), timed
interleaved in one run (A, B, ..., then ..., B, A):

* ``static (fixed mask)``: the plain trainer with a mask argument (no updater);
  the reference.
* ``static (updater)``: the same mask held by ``dst.static`` in the state: the cost
  of the never-taken ``lax.cond`` branch and of carrying the mask.
* ``set``, ``rigl``, ``gmp``: updates every 100 steps (RigL's ``end`` and GMP's
  pruning window cover the whole timed run, so every block pays its 10 updates).

Also timed alone: one update (``jax.jit(updater.update)`` on LeNet's params), and
the amortised overhead it predicts, ``t_update / (update_every * t_step)``.

Goal (issue 12): amortised overhead <= 5 %. Run ``python benchmarks/dst_overhead.py
[--quick] [--batch 100] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
import numpy as np
from _common import (
    add_common_args,
    interleave,
    machine_info,
    paired_ratios,
    print_machine,
    print_table,
    summarize,
    write_json,
)

from lotto_jax import dst, models, train

NUM_TRAIN = 60_000
DENSITY = 0.1
GOAL = 0.05


def _updaters(every: int, end: int) -> dict[str, dst.Updater | None]:
    return {
        "static (fixed mask)": None,
        "static (updater)": dst.static(DENSITY),
        "set": dst.set(DENSITY, update_every=every),
        "rigl": dst.rigl(DENSITY, end=end, update_every=every),
        "gmp": dst.gmp(DENSITY, end=end, update_every=every, distribution="erk"),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--batch", type=int, default=60, help="batch size (RigL's MNIST: 100)")
    parser.add_argument("--block", type=int, default=None, help="steps per timed block")
    parser.add_argument("--update-every", type=int, default=100)
    args = parser.parse_args(argv)
    q = args.quick
    repeats = args.repeats or (3 if q else 7)
    block = args.block or (200 if q else 1000)
    every = args.update_every
    info = machine_info()
    print_machine(info)

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((NUM_TRAIN, 28, 28, 1), np.float32))
    y = jnp.asarray(rng.integers(0, 10, NUM_TRAIN), jnp.int32)
    module = models.build("lenet300")
    params = models.init(module, jax.random.key(0), (28, 28, 1))["params"]
    total = block * (repeats + 2)
    cfg = train.TrainConfig(steps=total + block, batch_size=args.batch, lr=1.2e-3,
                            eval_every=block)
    data_key = jax.random.key(1)
    mask = dst.static(DENSITY).initial_mask(params, jax.random.key(2))

    blocks, states, update_ms = {}, {}, {}
    for name, u in _updaters(every, total + block).items():
        tr = train.make_trainer(train.classifier(module), cfg, num_train=NUM_TRAIN,
                                chunk=block, updater=u)
        p = jax.tree.map(jnp.copy, params)
        states[name] = tr.init(p) if u is None else tr.init(
            p, mask=jax.tree.map(jnp.copy, mask), key=jax.random.key(3))  # chunks donate
        m = mask if u is None else None

        def run(tr=tr, name=name, m=m):
            t0 = time.perf_counter()
            states[name], loss = tr.train_chunk(states[name], m, data_key, x, y)
            jax.block_until_ready(loss)
            return time.perf_counter() - t0

        run()  # compile and warm up
        blocks[name] = run
        if u is not None and name != "static (updater)":
            upd = jax.jit(u.update)
            st = states[name]
            args_ = (st.params, st.dst.mask, st.params, jnp.int32(every), st.dst.inner)
            jax.block_until_ready(upd(*args_))
            ts = []
            for _ in range(5 if q else 20):
                t0 = time.perf_counter()
                jax.block_until_ready(upd(*args_))
                ts.append(time.perf_counter() - t0)
            update_ms[name] = 1e3 * statistics.median(ts)

    wall, cpu = interleave(blocks, repeats)
    stats = summarize(wall, cpu, block)
    ref = "static (fixed mask)"
    step_ms = stats[ref]["ms_per_step_median"]
    rows = []
    for name in blocks:
        r = paired_ratios(wall, name, ref)
        rc = paired_ratios(cpu, name, ref)
        stats[name]["overhead_wall_median"] = statistics.median(r) - 1
        stats[name]["overhead_cpu_median"] = statistics.median(rc) - 1
        pred = update_ms.get(name)
        stats[name]["update_ms"] = pred
        stats[name]["predicted_overhead"] = None if pred is None else pred / (every * step_ms)
        rows.append([
            name, f"{stats[name]['steps_per_s_median']:.0f}",
            f"{100 * (statistics.median(r) - 1):+.1f} %",
            f"{100 * (statistics.median(rc) - 1):+.1f} %",
            "-" if pred is None else f"{pred:.2f}",
            "-" if pred is None else f"{100 * pred / (every * step_ms):.1f} %",
        ])
    print(f"\nLeNet-300-100, batch {args.batch}, density {DENSITY:.0%} ERK, "
          f"updates every {every} steps, blocks of {block} steps, {repeats} repeats "
          f"(goal: amortised overhead <= {GOAL:.0%})")
    print_table(rows, ["variant", "steps/s", "overhead (wall)", "overhead (CPU)",
                       "one update (ms)", "update / 100 steps"])
    payload = {"machine": info, "batch": args.batch, "block": block, "repeats": repeats,
               "update_every": every, "density": DENSITY, "variants": stats}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
