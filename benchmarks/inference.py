"""Inference latency of sparse tickets: dense vs masked vs compacted vs sparse kernels.

LeNet-300-100 and the residual MLP (``resmlp``: 8 blocks, width 128, hidden 128) on
MNIST-sized inputs (784 features), batch 1 and 256, jitted forward passes, each call
blocked on (latency, not pipelined throughput; a block's figure is its median call). Variants, all timed interleaved in
one run per (model, batch), as speed-ups over the dense network (median of the
per-repeat ratios, with their range):

* ``floor``: a jitted ``x + 1`` on the same input: the cost of one call (dispatch
  and synchronisation), below which no variant can go.
* ``masked``: the dense network on masked weights (what a mask on dense weights
  gives: dense speed).
* ``compact``: :func:`lotto_jax.export.compact` of the unstructured ticket (only
  the units pruning left dead go).
* ``sparse``: :func:`lotto_jax.export.sparse_apply` on :func:`lotto_jax.export.to_sparse`
  kernels (the default format); at 2 % on LeNet-300-100 all three formats
  (``bcoo``, ``bcsr``, ``gather``): the measurement behind
  :data:`lotto_jax.export.DEFAULT_FORMAT`.
* ``neurons``: a structured ticket, compacted: the fraction ``d`` of every unit
  group's units kept (largest L2 norm of their incoming kernel slice; LeNet's hidden
  neurons, ResMLP's block-inner neurons: its residual stream, input and output
  layers stay whole).

Unstructured tickets are one-shot layerwise magnitude pruning of a random init (every
kernel at the density) at 50, 20, 10, 5, 2, 1 and 0.5 % (not trained IMP tickets: the
time does not depend on which weights are kept, only on how many per layer and, for
compaction, how many units die; global pruning of ResMLP's init would empty its
``fc2`` kernels first, which start scaled by 1/sqrt(8)). Also: training steps/s of the 10 % neuron ticket of LeNet-300-100,
compacted vs its masked full-size form (Adam, batch 60, synthetic data).

Goals (issue 13): a compacted structured ticket with 10 % of the units >= 5x faster
than dense; an unstructured ticket at <= 2 % density faster than dense at batch 1.
Run ``python benchmarks/inference.py [--quick] [--json PATH]``.
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
    write_json,
)

from lotto_jax import _topology, export, masks, models, prune, scores, train

DENSITIES = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005)
BATCHES = (1, 256)
INPUT = (784,)
TARGET_S = 0.03  # seconds per timed block


def unstructured(params, density: float):
    """Layerwise magnitude pruning: every kernel keeps ``density`` of its weights."""
    return prune.to_density(scores.magnitude(params), masks.init(params), density,
                            scope="layerwise")


def neurons(module, params, keep: float):
    """Keeps ``keep`` of every unit group's units (largest incoming L2 norm; at least
    one): the other units' kernel slices and biases are masked."""
    flat = {masks.path_str(p): np.ones(np.shape(x), bool)
            for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    values = {masks.path_str(p): np.asarray(x)
              for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    for g in _topology.topology(module, params).units:
        kernel = next(s for s in g.members if s.path.endswith("/kernel"))
        w = np.moveaxis(values[kernel.path], kernel.axis, 0).reshape(g.size, -1)
        drop = np.argsort(-np.linalg.norm(w, axis=1), kind="stable")[max(1, round(keep * g.size)):]
        for s in g.members:
            np.moveaxis(flat[s.path], s.axis, 0)[drop] = False
    return jax.tree.unflatten(jax.tree.structure(params),
                              [jnp.asarray(flat[masks.path_str(p)]) for p, _ in
                               jax.tree_util.tree_flatten_with_path(params)[0]])


def _block(fn, args, n: int):
    """A block of ``n`` blocked calls; its figure is the median call (seconds): on
    the shared machine a call that loses its core is an outlier, not the latency."""
    def run():
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)
    return run


def _calibrated(fn, args, quick: bool):
    jax.block_until_ready(fn(*args))  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    one = max(time.perf_counter() - t0, 1e-6)
    n = max(2, min(300, round((TARGET_S / 4 if quick else TARGET_S) / one)))
    return _block(fn, args, n)


def variants(name: str, module, params, batch: int, quick: bool):
    """``{variant: block}`` and ``{variant: params after}`` of one model and batch."""
    x = jax.random.normal(jax.random.key(1), (batch, *INPUT))
    apply = jax.jit(lambda m, p, x: m.apply({"params": p}, x), static_argnums=0)
    sp_apply = jax.jit(export.sparse_apply, static_argnums=0)
    blocks = {"dense": _calibrated(apply, (module, params, x), quick),
              "floor": _calibrated(jax.jit(lambda x: x + 1), (x,), quick)}
    sizes = {"dense": models.count_params(params)}
    for d in DENSITIES:
        mask = unstructured(params, d)
        masked = masks.apply(params, mask)
        blocks[f"masked {d}"] = _calibrated(apply, (module, masked, x), quick)
        c = export.compact(module, params, mask)
        blocks[f"compact {d}"] = _calibrated(apply, (c.module, c.params, x), quick)
        sizes[f"compact {d}"] = c.report["params_after"]
        sizes[f"masked {d}"] = sizes[f"sparse {d}"] = c.report["kept_before"]
        formats = export.FORMATS if (name == "lenet300" and d == 0.02) else ()
        for fmt in (export.DEFAULT_FORMAT, *[f for f in formats if f != export.DEFAULT_FORMAT]):
            label = f"sparse {d}" if fmt == export.DEFAULT_FORMAT else f"{fmt} {d}"
            sp = export.to_sparse(params, mask, format=fmt)
            blocks[label] = _calibrated(sp_apply, (module, sp, x), quick)
        s = export.compact(module, params, neurons(module, params, d))
        blocks[f"neurons {d}"] = _calibrated(apply, (s.module, s.params, x), quick)
        sizes[f"neurons {d}"] = s.report["params_after"]
    return blocks, sizes


def training(quick: bool, repeats: int) -> dict:
    """Steps/s of LeNet-300-100's 10 % neuron ticket: masked full size vs compacted."""
    n_train, block = 6000, (50 if quick else 200)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((n_train, *INPUT), np.float32))
    y = jnp.asarray(rng.integers(0, 10, n_train), jnp.int32)
    module = models.build("lenet300")
    params = models.init(module, jax.random.key(0), INPUT)["params"]
    mask = neurons(module, params, 0.1)
    c = export.compact(module, params, mask)
    cfg = train.TrainConfig(steps=block * (repeats + 2), batch_size=60, lr=1.2e-3,
                            eval_every=block)
    blocks, states = {}, {}
    for label, mod, p, m in (("masked", module, params, mask),
                             ("compacted", c.module, c.params, masks.init(c.params))):
        tr = train.make_trainer(train.classifier(mod), cfg, num_train=n_train, chunk=block)
        states[label] = tr.init(jax.tree.map(jnp.copy, p))

        def run(tr=tr, label=label, m=m):
            t0 = time.perf_counter()
            states[label], loss = tr.train_chunk(states[label], m, jax.random.key(1), x, y)
            jax.block_until_ready(loss)
            return time.perf_counter() - t0

        run()
        blocks[label] = run
    wall, _ = interleave(blocks, repeats)
    ratios = paired_ratios(wall, "masked", "compacted")
    return {"block_steps": block, "batch": 60,
            "steps_per_s": {k: block / statistics.median(v) for k, v in wall.items()},
            "speedup_median": statistics.median(ratios), "speedup_min": min(ratios),
            "speedup_max": max(ratios), "params": {"masked": models.count_params(params),
                                                   "compacted": c.report["params_after"]}}


