"""What drivers record about a run: per-layer counts, function fingerprints, keys,
and the checks of their shared options. Host-side helpers of the run layer."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import masks
from lotto_jax._types import Mask, Prunable

__all__ = [
    "check_save_every",
    "check_save_interval",
    "fingerprint",
    "key_list",
    "layer_counts",
    "replicate_count",
    "trees_equal",
]


def check_save_every(save_every: int | None) -> None:
    if save_every is not None and (not isinstance(save_every, int) or save_every <= 0):
        raise ValueError(f"save_every: expected a positive int or None, got {save_every!r}")


def check_save_interval(save_interval: float) -> None:
    if isinstance(save_interval, bool) or not isinstance(save_interval, int | float) \
            or not save_interval >= 0:
        raise ValueError(f"save_interval: expected seconds >= 0, got {save_interval!r}")


def layer_counts(mask: Mask, prunable: Prunable, stacked: bool = False) -> dict[str, Any]:
    """Total and per-layer kept counts and densities of the prunable leaves.

    Stacked masks give per-replicate lists of counts and densities, and ``density``
    is their mean.
    """
    if stacked:
        host = jax.tree.map(np.asarray, mask)
        n = jax.tree.leaves(host)[0].shape[0]
        per = [layer_counts(jax.tree.map(lambda m, i=i: m[i], host), prunable)
               for i in range(n)]
        return {
            "density": float(np.mean([p["density"] for p in per])),
            "kept": [p["kept"] for p in per],
            "total": per[0]["total"],
            "layers": {
                name: {"kept": [p["layers"][name]["kept"] for p in per],
                       "total": layer["total"],
                       "density": [p["layers"][name]["density"] for p in per]}
                for name, layer in per[0]["layers"].items()
            },
        }
    layers = {}
    for path, m in jax.tree_util.tree_flatten_with_path(mask)[0]:
        if prunable(path, m):
            kept, total = int(np.asarray(m).sum()), int(np.size(m))
            layers[masks.path_str(path)] = {"kept": kept, "total": total,
                                            "density": kept / total}
    kept = sum(v["kept"] for v in layers.values())
    total = sum(v["total"] for v in layers.values())
    return {"density": kept / total, "kept": kept, "total": total, "layers": layers}


def fingerprint(fn: Callable) -> str:
    """A stable name for a function (no memory addresses): recorded, then compared."""
    if isinstance(fn, functools.partial):
        return f"partial({fingerprint(fn.func)})"
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{module}.{getattr(fn, '__qualname__', None) or type(fn).__qualname__}"


def key_list(key) -> list:
    if jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).tolist()


def trees_equal(a, b) -> bool:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    return ta == tb and all(
        np.shape(x) == np.shape(y) and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb, strict=True)
    )


def replicate_count(**trees) -> int:
    """The common leading (replicate) axis of ``trees``' leaves, or a ValueError
    naming each argument's leading sizes."""
    sizes = {name: [np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(t)]
             for name, t in trees.items()}
    flat = {s for v in sizes.values() for s in v}
    if len(flat) != 1 or None in flat:
        raise ValueError(
            "replicates: " + ", ".join(trees) + " must all carry the same leading "
            "replicate axis; leading sizes: "
            + ", ".join(f"{k}: {sorted(set(v), key=str)}" for k, v in sizes.items())
        )
    return flat.pop()
