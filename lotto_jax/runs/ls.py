"""``lotto ls DIR``: the runs under a directory, with kind, status, progress and
headline accuracy.

A run is a directory holding ``config.json``: an IMP run (``lotto imp``), a
pruning-at-init run (``lotto pai``), a supermask search (``lotto supermask``) or a
training (``lotto train``). The search is recursive and stops at a run (runs do not
nest). Per run:

* **kind**: ``imp``, ``pai``, ``supermask`` or ``train``, from its config's fields
  (``?`` when unrecognisable).
* **status**: ``done``, ``partial`` or ``corrupt``. IMP: ``done`` when rounds
  ``0..rounds`` and every configured control of rounds ``1..rounds`` have their
  ``metrics.json``; ``corrupt`` when an item fails verification against its manifest
  or a finished unit lacks an item (:func:`lotto_jax.runs.repair.scan`; ``lotto imp
  --repair`` fixes it); a copy holding no checkpoint at all (records only, like
  the committed ``experiments/results``) is judged by its records. Others: ``done`` when their result file (``results.json``,
  ``result.json`` for train) exists, ``corrupt`` when it or the config is not valid
  JSON.
* **progress**: IMP ``rounds R/N`` (R: the last round finished with all rounds
  before it; ``-`` when none) and ``controls C/M``; others ``steps S/T`` (from the
  result, or the last line of the metrics log while training).
* **best acc**: the best test accuracy (mean over replicates): IMP of the last
  finished round, others from their result file; with the density it was reached at.
* **note**: who holds the lock (``running: pid ... on host ...``) or a stale lock.

With ``--no-verify`` checkpoints are not re-hashed (only records are read): fast on
large runs, but corruption goes unseen.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, NamedTuple

import numpy as np
import tyro

__all__ = ["LsConfig", "RunInfo", "find", "inspect_run", "main"]


@dataclasses.dataclass(frozen=True)
class LsConfig:
    """List the runs under a directory: kind, status, progress, best accuracy.

    Attributes:
      dir: the directory to search, recursively (positional on the command line).
      verify: re-hash every checkpoint against its manifest to find corrupt runs
        (``--no-verify``: read only the records; fast, but blind to corruption).
    """

    dir: tyro.conf.Positional[str] = "runs"
    verify: bool = True


class RunInfo(NamedTuple):
    """One row of ``lotto ls``.

    Attributes:
      path: the run directory.
      kind: ``"imp"``, ``"pai"``, ``"supermask"``, ``"train"`` or ``"?"``.
      status: ``"done"``, ``"partial"`` or ``"corrupt"``.
      progress: e.g. ``"rounds 7/15, controls 14/30"`` or ``"steps 400/1000"``.
      accuracy: the headline best test accuracy (a fraction; mean over replicates),
        or None.
      density: the fraction of weights kept where ``accuracy`` was reached, or None.
      note: the lock's holder, or ``""``.
      problems: for a corrupt run, what is corrupt (one line each).
    """

    path: str
    kind: str
    status: str
    progress: str
    accuracy: float | None
    density: float | None
    note: str
    problems: tuple[str, ...] = ()


def find(directory: str) -> list[str]:
    """The run directories under ``directory`` (it included), sorted."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no such directory")
    out = []
    for root, dirs, files in os.walk(directory):
        if "config.json" in files:
            out.append(root)
            dirs[:] = []  # runs do not nest
        else:
            dirs.sort()
    return sorted(out)


def _load(path: str) -> tuple[Any, bool]:
    """``(json, ok)``: ``(None, True)`` when absent, ``(None, False)`` when garbled."""
    try:
        with open(path) as f:
            return json.load(f), True
    except FileNotFoundError:
        return None, True
    except (OSError, ValueError):
        return None, False


def _mean(value: Any) -> float | None:
    if value is None:
        return None
    return float(np.mean(np.asarray(value, float)))


def _kind(config: dict[str, Any], path: str) -> str:
    if ("rounds" in config and "rewind" in config) or os.path.exists(
            os.path.join(path, "driver.json")):
        return "imp"
    if "method" in config and "density" in config:
        return "pai"
    if "method" in config and "keep" in config:
        return "supermask"
    if "run" in config and "mask" in config:
        return "train"
    return "?"


def _last_step(path: str) -> int | None:
    """The ``step`` of the last complete line of a JSON-lines metrics log."""
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def _lock_note(path: str) -> str:
    from lotto_jax.runs import lock as _runlock

    found = _runlock.status(path)
    if found is None:
        return ""
    state, info = found
    holder = _runlock.describe_holder(info)
    return {"alive": f"running: {holder}", "dead": f"stale lock: {holder}, exited",
            "foreign": f"locked by {holder}"}.get(state, "unreadable lock file")