def _x(ratios) -> str:
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    info = machine_info()
    print_machine(info)
    t_start = time.perf_counter()
    results: dict = {"machine": info, "repeats": repeats, "default_format":
                     export.DEFAULT_FORMAT, "runs": {}}
    for name in ("lenet300", "resmlp"):
        module = models.build(name)
        params = models.init(module, jax.random.key(0), INPUT)["params"]
        for batch in BATCHES:
            blocks, sizes = variants(name, module, params, batch, args.quick)
            wall, _ = interleave(blocks, repeats)
            speed = {k: paired_ratios(wall, "dense", k) for k in wall}  # > 1: faster
            dense_us = 1e6 * statistics.median(wall["dense"])
            floor_us = 1e6 * statistics.median(wall["floor"])
            print(f"\n{name}, batch {batch}: dense {dense_us:.0f} us per call "
                  f"({sizes['dense']:,} params), a jitted x + 1 {floor_us:.0f} us "
                  f"(the per-call floor); speed-up over dense, median (range) "
                  f"of {repeats} paired repeats; [params or kept weights]")
            rows = []
            for d in DENSITIES:
                rows.append([f"{100 * d:g} %"] + [
                    f"{_x(speed[f'{v} {d}'])} [{sizes[f'{v} {d}']:,}]"
                    for v in ("masked", "compact", "sparse", "neurons")])
            print_table(rows, ["density / units kept", "masked", "compact (unstructured)",
                               f"sparse ({export.DEFAULT_FORMAT})", "neurons, compacted"])
            formats = {k: _x(v) for k, v in speed.items()
                       if k.split()[0] in export.FORMATS}
            if formats:
                print(f"formats at 2 %: {formats} (sparse = {export.DEFAULT_FORMAT}: "
                      f"{_x(speed['sparse 0.02'])})")
            results["runs"][f"{name} batch {batch}"] = {
                "dense_us": dense_us, "floor_us": floor_us, "sizes": sizes,
                "us_per_call": {k: 1e6 * statistics.median(v) for k, v in wall.items()},
                "speedup": {k: {"median": statistics.median(v), "min": min(v),
                                "max": max(v)} for k, v in speed.items()},
                "formats_at_2pc": formats}
    results["training"] = tr = training(args.quick, repeats)
    print(f"\ntraining LeNet-300-100, 10 % neuron ticket, batch 60: masked "
          f"{tr['steps_per_s']['masked']:.0f} steps/s, compacted "
          f"{tr['steps_per_s']['compacted']:.0f} steps/s: {tr['speedup_median']:.2f}x "
          f"({tr['speedup_min']:.2f}-{tr['speedup_max']:.2f})")
    results["seconds"] = time.perf_counter() - t_start
    print(f"total {results['seconds']:.0f} s")
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
