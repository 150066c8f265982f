"""JSON records of the run layer: JSON-ready copies of configs and metrics, their
field-by-field difference, and atomic writes (temp file + ``os.replace``).

:mod:`lotto_jax.runs.store` re-exports :func:`config_diff` and
:func:`write_json_atomic`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["config_diff", "write_json_atomic"]


def _jsonable(obj: Any) -> Any:
    """A JSON-ready copy: tuples to lists, numpy scalars and arrays to Python."""
    return json.loads(json.dumps(obj, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | jax.Array):
        return np.asarray(obj).tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    raise TypeError(f"cannot store {type(obj).__name__} {obj!r} as JSON")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        if not d and prefix:
            out[prefix[:-1]] = {}
        return out
    return {prefix[:-1]: d}


def config_diff(old: Mapping, new: Mapping, *, ignore: Iterable[str] = (),
                defaults: Mapping | None = None) -> list[str]:
    """The differing fields of two nested configs as ``'dotted.name: old -> new'``.

    Args:
      old: the stored config (nested dicts).
      new: the requested config.
      ignore: dotted names (or prefixes of them) allowed to differ.
      defaults: the config class's defaults (nested like ``new``): a field absent
        from ``old`` (added to the class after the run was written) that ``new``
        holds at its default is no difference, so older runs still resume.

    Returns:
      One line per differing field, sorted; ``<absent>`` marks a missing field.

    Examples:
      >>> config_diff({"train": {"lr": 0.1}, "rounds": 2}, {"train": {"lr": 0.2}, "rounds": 3},
      ...             ignore=("rounds",))
      ['train.lr: 0.1 -> 0.2']
    """
    a, b = _flatten(_jsonable(old)), _flatten(_jsonable(new))
    skip = tuple(ignore)
    absent = "<absent>"
    default = _flatten(_jsonable(defaults or {}))

    def ignored(name: str) -> bool:
        added = name not in a and name in default and default[name] == b.get(name, absent)
        return added or any(name == s or name.startswith(s + ".") for s in skip)

    return [
        f"{k}: {json.dumps(a.get(k, absent))} -> {json.dumps(b.get(k, absent))}"
        .replace('"<absent>"', absent)
        for k in sorted(set(a) | set(b))
        if not ignored(k) and a.get(k, absent) != b.get(k, absent)
    ]


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` via a temp file and ``os.replace``."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(_jsonable(obj), f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
