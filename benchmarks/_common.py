"""Shared helpers of the benchmarks: machine description, interleaved timing, output.

Every benchmark measures its variants side by side in one process, interleaved
(A, B, A, B, ... with the order reversed on every other repeat, so a linear drift of
the machine's speed cancels too), and reports per variant the median steps/s over
the repeats and, per pair, the median of the per-repeat ratios. Ratios taken within
one repeat are much steadier than absolute figures on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "Block",
    "add_common_args",
    "interleave",
    "machine_info",
    "paired_ratios",
    "print_machine",
    "print_table",
    "summarize",
    "synthetic_lenet",
    "timed",
    "write_json",
]

Block = Callable[[], float]
"""Runs one timed block of a variant (blocking on its results); returns its seconds."""


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Adds ``--quick``, ``--repeats`` and ``--json`` to a benchmark's parser."""
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: few steps and repeats"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats per variant (>= 5 for a real run)",
    )
    parser.add_argument(
        "--json", metavar="PATH", default=None, help="write the figures as JSON"
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU model, cores, load, devices and library versions, plus the command line."""
    import jax
    import jaxlib

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "load_average_1_5_15": load,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def print_machine(info: Mapping) -> None:
    print(f"command:  {info['command']}")
    print(
        f"cpu:      {info['cpu']} ({info['cores']} cores, {info['cores_usable']} usable)"
    )
    if info.get("load_average_1_5_15") is not None:
        la = ", ".join(f"{x:.2f}" for x in info["load_average_1_5_15"])
        print(f"load avg: {la} (1/5/15 min, before the run)")
    print(f"jax:      {info['jax']} (jaxlib {info['jaxlib']}), python {info['python']}")
    print(f"devices:  {info['devices']} ({info['device_kind']})")
    for key in sorted(set(info) - _PRINTED):
        print(f"{key + ':':<9} {info[key]}")


_PRINTED = {
    "command",
    "cpu",
    "cores",
    "cores_usable",
    "load_average_1_5_15",
    "jax",
    "jaxlib",
    "python",
    "devices",
    "device_kind",
    "backend",
    "time",
}


def interleave(
    blocks: Mapping[str, Block], repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Times every variant ``repeats`` times, interleaved.

    The order is ``A, B, C`` on even repeats and ``C, B, A`` on odd ones. Each block
    must block on its results (``jax.block_until_ready``).

    Returns:
      ``(wall, cpu)``: per variant, the wall-clock seconds of each block as the
      block reports them, and the process CPU seconds (all threads) spent in it.
      On a loaded machine the CPU time is the steadier measure of work.
    """
    names = list(blocks)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            c0 = time.process_time()
            wall[name].append(blocks[name]())
            cpu[name].append(time.process_time() - c0)
    return wall, cpu


def paired_ratios(
    times: Mapping[str, Sequence[float]], num: str, den: str
) -> list[float]:
    """Per-repeat ``time[num] / time[den]`` (> 1: ``num`` is slower)."""
    return [a / b for a, b in zip(times[num], times[den], strict=True)]


def summarize(
    wall: Mapping[str, Sequence[float]],
    cpu: Mapping[str, Sequence[float]],
    steps: Mapping[str, int] | int,
) -> dict:
    """Median, min and max steps/s per variant from block times, and CPU ms/step."""
    out = {}
    for name, ts in wall.items():
        n = steps if isinstance(steps, int) else steps[name]
        rates = [n / t for t in ts]
        out[name] = {
            "steps_per_block": n,
            "steps_per_s_median": statistics.median(rates),
            "steps_per_s_min": min(rates),
            "steps_per_s_max": max(rates),
            "ms_per_step_median": 1e3 * statistics.median(ts) / n,
            "cpu_ms_per_step_median": 1e3 * statistics.median(cpu[name]) / n,
            "block_seconds": list(ts),
            "block_cpu_seconds": list(cpu[name]),
        }
    return out


def print_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    """A plain aligned text table (also valid Markdown)."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def fmt(cells):
        return (
            "| "
            + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))
            + " |"
        )

    print(fmt(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(fmt(row))


def write_json(path: str | None, payload: Mapping) -> None:
    if not path:
        return
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=float)
        f.write("\n")
    print(f"wrote {path}")


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes (``fn`` must block on its results)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def synthetic_lenet(num_train: int):
    """``(x, y, module, params)``: random MNIST-shaped images and labels (seed 0; the
    work per step is MNIST's) and LeNet-300-100 with its key-0 initial params."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lotto_jax import models

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((num_train, 28, 28, 1), np.float32))
    y = jnp.asarray(rng.integers(0, 10, num_train), jnp.int32)
    module = models.build("lenet300")
    return x, y, module, models.init(module, jax.random.key(0), (28, 28, 1))["params"]
