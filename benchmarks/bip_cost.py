"""Cost of a BiP step against a plain masked training step, and BiP's total cost
against IMP's.

LeNet-300-100 on synthetic MNIST-shaped data (random images and labels: the work per
step is the same as on MNIST), batch 60. Timed interleaved in one run, blocks of
``--block`` steps through :meth:`lotto_jax.train.Trainer.train_chunk`:

* ``masked``: the plain trainer (Adam) under a fixed 5 % mask: one IMP step;
* ``bip``: the BiP trainer (``lotto_jax.bip.apply`` + ``bip.alternating``) at keep
  5 %: its forward pass also ranks the 266,200 scores (a global top-k every step).

The ratio ``t(bip) / t(masked)`` is BiP's per-step overhead; with it, the cost of
one BiP ticket (``pretrain + bip_steps`` steps, the first at plain cost) is put
against IMP's ``(r + 1) × T`` steps to the same density (``T`` = 5,000, the
lenet300-5k-imp recipe: 20 % per layer and round).

Run ``python benchmarks/bip_cost.py [--quick] [--json PATH]``.
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
from _common import (
    add_common_args,
    interleave,
    machine_info,
    paired_ratios,
    print_machine,
    print_table,
    summarize,
    synthetic_lenet,
    write_json,
)

from lotto_jax import bip, masks, prune, train

NUM_TRAIN = 60_000
KEEP = 0.05
T = 5000  # steps per IMP round and per BiP phase (the recipes)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    block = 200 if args.quick else 1000
    info = machine_info()
    print_machine(info)
    x, y, module, params = synthetic_lenet(NUM_TRAIN)
    total = block * (repeats + 2)
    cfg = train.TrainConfig(steps=total, batch_size=60, lr=1.2e-3, eval_every=block)
    data_key = jax.random.key(1)
    mask = prune.to_density(jax.tree.map(jnp.abs, params), masks.init(params), KEEP)

    plain = train.make_trainer(train.classifier(module), cfg, num_train=NUM_TRAIN, chunk=block)
    bcfg = cfg.__class__(steps=total, batch_size=60, lr=0.1, optimizer="sgd", momentum=0.0,
                         schedule="cosine", eval_every=block)
    sgd = train.optimizer(bcfg.__class__(optimizer="sgd", momentum=0.9, weight_decay=1e-4))
    bip_tr = train.make_trainer(bip.apply(train.classifier(module), KEEP), bcfg,
                                num_train=NUM_TRAIN, chunk=block,
                                grad_transform=bip.alternating(sgd, sgd))
    joint = bip.init(params)
    states = {"masked": plain.init(jax.tree.map(jnp.copy, params)),
              "bip": bip_tr.init(jax.tree.map(jnp.copy, joint))}
    masks_ = {"masked": mask, "bip": masks.init(joint)}
    trainers = {"masked": plain, "bip": bip_tr}
    blocks = {}
    for name, tr in trainers.items():
        def run(tr=tr, name=name):
            t0 = time.perf_counter()
            states[name], loss = tr.train_chunk(states[name], masks_[name], data_key, x, y)
            jax.block_until_ready(loss)
            return time.perf_counter() - t0

        run()  # compile and warm up
        blocks[name] = run
    wall, cpu = interleave(blocks, repeats)
    stats = summarize(wall, cpu, block)
    ratio = statistics.median(paired_ratios(wall, "bip", "masked"))
    t_step = statistics.median(wall["masked"]) / block
    rows = []
    costs = {}
    for keep in (0.2, 0.1, 0.05, 0.02):
        # IMP: 20 % of each layer per round (output 10 %): the first round whose density
        # is at most keep, from lenet300-5k-imp's measured densities
        r = {0.2: 8, 0.1: 11, 0.05: 14, 0.02: 18}[keep]
        imp_steps = (r + 1) * T
        bip_equiv = T + T * ratio  # pretraining at plain cost, BiP at its own
        costs[str(keep)] = {"imp_round": r, "imp_steps": imp_steps,
                            "bip_steps": 2 * T, "bip_plain_step_equivalents": bip_equiv,
                            "speedup": imp_steps / bip_equiv}
        rows.append([f"{keep:g}", str(r), f"{imp_steps:,}", f"{bip_equiv:,.0f}",
                     f"{imp_steps / bip_equiv:.1f}x"])
    print(f"\nLeNet-300-100, batch 60, blocks of {block} steps, {repeats} repeats: masked "
          f"step {1e3 * t_step:.2f} ms; BiP step / masked step = {ratio:.2f}")
    print_table(rows, ["keep", "IMP round", "IMP steps", "BiP (plain-step equivalents)",
                       "IMP / BiP"])
    payload = {"machine": info, "block": block, "repeats": repeats, "keep": KEEP,
               "bip_over_masked": ratio, "masked_ms_per_step": 1e3 * t_step,
               "costs": costs, "variants": stats}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