def _imp(path: str, config: dict[str, Any], verify: bool) -> RunInfo:
    from lotto_jax.runs.repair import scan, stored_items
    from lotto_jax.runs.store import RunStore

    rounds = int(config.get("rounds") or 0)
    controls = list(config.get("controls") or [])
    done = lambda unit: os.path.exists(os.path.join(path, unit, "metrics.json"))  # noqa: E731
    last = -1
    while last < rounds and done(f"round_{last + 1:03d}"):
        last += 1
    n_ctrl = sum(done(f"controls/{c}/round_{r:03d}") for c in controls
                 for r in range(1, rounds + 1))
    progress = f"rounds {last if last >= 0 else '-'}/{rounds}"
    if controls:
        progress += f", controls {n_ctrl}/{rounds * len(controls)}"
    accuracy = density = None
    if last >= 0:
        rec, _ = _load(os.path.join(path, f"round_{last:03d}", "metrics.json"))
        if isinstance(rec, dict):
            accuracy, density = _mean(rec.get("best_test_accuracy")), rec.get("density")
    problems: tuple[str, ...] = ()
    note = _lock_note(path)
    if not stored_items(path):  # a copy that kept the records only (configs, metrics)
        note = note or "records only: no checkpoints"
    elif verify:
        problems = tuple(f"{p.item}: {p.message}" for p in scan(RunStore(path)))
    status = ("corrupt" if problems
              else "done" if last == rounds and n_ctrl == rounds * len(controls)
              else "partial")
    return RunInfo(path, "imp", status, progress, accuracy, density, note, problems)


def _other(path: str, kind: str, config: dict[str, Any]) -> RunInfo:
    name = "result.json" if kind == "train" else "results.json"
    res, ok = _load(os.path.join(path, name))
    steps = ((config.get("run") or {}).get("train") or {}).get("steps")
    accuracy = density = None
    if isinstance(res, dict):
        entry = res
        if kind == "pai":
            entry = (res.get("variants") or {}).get(res.get("method"), {})
        accuracy, density = _mean(entry.get("best_test_accuracy")), entry.get("density")
        status, at = "done", steps
    else:
        status = "partial" if ok else "corrupt"
        logs = [os.path.join(path, f) for f in sorted(os.listdir(path))
                if re.fullmatch(r"metrics(_.*)?\.jsonl", f)]
        at = min((s for f in logs if (s := _last_step(f)) is not None), default=None)
    progress = f"steps {'-' if at is None else at}/{steps if steps is not None else '?'}"
    problems = () if ok else (f"{name}: not valid JSON",)
    return RunInfo(path, kind, status, progress, accuracy, density, _lock_note(path),
                   problems)


def inspect_run(path: str, *, verify: bool = True) -> RunInfo:
    """The :class:`RunInfo` of one run directory."""
    config, ok = _load(os.path.join(path, "config.json"))
    if not ok or not isinstance(config, dict):
        return RunInfo(path, "?", "corrupt", "-", None, None, _lock_note(path),
                       ("config.json: not valid JSON",))
    kind = _kind(config, path)
    if kind == "imp":
        return _imp(path, config, verify)
    if kind == "?":
        return RunInfo(path, "?", "partial", "-", None, None, _lock_note(path))
    return _other(path, kind, config)


def _row(info: RunInfo, top: str) -> list[str]:
    rel = os.path.relpath(info.path, top)
    acc = "-"
    if info.accuracy is not None:
        acc = f"{100 * info.accuracy:.2f}%"
        if info.density is not None:
            acc += f" @ {100 * float(np.mean(info.density)):.3g}%"
    return [rel, info.kind, info.status, info.progress, acc, info.note]


def main(config: LsConfig) -> list[RunInfo]:
    """Prints the table of the runs under ``config.dir``; returns their rows."""
    runs = [inspect_run(p, verify=config.verify) for p in find(config.dir)]
    if not runs:
        print(f"no runs under {config.dir} (a run is a directory with config.json)")
        return runs
    header = ["run", "kind", "status", "progress", "best acc", "note"]
    rows = [_row(r, config.dir) for r in runs]
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    for cells in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    for r in runs:
        if r.problems:
            hint = (" (rerun its lotto imp command with --repair)" if r.kind == "imp"
                    else "")
            print(f"{os.path.relpath(r.path, config.dir)}: corrupt{hint}: {r.problems[0]}"
                  + (f" (and {len(r.problems) - 1} more)" if len(r.problems) > 1 else ""))
    return runs
