"""LeNet-300-100 training throughput: lotto_jax vs the same loop in plain PyTorch.

Measured in one run, interleaved (A, B, C, A, B, C, ...), on synthetic MNIST-shaped
data (60,000 random images and labels in memory, so it runs anywhere):

* ``torch dense``: ``nn.Sequential(784-300-100-10)``, Adam 1.2e-3, batch 60, a
  random permutation per epoch, ``opt.zero_grad(); loss.backward(); opt.step()``.
* ``torch masked``: the same plus the pruning mask multiplied into the weights
  (``p.data *= m``) after every step; open_lth's ``PrunedModel`` does the same
  multiplication before every forward, which costs the same.
* both with ``torch.set_num_threads(cores)`` and with 1 thread: on a loaded
  machine PyTorch's OpenMP threads wait for each other in every op, and the
  multi-threaded loop can be many times slower than the single-threaded one. The
  goal is checked against the faster torch variant.
* ``--torch-device cuda`` (on a GPU machine) runs the same torch loop on the GPU
  instead: model, optimizer state, data and masks on ``cuda``, one dense and one
  masked variant (thread counts only matter on the CPU), and
  ``torch.cuda.synchronize()`` before the clock is read at the end of every block.
  JAX runs on its default device (the GPU there).
* ``ours masked``: :func:`lotto_jax.train.make_trainer` with a random mask of
  density 20 %, ``Trainer.train_chunk`` called repeatedly as ``train.fit`` does
  between evaluations (``lax.scan`` over chunks of steps, data on device).

Ours runs 3,000 steps per timed block (by default); a torch variant runs as many,
unless its warm-up shows that would take more than ``--torch-block-s`` seconds (2.5):
then fewer (at least 50), so the run stays short on a loaded machine. Steps/s are
per step, so the blocks compare. The warm-up (JAX's compilation, torch's first
steps) is timed and reported apart. Torch uses as many threads as the machine has cores. If torch is not
importable the script says so and exits 0. On cuda the first torch warm-up holds
CUDA's start-up, so the per-step estimate for the block cap comes from a further,
synchronized run of 50 steps after the warm-up.

Goal (issue): ours >= 3x the steps/s of plain PyTorch. Run ``python
benchmarks/train_vs_torch.py [--quick] [--json PATH] [--torch-device cuda]``.
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

from lotto_jax import masks, models, prune, scores, train

BATCH = 60
LR = 1.2e-3
DENSITY = 0.2
NUM_TRAIN = 60_000
GOAL = 3.0


class _Timed:
    """``block(steps)``: a timed block that runs ``self.run(steps)``."""

    def block(self, steps):
        def run() -> float:
            t0 = time.perf_counter()
            self.run(steps)
            return time.perf_counter() - t0

        return run


class _TorchLoop(_Timed):
    """The plain PyTorch training loop, resumable across timed blocks."""

    def __init__(self, torch, x, y, *, masked, density, seed, threads, device="cpu"):
        nn = torch.nn
        self.torch, self.threads, self.device = torch, threads, device
        torch.manual_seed(seed)
        self.model = nn.Sequential(
            nn.Linear(784, 300),
            nn.ReLU(),
            nn.Linear(300, 100),
            nn.ReLU(),
            nn.Linear(100, 10),
        ).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.loss_fn = nn.CrossEntropyLoss()
        self.x, self.y = x, y
        self.gen = torch.Generator().manual_seed(seed)
        self.steps_per_epoch = x.shape[0] // BATCH
        self.step = 0
        self.perm = None
        self.masks = []
        if masked:  # random masks of the given density on the weight matrices
            for p in self.model.parameters():
                if p.ndim >= 2:
                    m = (torch.rand(p.shape, generator=self.gen) < density).to(
                        device=device, dtype=p.dtype
                    )
                    p.data *= m
                    self.masks.append((p, m))
        self.last_loss = float("nan")

    def run(self, steps):
        torch = self.torch
        if self.threads is not None:  # cpu only
            torch.set_num_threads(self.threads)
        model, opt, loss_fn, x, y = self.model, self.opt, self.loss_fn, self.x, self.y
        for _ in range(steps):
            i = self.step % self.steps_per_epoch
            if i == 0:
                self.perm = torch.randperm(x.shape[0], generator=self.gen).to(
                    self.device
                )
            idx = self.perm[i * BATCH : (i + 1) * BATCH]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if self.masks:
                with torch.no_grad():
                    for p, m in self.masks:
                        p.data *= m
            self.step += 1
        if self.device != "cpu":  # the block's clock is read after run() returns
            torch.cuda.synchronize()
        self.last_loss = loss.item()


class _OursLoop(_Timed):
    """``Trainer.train_chunk`` called repeatedly, as ``train.fit`` does."""

    def __init__(self, trainer, state, mask, data_key, x, y):
        self.trainer, self.state, self.mask = trainer, state, mask
        self.key, self.x, self.y = data_key, x, y
        self.last_loss = float("nan")

    def run(self, steps):
        chunk = self.trainer.chunk
        state, loss = self.state, None
        for _ in range(-(-steps // chunk)):
            state, loss = self.trainer.train_chunk(
                state, self.mask, self.key, self.x, self.y
            )
        jax.block_until_ready(state)
        self.state = state
        self.last_loss = float(loss)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per timed block (default 3000; a multiple of --chunk)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up steps per variant, timed apart (default 500)",
    )
    parser.add_argument(
        "--chunk",
        type=int,
        default=500,
        help="steps per train_chunk scan (500 = eval_every of "
        "experiments/lenet300_dense.sh)",
    )
    parser.add_argument(
        "--threads",
        default=f"{os.cpu_count()},1",
        help="torch intra-op thread counts to compare, comma-separated "
        "(default: the machine's cores, and 1)",
    )
    parser.add_argument(
        "--torch-block-s",
        type=float,
        default=2.5,
        help="cap on a torch block's expected seconds (fewer steps)",
    )
    parser.add_argument(
        "--torch-device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where torch runs its loop (cuda: one dense and one masked variant, "
        "--threads ignored)",
    )
    args = parser.parse_args(argv)
    q = args.quick
    repeats = args.repeats or (3 if q else 5)
    chunk = min(args.chunk, 100) if q else args.chunk
    steps = args.steps or (300 if q else 3000)
    steps = max(chunk, steps // chunk * chunk)
    warmup = args.warmup or (chunk if q else 500)
    device = args.torch_device
    thread_counts = list(dict.fromkeys(int(t) for t in str(args.threads).split(",")))
    if device != "cpu":
        thread_counts = [None]  # one torch variant per kind; threads matter on cpu only

    info = machine_info()
    print(
        f"== train_vs_torch: LeNet-300-100, batch {BATCH}, Adam {LR}, mask density {DENSITY}"
    )
    try:
        import torch
    except ImportError:
        print_machine(info)
        print(
            "torch is not importable: nothing to compare against. Install the CPU "
            "build with `.venv/bin/pip install torch==2.13.0` and run again."
        )
        return 0
    if device == "cuda" and not torch.cuda.is_available():
        print_machine(info)
        print(
            f"--torch-device cuda: torch {torch.__version__} sees no CUDA device "
            f"(torch.version.cuda = {torch.version.cuda})"
        )
        return 2
    info |= {
        "torch": torch.__version__,
        "torch_device": device,
        "torch_threads_compared": thread_counts,
        "torch_default_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
    }
    if device == "cuda":
        info |= {
            "torch_cuda_device": torch.cuda.get_device_name(0),
            "torch_cuda_version": torch.version.cuda,
            "torch_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
        }
    print_machine(info)
    print(f"jax.devices(): {jax.devices()}")
    print(
        f"repeats {repeats} (interleaved), {steps} steps per block, warm-up {warmup} "
        f"steps, train_chunk of {chunk} steps, torch on {device}"
        f"{'  (QUICK: smoke run, not a measurement)' if q else ''}"
    )

    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((NUM_TRAIN, 28, 28, 1), dtype=np.float32)
    y_np = rng.integers(0, 10, NUM_TRAIN).astype(np.int32)

    # PyTorch, data as tensors in memory on the torch device.
    x_t = torch.from_numpy(x_np.reshape(NUM_TRAIN, 784)).to(device)
    y_t = torch.from_numpy(y_np.astype(np.int64)).to(device)
    loops = {}
    for t in thread_counts:
        for kind in ("dense", "masked"):
            name = (
                f"torch {kind}, {t} thread{'s' * (t > 1)}"
                if t is not None
                else f"torch {kind} ({device})"
            )
            loops[name] = _TorchLoop(
                torch,
                x_t,
                y_t,
                masked=kind == "masked",
                density=DENSITY,
                seed=0,
                threads=t,
                device=device,
            )

    # Ours: the trainer fit() uses, built once, with a 20 % random mask.
    module = models.build("lenet300")
    params = models.init(module, jax.random.key(0), models.input_shape("lenet300"))[
        "params"
    ]
    mask = prune.to_density(
        scores.random(params, key=jax.random.key(1)), masks.init(params), DENSITY
    )
    config = train.TrainConfig(
        steps=2**30, batch_size=BATCH, optimizer="adam", lr=LR, eval_every=chunk
    )
    trainer = train.make_trainer(
        train.classifier(module), config, num_train=NUM_TRAIN, chunk=chunk
    )
    loops["ours masked (train_chunk)"] = _OursLoop(
        trainer,
        trainer.init(masks.apply(params, mask)),
        mask,
        jax.random.key(2),
        jnp.asarray(x_np),
        jnp.asarray(y_np),
    )

    ours = "ours masked (train_chunk)"
    warm, block_steps = {}, {}
    for name, loop in loops.items():
        n_warm = warmup if name == ours else min(warmup, 50)
        t0 = time.perf_counter()
        loop.run(n_warm)
        warm[name] = time.perf_counter() - t0
        block_steps[name] = steps
        if name != ours:  # cap a slow torch block at about --torch-block-s seconds
            per_step = warm[name] / n_warm
            if device != "cpu":  # the warm-up held CUDA's start-up: time 50 more steps
                t0 = time.perf_counter()
                loop.run(50)
                per_step = (time.perf_counter() - t0) / 50
            cap = max(50, int(args.torch_block_s / per_step) // 50 * 50)
            block_steps[name] = min(steps, cap)
        print(
            f"warm-up {name}: {warm[name]:.2f} s for {n_warm} steps"
            + (" (includes JAX compilation)" if name == ours else "")
            + f"; {block_steps[name]} steps per timed block"
        )

    t_start = time.perf_counter()
    wall_t, cpu_t = interleave(
        {n: lp.block(block_steps[n]) for n, lp in loops.items()}, repeats
    )
    wall = time.perf_counter() - t_start
    stats = summarize(wall_t, cpu_t, block_steps)

    per_step_wall = {n: [t / block_steps[n] for t in ts] for n, ts in wall_t.items()}
    per_step_cpu = {n: [t / block_steps[n] for t in ts] for n, ts in cpu_t.items()}
    refs = [n for n in loops if n != ours]
    # paired: per-step time(torch) / time(ours) in each repeat, then the median
    speedup = {
        r: statistics.median(paired_ratios(per_step_wall, r, ours)) for r in refs
    }
    speedup_cpu = {
        r: statistics.median(paired_ratios(per_step_cpu, r, ours)) for r in refs
    }
    best = {
        kind: min((r for r in refs if kind in r), key=lambda r: speedup[r])
        for kind in ("dense", "masked")
    }
    rows = []
    for name, st in stats.items():
        rows.append(
            [
                name,
                str(block_steps[name]),
                f"{st['steps_per_s_median']:.0f}",
                f"{st['steps_per_s_min']:.0f}-{st['steps_per_s_max']:.0f}",
                f"{st['ms_per_step_median']:.3f}",
                f"{st['cpu_ms_per_step_median']:.3f}",
                f"{speedup[name]:.2f}x" if name in speedup else "",
                f"{speedup_cpu[name]:.2f}x" if name in speedup_cpu else "",
                f"{loops[name].last_loss:.3f}",
            ]
        )
    print()
    print_table(
        rows,
        [
            "variant",
            "steps/block",
            "steps/s",
            "range",
            "ms/step",
            "cpu ms/step",
            "ours speed-up (wall)",
            "ours speed-up (cpu)",
            "last loss",
        ],
    )
    print(
        "speed-up: median over the repeats of the paired time ratio torch / ours. cpu: "
        "process CPU seconds (all threads). last loss: the last step's (torch) or the "
        "last chunk's mean (ours) training loss on the random labels."
    )
    goal_ratio = min(speedup[best["dense"]], speedup[best["masked"]])
    print(
        f"\nours vs the faster torch: {speedup[best['masked']]:.2f}x vs {best['masked']!r}, "
        f"{speedup[best['dense']]:.2f}x vs {best['dense']!r} "
        f"(goal >= {GOAL:.0f}x: {'MET' if goal_ratio >= GOAL else 'NOT MET'})"
    )
    print(
        f"timed section: {wall:.1f} s; load avg after: "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    write_json(
        args.json,
        {
            "benchmark": "train_vs_torch",
            "machine": info,
            "settings": {
                "batch": BATCH,
                "lr": LR,
                "density": DENSITY,
                "repeats": repeats,
                "steps_per_block": block_steps,
                "warmup_steps": warmup,
                "chunk": chunk,
                "torch_threads": thread_counts,
                "torch_device": device,
                "quick": q,
            },
            "variants": stats,
            "warmup_seconds": warm,
            "speedup_wall_median_paired": speedup,
            "speedup_cpu_median_paired": speedup_cpu,
            "goal_speedup": GOAL,
            "goal_compared_with": best,
            "goal_met": goal_ratio >= GOAL,
            "load_average_after": os.getloadavg(),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
