"""``lotto ls DIR``: the runs under a directory, with kind, status, progress, best
accuracy and lock holder.

A run is a directory holding ``config.json``: an IMP run (``lotto imp``), a
pruning-at-init run (``lotto pai``), a supermask search (``lotto supermask``), a
training (``lotto train``), a dynamic sparse training (``lotto dst``), a sparse
fine-tuning (``lotto sft``), ...; :mod:`lotto_jax.runs.layout` reads each. The search is
recursive and stops at a run (runs do not nest). Per run:

* **kind**: ``imp``, ``pai``, ``supermask``, ``train``, ``dst``, ``sft``, ...
  (:func:`lotto_jax.runs.layout.kind_of`; ``?`` when unrecognisable).
* **status**: ``done``, ``partial`` or ``corrupt``. ``done``: IMP when rounds
  ``0..rounds`` and every configured control of rounds ``1..rounds`` have their
  ``metrics.json``; the others when their ``results.json`` exists (written after
  every unit finished). ``corrupt``: an item fails verification against its
  manifest, a finished unit lacks an item, or a record (``config.json``,
  ``results.json``, a ``metrics.json``) is not valid JSON
  (:func:`lotto_jax.runs.repair.scan`; the command's ``--repair`` fixes it). A copy
  holding no checkpoint at all (records only, like the committed
  ``experiments/results``) is judged by its records.
* **progress**: IMP ``rounds R/N`` (R: the last round finished with all rounds
  before it; ``-`` when none) and ``controls C/M``; the others ``units F/T``
  (finished units of those the config names: PaI variants, the supermask search,
  the training, the dst unit; sft: every network and grafting, then the tasks and
  the ``--k`` values, ``A 0-4 -> B 5-9, K 0.001,0.01``) and, while a unit trains,
  ``step S/T`` of its latest checkpoint.
* **best acc**: the best test accuracy (mean over replicates) with the density it
  was reached at: IMP of the last finished round, PaI of the method's variant,
  supermask of the search, train of the network, dst of the network with its final
  mask's density (the target density while it trains), sft the best LT-SFT
  network on task B with the fraction of weights it fine-tuned (from its
  ``eval.json``); from the finished units of an unfinished run.
* **note**: who holds the lock (``running: pid ... on host ...``) or a stale lock.

With ``--no-verify`` checkpoints are not re-hashed (only records are read): fast on
large runs, but corruption goes unseen.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

import numpy as np
import tyro

from lotto_jax.runs import layout

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
      kind: ``"imp"``, ``"pai"``, ``"supermask"``, ``"train"``, ``"dst"``, ``"sft"``,
        ... or ``"?"``.
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
    """The run directories under ``directory`` (it included), sorted
    (:func:`lotto_jax.runs.layout.find_runs`)."""
    return layout.find_runs(directory)


def _mean(value: Any) -> float | None:
    if value is None or isinstance(value, dict):
        return None
    try:
        return float(np.mean(np.asarray(value, float)))
    except (TypeError, ValueError):
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


def _verified(view: layout.RunView, verify: bool) -> tuple[tuple[str, ...], str]:
    """``(problems, note)``: the run's corrupt items (when ``verify``), and a note
    for a copy that kept the records only (configs, metrics) and no checkpoint."""
    from lotto_jax.runs.repair import scan, stored_items
    from lotto_jax.runs.store import RunStore

    problems = view.problems
    if not stored_items(view.path):
        has_units = view.kind == "imp" or layout.unit_dirs(view.path, view.kind)
        return problems, "records only: no checkpoints" if has_units else ""
    if verify:
        found = tuple(f"{p.item}: {p.message}" for p in scan(RunStore(view.path)))
        problems += tuple(p for p in found if p not in problems)
    return problems, ""


def _imp(view: layout.RunView, verify: bool) -> RunInfo:
    rounds = int(view.config.get("rounds") or 0)
    controls = list(view.config.get("controls") or [])
    done = lambda unit: (u := view.units.get(unit)) is not None and u.status == "done"  # noqa: E731
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
        rec = view.units[f"round_{last:03d}"].metrics
        accuracy, density = _mean(rec.get("best_test_accuracy")), rec.get("density")
    problems, records = _verified(view, verify)
    status = ("corrupt" if problems
              else "done" if last == rounds and n_ctrl == rounds * len(controls)
              else "partial")
    return RunInfo(view.path, "imp", status, progress, accuracy, density,
                   _lock_note(view.path) or records, problems)


def _headline(view: layout.RunView) -> tuple[float | None, float | None]:
    """The best test accuracy of the run's main unit (a PaI run's method, the
    supermask search, the training, the dst network) and the density it was
    reached at."""
    c, res = view.config, view.results or {}
    prefix = {"pai": f"variants/{c.get('method') or res.get('method')}",
              "supermask": "search", "train": "train", "dst": "dst"}.get(view.kind)
    if view.kind == "bip" and c.get("keep"):  # the sparsest keep's BiP network
        keep = min(c["keep"])
        return _mean(layout.entry(view, f"bip/k{keep:g}").get("best_test_accuracy")), keep
    if prefix is None:  # stability, earlybird: no one main unit
        return None, None
    e = layout.entry(view, prefix)
    density = e.get("density")
    if density is None:
        density = c.get("density") if view.kind in ("pai", "dst") else c.get("keep")
    return _mean(e.get("best_test_accuracy")), _mean(density)


def _other(view: layout.RunView, verify: bool) -> RunInfo:
    problems, records = _verified(view, verify)
    status = "corrupt" if problems else "done" if view.done else "partial"
    progress = f"units {view.finished}/{len(view.units)}"
    steps = layout.total_steps(view.config)
    at = [u.step for u in view.units.values() if u.status == "training" and u.step is not None]
    if at and not view.done:
        progress += f", step {max(at)}/{steps if steps is not None else '?'}"
    accuracy, density = _headline(view)
    return RunInfo(view.path, view.kind, status, progress, accuracy, density,
                   _lock_note(view.path) or records, problems)


def _classes(values: Any) -> str:
    """``0-4`` for a run of consecutive classes, else ``5,7,9``."""
    v = [int(c) for c in values or ()]
    if len(v) > 2 and v == list(range(v[0], v[0] + len(v))):
        return f"{v[0]}-{v[-1]}"
    return ",".join(map(str, v)) or "?"


def _sft(view: layout.RunView, verify: bool) -> RunInfo:
    """An sft run: :func:`_other`'s status and units, the tasks and K values, the
    best LT-SFT accuracy on task B (mean over replicates) at its fraction fine-tuned."""
    info = _other(view, verify)
    c = view.config
    progress = f"units {view.finished}/{len(view.units)}"
    steps = layout.total_steps(c)
    at = [(u.step, steps if p == "pretrain" else c.get("finetune_steps") or steps)
          for p, u in view.units.items() if u.status == "training" and u.step is not None]
    if at and not view.done:  # a fine-tuning's total is --finetune-steps
        step, total = max(at)
        progress += f", step {step}/{total if total is not None else '?'}"
    what = (f"A {_classes(c.get('task_a'))} -> B {_classes(c.get('task_b'))}, K "
            + ",".join(f"{k:g}" for k in c.get("k") or ()))
    best = None
    for prefix in view.units:
        if prefix.startswith("ltsft/B/"):
            rec, _ = layout.load_json(os.path.join(view.path, prefix, "eval.json"))
            acc = _mean(rec.get("accuracy")) if isinstance(rec, dict) else None
            if acc is not None and (best is None or acc > best[0]):
                best = (acc, rec.get("fraction"))
    return info._replace(progress=f"{progress}; {what}",
                         accuracy=best and best[0], density=best and best[1])


def inspect_run(path: str, *, verify: bool = True) -> RunInfo:
    """The :class:`RunInfo` of one run directory."""
    config, ok = layout.load_json(os.path.join(path, "config.json"))
    if not ok or (config is not None and not isinstance(config, dict)):
        return RunInfo(path, "?", "corrupt", "-", None, None, _lock_note(path),
                       ("config.json: not valid JSON",))
    view = layout.read(path)._replace(path=path)
    if view.kind == "imp":
        return _imp(view, verify)
    if view.kind == "?":
        return RunInfo(path, "?", "partial", "-", None, None, _lock_note(path))
    return _sft(view, verify) if view.kind == "sft" else _other(view, verify)


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
            hint = (f" (rerun its lotto {r.kind} command with --repair)"
                    if r.kind != "?" else "")
            print(f"{os.path.relpath(r.path, config.dir)}: corrupt{hint}: {r.problems[0]}"
                  + (f" (and {len(r.problems) - 1} more)" if len(r.problems) > 1 else ""))
    return runs
