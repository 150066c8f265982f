"""Cost of masking: dense vs masked Adam steps of LeNet-300-100, batch 60.

Measured in one run, interleaved (A, B, ..., then ..., B, A), on synthetic
MNIST-shaped data (random images and labels, so it runs anywhere); see
BENCHMARKS.md for the figures.

Per-step jitted calls (a Python loop of steps, one ``block_until_ready`` per block):

* ``dense``: plain ``optax.adam(1.2e-3)`` step (``value_and_grad``,
  ``apply_updates``, params and optimizer state donated).
* ``masked (sparse.make_step)``: :func:`lotto_jax.sparse.make_step` with a random
  mask of density 20 %.
* breakdown: the dense step plus *one* piece of what the masked step adds
  (``+fwd mask``: the forward on ``masks.apply(params, mask)``; ``+grad mask``:
  ``where(mask, g, 0)``; ``+moment reset``: Adam's moments zeroed after the update
  with ``tree_map_params``; ``+update where``: ``where(mask, u, -p)``), and two
  candidate masked steps: without the gradient mask (redundant after the forward
  mask: ``where``'s gradient is 0 there), and with the moments zeroed *before* the
  update. For each, XLA's cost analysis (bytes accessed) and the buffer copies in
  the compiled step are printed too: deterministic, unlike timings.

The training path (``lax.scan`` over chunks of steps, data on device):

* ``chunk train_chunk``: :meth:`lotto_jax.train.Trainer.train_chunk` with an
  all-True and a 20 % mask, called repeatedly (what ``train.fit`` runs between
  evaluations).
* ``chunk dense``: the same scan (same batch indices, same ``lax.cond``, same
  optimizer and schedule) with no mask anywhere: the reference.
* ``chunk lean``: params masked and moments zeroed once per chunk, then only the
  gradient masked per step (a suggested cheaper masked chunk; checked to compute
  what ``train_chunk`` computes); the dense scan without ``lax.cond``; the dense
  scan with the batch indices given; the batch-index computation alone.

Goal (issue): masked/dense overhead <= 3 %. Run ``python benchmarks/step_overhead.py
[--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
import numpy as np
import optax
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

from lotto_jax import masks, models, prune, scores, sparse, train

BATCH = 60
LR = 1.2e-3
DENSITY = 0.2
NUM_TRAIN = 60_000
GOAL = 0.03


def _loss_fn(module):
    def loss_fn(params, batch):
        x, y = batch
        logits = module.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss_fn


def _zero_where(m, leaf):
    return jnp.where(m, leaf, jnp.zeros_like(leaf))


def _custom_step(loss_fn, *, fwd=False, grad=False, reset=None, where_update=False):
    """Dense Adam step plus the chosen pieces of the masked step; donated, jitted.

    ``reset``: ``None``, ``"post"`` (zero Adam's moments after the update, as
    :func:`lotto_jax.sparse.masked` does) or ``"pre"`` (zero the incoming moments).
    """
    tx = optax.adam(LR)

    def reset_moments(opt_state, mask):
        return optax.tree_utils.tree_map_params(
            tx, lambda leaf, m: _zero_where(m, leaf), opt_state, mask
        )

    def step(params, opt_state, mask, batch):
        def loss(p):
            return loss_fn(masks.apply(p, mask) if fwd else p, batch)

        value, grads = jax.value_and_grad(loss)(params)
        if grad:
            grads = jax.tree.map(lambda g, m: _zero_where(m, g), grads, mask)
        if reset == "pre":
            opt_state = reset_moments(opt_state, mask)
        updates, opt_state = tx.update(grads, opt_state, params)
        if reset == "post":
            opt_state = reset_moments(opt_state, mask)
        if where_update:
            updates = jax.tree.map(
                lambda u, p, m: jnp.where(m, u, -p).astype(u.dtype),
                updates,
                params,
                mask,
            )
        return optax.apply_updates(params, updates), opt_state, {"loss": value}

    jitted = jax.jit(step, donate_argnums=(0, 1))
    return jitted, tx.init


def _xla_cost(jitted, *args):
    """Bytes accessed (XLA's cost analysis) and the f32 arrays of >= 1000 elements
    that the compiled step copies (buffer copies XLA inserts, e.g. when an in-place
    update of a donated buffer would overwrite a value still to be read)."""
    compiled = jitted.lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    shapes = re.findall(r"= f32\[([0-9,]*)\]\{[^}]*\} copy\(", compiled.as_text())
    sizes = [math.prod(int(d) for d in sh.split(",")) for sh in shapes if sh]
    big = [n for n in sizes if n >= 1000]
    return {
        "bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
        "flops": float(cost.get("flops", float("nan"))),
        "big_copies": len(big),
        "copied_elements": sum(big),
    }


class _StepRunner:
    """Holds one variant's params and optimizer state across timed blocks."""

    def __init__(self, step, init, params, mask, batches, steps_per_block):
        self.step, self.mask, self.batches = step, mask, batches
        self.params = jax.tree.map(jnp.array, params)  # own copy: buffers get donated
        self.opt = init(self.params)
        self.n = steps_per_block
        self.i = 0

    def run(self, n):
        params, opt, mask, batches = self.params, self.opt, self.mask, self.batches
        k = len(batches)
        for _ in range(n):
            params, opt, _ = self.step(params, opt, mask, batches[self.i % k])
            self.i += 1
        jax.block_until_ready((params, opt))
        self.params, self.opt = params, opt

    def block(self) -> float:
        t0 = time.perf_counter()
        self.run(self.n)
        return time.perf_counter() - t0


def _scan_chunk(apply_fn, config, chunk, *, lean=False, cond=True, given_idx=False):
    """``train_chunk`` of :func:`lotto_jax.train.make_trainer`, rebuilt without masks.

    Same batch indices, ``lax.cond`` (unless ``cond=False``: a fixed-length scan),
    optimizer and schedule. ``lean=True`` is the suggested cheap masked chunk: the
    params are masked and the optimizer moments zeroed once per call, and each step
    only masks the gradient (enough to keep pruned weights and moments exactly 0
    for the trainer's sgd/adam/adamw with weight decay: zero grad, zero param and
    zero moments give a zero update and zero new moments). ``given_idx=True``
    takes the batch indices as an argument (one fixed ``[chunk, batch]`` array, so
    their cost is ~0) instead of computing the epoch permutations in the chunk.
    """
    c = config
    tx = train.optimizer(c)  # unwrapped: no masked() around it
    lr_fn = train.schedule(c)
    # the trainer's own batch-index computation (each epoch's permutation computed
    # once and cached by Trainer._orders), for an identical scan
    from lotto_jax.train import _epoch_orders

    ref = train.make_trainer(apply_fn, c, num_train=NUM_TRAIN, chunk=chunk)

    def chunk_indices(key, first):
        orders = ref._orders(key, int(first))
        return _epoch_orders(key, orders, jnp.int32(first), chunk, n=NUM_TRAIN,
                             b=c.batch_size, shuffle=c.shuffle)

    def one_step(state, mask, x, y, hold_lr):
        def loss_fn(params):
            logits, _ = apply_fn(params, state.model_state, x, True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        if lean:
            grads = jax.tree.map(lambda g, m: _zero_where(m, g), grads, mask)
        direction, opt_state = tx.update(grads, state.opt_state, state.params)
        lr = lr_fn(jnp.where(hold_lr >= 0, hold_lr, state.step))
        updates = jax.tree.map(lambda d: (-lr * d).astype(d.dtype), direction)
        params = optax.apply_updates(state.params, updates)
        return train.TrainState(
            state.step + 1, params, state.model_state, opt_state
        ), loss

    def train_chunk(state, mask, data_key, orders, x, y, hold_lr, n_active, idx=None):
        if lean:
            state = state.replace(
                params=masks.apply(state.params, mask),
                opt_state=optax.tree_utils.tree_map_params(
                    tx, lambda leaf, m: _zero_where(m, leaf), state.opt_state, mask
                ),
            )
        if idx is None:
            idx = _epoch_orders(
                data_key, orders, state.step, chunk, n=NUM_TRAIN, b=c.batch_size,
                shuffle=c.shuffle,
            )

        def body(carry, inp):
            i, batch_idx = inp
            st, total = carry
            if cond:
                st, loss = jax.lax.cond(
                    i < n_active,
                    lambda s: one_step(s, mask, x[batch_idx], y[batch_idx], hold_lr),
                    lambda s: (s, jnp.zeros((), jnp.float32)),
                    st,
                )
            else:
                st, loss = one_step(st, mask, x[batch_idx], y[batch_idx], hold_lr)
            return (st, total + loss.astype(jnp.float32)), None

        (state, total), _ = jax.lax.scan(
            body, (state, jnp.zeros((), jnp.float32)), (jnp.arange(chunk), idx)
        )
        return state, total / jnp.maximum(n_active, 1)

    jitted = jax.jit(train_chunk, donate_argnums=(0,))

    def init(params):
        return train.TrainState(jnp.asarray(0, jnp.int32), params, {}, tx.init(params))

    fixed_idx = chunk_indices(jax.random.key(0), 0) if given_idx else None

    def call(state, mask, data_key, x, y):
        n_active = jnp.clip(c.steps - state.step, 0, chunk)
        hold = jnp.asarray(-1, jnp.int32)
        orders = ref._orders(data_key, int(state.step))
        return jitted(state, mask, data_key, orders, x, y, hold, n_active, fixed_idx)

    return init, call, chunk_indices


class _ChunkRunner:
    """Holds one chunk variant's train state across timed blocks."""

    def __init__(self, call, state, calls_per_block):
        self.call, self.state, self.n = call, state, calls_per_block

    def run(self, calls):
        state = self.state
        for _ in range(calls):
            state, loss = self.call(state)
        jax.block_until_ready((state, loss))
        self.state = state

    def block(self) -> float:
        t0 = time.perf_counter()
        self.run(self.n)
        return time.perf_counter() - t0


class _IndexRunner:
    """Times the trainer's batch-index computation alone (one call per chunk)."""

    def __init__(self, epoch_orders, chunk, calls):
        self.fn = epoch_orders  # (key, step) -> [chunk, batch] indices
        self.chunk, self.n, self.step = chunk, calls, 0

    def block(self) -> float:
        t0 = time.perf_counter()
        for _ in range(self.n):
            out = self.fn(jax.random.key(2), self.step)
            self.step += self.chunk
        jax.block_until_ready(out)
        return time.perf_counter() - t0


def _lean_check(trainer, lean_init, lean_call, params, mask, data_key, x, y):
    """One chunk of train_chunk and of the lean chunk from the same state."""
    outs = []
    for init, call in ((trainer.init, trainer.train_chunk), (lean_init, lean_call)):
        st, _ = call(init(jax.tree.map(jnp.array, params)), mask, data_key, x, y)
        outs.append(st)
    lib, lean = outs
    diff = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(
            jax.tree.leaves(lib.params), jax.tree.leaves(lean.params), strict=True
        )
    )
    inner = lean.opt_state[0]  # ScaleByAdamState of the unwrapped adam
    nonzero = 0
    for tree in (lean.params, inner.mu, inner.nu):
        for v, m in zip(jax.tree.leaves(tree), jax.tree.leaves(mask), strict=True):
            nonzero += int(jnp.sum((~m) & (v != 0)))
    return {
        "max_abs_param_diff_after_one_chunk": diff,
        "pruned_nonzero_params_or_moments": nonzero,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per timed block of the per-step variants (default 200)",
    )
    parser.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="steps per train_chunk scan (default 500, the eval_every of "
        "experiments/lenet300_dense.sh)",
    )
    parser.add_argument(
        "--no-breakdown",
        action="store_true",
        help="only dense, masked and the two main chunk variants",
    )
    args = parser.parse_args(argv)
    q = args.quick
    repeats = args.repeats or (3 if q else 11)
    steps = args.steps or (50 if q else 200)
    chunk = args.chunk or (100 if q else 500)
    breakdown = not args.no_breakdown

    info = machine_info()
    print(
        f"== step_overhead: LeNet-300-100, batch {BATCH}, Adam {LR}, mask density {DENSITY}"
    )
    print_machine(info)
    print(f"jax.devices(): {jax.devices()}")
    print(
        f"repeats {repeats} (interleaved), per-step blocks of {steps} steps, chunk blocks of "
        f"{chunk} steps{'  (QUICK: smoke run, not a measurement)' if q else ''}"
    )

    module = models.build("lenet300")
    params = models.init(module, jax.random.key(0), models.input_shape("lenet300"))[
        "params"
    ]
    full_mask = masks.init(params)
    mask = prune.to_density(
        scores.random(params, key=jax.random.key(1)), full_mask, DENSITY
    )
    print(f"mask density (prunable): {float(masks.density(mask)):.4f}")
    params = masks.apply(params, mask)  # pruned weights start at 0, as after pruning

    rng = np.random.default_rng(0)
    n_batches = 100
    xs = rng.standard_normal((n_batches, BATCH, 28, 28, 1), dtype=np.float32)
    ys = rng.integers(0, 10, (n_batches, BATCH)).astype(np.int32)
    batches = [(jnp.asarray(xs[i]), jnp.asarray(ys[i])) for i in range(n_batches)]

    # (a), (b) and the breakdown: per-step jitted calls.
    loss_fn = _loss_fn(module)
    step_masked = sparse.make_step(loss_fn, optax.adam(LR))
    step_variants = {
        "dense": _custom_step(loss_fn),
        "masked (sparse.make_step)": (step_masked, step_masked.init),
    }
    if breakdown:
        step_variants |= {
            # dense + one piece of the masked step
            "+fwd mask": _custom_step(loss_fn, fwd=True),
            "+grad mask": _custom_step(loss_fn, grad=True),
            "+moment reset (after update)": _custom_step(loss_fn, reset="post"),
            "+update where(m, u, -p)": _custom_step(loss_fn, where_update=True),
            # the masked step with one piece changed
            "masked, no grad mask": _custom_step(
                loss_fn, fwd=True, reset="post", where_update=True
            ),
            "masked, moments reset before update": _custom_step(
                loss_fn, fwd=True, grad=True, reset="pre", where_update=True
            ),
        }
    blocks, block_steps, compile_s, xla = {}, {}, {}, {}
    for name, (step, init) in step_variants.items():
        t0 = (
            time.perf_counter()
        )  # compile (lower + compile, reused by the call) + 1 step
        xla[name] = _xla_cost(
            getattr(step, "jitted", step), params, init(params), mask, batches[0]
        )
        r = _StepRunner(step, init, params, mask, batches, steps)
        r.run(1)
        compile_s[name] = time.perf_counter() - t0
        r.run(steps // 2)  # warm-up
        blocks[name], block_steps[name] = r.block, steps

    # (c) the training path: chunks of steps in one lax.scan, data on device.
    config = train.TrainConfig(
        steps=2**30, batch_size=BATCH, optimizer="adam", lr=LR, eval_every=chunk
    )
    apply_fn = train.classifier(module)
    x_train = jnp.asarray(rng.standard_normal((NUM_TRAIN, 28, 28, 1), dtype=np.float32))
    y_train = jnp.asarray(rng.integers(0, 10, NUM_TRAIN).astype(np.int32))
    data_key = jax.random.key(2)
    trainer = train.make_trainer(apply_fn, config, num_train=NUM_TRAIN, chunk=chunk)
    dense_init, dense_call, epoch_orders = _scan_chunk(apply_fn, config, chunk)
    lean_init, lean_call, _ = _scan_chunk(apply_fn, config, chunk, lean=True)
    chunk_variants = {
        "chunk dense (same scan, no mask)": (dense_init, dense_call, full_mask),
        "chunk train_chunk, all-True mask": (
            trainer.init,
            trainer.train_chunk,
            full_mask,
        ),
    }
    if breakdown:
        chunk_variants |= {
            "chunk train_chunk, 20 % mask": (trainer.init, trainer.train_chunk, mask),
            "chunk lean, 20 % mask": (lean_init, lean_call, mask),
            "chunk dense, no lax.cond": (
                dense_init,
                _scan_chunk(apply_fn, config, chunk, cond=False)[1],
                full_mask,
            ),
            "chunk dense, batch indices given": (
                dense_init,
                _scan_chunk(apply_fn, config, chunk, given_idx=True)[1],
                full_mask,
            ),
        }
    for name, (init, call, m) in chunk_variants.items():
        r = _ChunkRunner(
            lambda s, call=call, m=m: call(s, m, data_key, x_train, y_train),
            init(jax.tree.map(jnp.array, params)),
            1,
        )
        t0 = time.perf_counter()
        r.run(1)
        compile_s[name] = time.perf_counter() - t0
        r.run(1)
        blocks[name], block_steps[name] = r.block, chunk
    if breakdown:
        name = "batch indices alone (_epoch_orders)"
        r = _IndexRunner(epoch_orders, chunk, 1)
        t0 = time.perf_counter()
        r.block()
        compile_s[name] = time.perf_counter() - t0
        blocks[name], block_steps[name] = r.block, chunk
    lean_check = (
        _lean_check(
            trainer, lean_init, lean_call, params, mask, data_key, x_train, y_train
        )
        if breakdown
        else None
    )

    t_start = time.perf_counter()
    wall_t, cpu_t = interleave(blocks, repeats)
    wall = time.perf_counter() - t_start

    stats = summarize(wall_t, cpu_t, block_steps)
    per_step_wall = {n: [t / block_steps[n] for t in ts] for n, ts in wall_t.items()}
    per_step_cpu = {n: [t / block_steps[n] for t in ts] for n, ts in cpu_t.items()}
    dname = "chunk dense (same scan, no mask)"
    pairs = {n: "dense" for n in step_variants if n != "dense"} | {
        n: dname for n in blocks if n.startswith(("chunk", "batch")) and n != dname
    }
    pairs["dense vs " + dname] = None  # the scan against the per-step loop
    overhead, overhead_cpu = {}, {}
    for name, ref in pairs.items():
        a, b = (dname, "dense") if ref is None else (name, ref)
        overhead[name] = statistics.median(paired_ratios(per_step_wall, a, b)) - 1
        overhead_cpu[name] = statistics.median(paired_ratios(per_step_cpu, a, b)) - 1

    idx_name = "batch indices alone (_epoch_orders)"
    rows = []
    for name, st in stats.items():
        if name == idx_name:  # not a training variant: its share of a chunk step
            rel = f"{100 * (1 + overhead[name]):.1f} % of ref"
            rel_cpu = f"{100 * (1 + overhead_cpu[name]):.1f} % of ref"
            rate = rng_ = "-"
        else:
            rel = f"{100 * overhead[name]:+.1f} %" if name in pairs else "(reference)"
            rel_cpu = (
                f"{100 * overhead_cpu[name]:+.1f} %" if name in pairs else "(reference)"
            )
            rate = f"{st['steps_per_s_median']:.0f}"
            rng_ = f"{st['steps_per_s_min']:.0f}-{st['steps_per_s_max']:.0f}"
        x = xla.get(name)
        xcols = (
            [
                f"{x['bytes_accessed'] / 1e6:.1f}",
                f"{x['big_copies']} ({x['copied_elements'] / 1e3:.0f}k)",
            ]
            if x
            else ["", ""]
        )
        rows.append(
            [
                name,
                rate,
                rng_,
                f"{st['ms_per_step_median']:.3f}",
                rel,
                f"{st['cpu_ms_per_step_median']:.3f}",
                rel_cpu,
                *xcols,
                f"{compile_s[name]:.2f}",
            ]
        )
    print()
    print_table(
        rows,
        [
            "variant",
            "steps/s",
            "range",
            "ms/step",
            "time vs ref",
            "cpu ms/step",
            "cpu vs ref",
            "XLA MB/step",
            "copies (elements)",
            "1st call s",
        ],
    )
    print(
        "vs ref: median over the repeats of the paired per-step time ratio, minus 1; "
        f"ref = 'dense' for the per-step rows, {dname!r} for the chunk rows."
    )
    print(
        "cpu: process CPU seconds (all threads), steadier than wall time on a loaded "
        "machine. XLA MB/step: 'bytes accessed' of XLA's cost analysis of the compiled "
        "step; copies: f32 buffer copies (>= 1000 elements) in it. 1st call: compile + "
        "first run."
    )
    mname = "masked (sparse.make_step)"
    ov, ov_cpu = overhead[mname], overhead_cpu[mname]
    print(
        f"\n(a) vs (b) masked step overhead: {100 * ov:+.1f} % wall, {100 * ov_cpu:+.1f} % cpu "
        f"(goal <= {100 * GOAL:.0f} %: {'MET' if ov <= GOAL else 'NOT MET'})"
    )
    cname = "chunk train_chunk, all-True mask"
    print(
        f"(c) train_chunk: {stats[cname]['steps_per_s_median']:.0f} steps/s; vs the same scan "
        f"unmasked: {100 * overhead[cname]:+.1f} % wall, {100 * overhead_cpu[cname]:+.1f} % cpu"
    )
    sname = "dense vs " + dname
    print(
        f"scan (chunk dense) vs per-step loop (dense): {100 * overhead[sname]:+.1f} % wall, "
        f"{100 * overhead_cpu[sname]:+.1f} % cpu per step"
    )
    if lean_check:
        print(
            f"lean chunk vs train_chunk after one chunk (20 % mask): max |params diff| "
            f"{lean_check['max_abs_param_diff_after_one_chunk']:.2e}; pruned entries "
            f"non-zero in lean params/moments: {lean_check['pruned_nonzero_params_or_moments']}"
        )
    print(
        f"timed section: {wall:.1f} s; load avg after: "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    write_json(
        args.json,
        {
            "benchmark": "step_overhead",
            "machine": info,
            "settings": {
                "batch": BATCH,
                "lr": LR,
                "density": DENSITY,
                "repeats": repeats,
                "steps_per_block": steps,
                "chunk": chunk,
                "quick": q,
            },
            "variants": stats,
            "reference_of": pairs,
            "overhead_wall_median_paired": overhead,
            "overhead_cpu_median_paired": overhead_cpu,
            "first_call_seconds": compile_s,
            "xla_per_step": xla,
            "lean_chunk_check": lean_check,
            "goal_overhead": GOAL,
            "goal_met": ov <= GOAL,
            "load_average_after": os.getloadavg(),
        },
    )


if __name__ == "__main__":
    main()
