"""Verifying a run directory and repairing it: ``lotto COMMAND --repair``.

A corrupt or partial checkpoint item is detected (:class:`~lotto_jax.runs.store.
CorruptCheckpointError` names the file) but a run cannot go on past it.
:func:`repair` makes it go on: it verifies every item of the store, discards exactly
the units that depend on a corrupt one, and leaves the rest; the next run recomputes
what was discarded from the last good state, and ends where an uninterrupted run
would (bit for bit on CPU: every unit is a deterministic function of the config).
It works on every kind of run (:mod:`lotto_jax.runs.layout`): a *unit* is a
directory holding any of ``mask``, ``init``, ``checkpoints/``, ``final`` and
``metrics.json`` (``round_NNN``, ``controls/C/round_NNN``, ``variants/NAME``,
``search``, ``train``, ``dst``).

What is checked (:func:`scan`): every item with a manifest (``X.manifest.json``,
:meth:`~lotto_jax.runs.store.RunStore.verify`), every finished unit (its
``metrics.json`` marker) for valid JSON and for the items it must have (``final``;
for IMP also ``mask``, and ``init`` for a ``reinit`` control), ``results.json``;
for IMP ``driver.json`` and the rewind point of a ``step:K`` run whose round 0
finished.

What is discarded for a corrupt item (:func:`plan`), IMP runs:

* a mid-round checkpoint ``.../checkpoints/step_N``: that checkpoint alone; its
  round resumes from an earlier checkpoint or from its start;
* any other item of trunk round ``r`` (``mask``, ``final``, ``metrics.json``):
  round ``r``, its controls, and every later round and control (later masks derive
  from round ``r``);
* an item of a control's round (``controls/NAME/round_NNN/...``): that control's
  round alone (nothing derives from a control);
* ``rewind`` (θK): round 0 and everything after it (θK is saved while round 0
  trains);
* ``init`` (θ0) or ``driver.json``: that item alone; the next run writes it again
  from the seed and its arguments.

Other kinds (``pai``, ``supermask``, ``train``, ``dst``):

* a mid-run checkpoint: that checkpoint alone;
* a unit's ``final``, ``mask`` or ``init``: that unit;
* a unit's garbled ``metrics.json`` whose ``final`` is intact: the marker alone
  (the engine completes the unit again from the curve stored with its final);
* a run-level ``init``, ``mask`` or ``start_mask`` (dst: the mask its training
  starts from): every unit depends on it, so every unit goes (the listing says
  so), then the item;
* an item of a supermask's ``export/``: that item (written again from the search);
  the ``search`` unit takes every export with it;
* ``results.json`` goes whenever anything else does (it is written last, from every
  unit), and alone when it is garbled.

``lotto sft`` runs follow the same rules, and a discarded unit takes what derives
from it: ``pretrain`` (θ0) every other unit and record; a full fine-tuning
``finetune/T`` the sparse units of task T (the selections come from it), and for
T = B the random-K units and the graftings, for a half (B1, B2) the compositions;
a half's sparse unit ``ltsft/Bi/kK`` the composition ``compose/kK.json``. A unit's
``eval.json`` or ``phi`` (φ, stored sparse) goes alone (evaluated or extracted
again from its unit), as does a garbled ``compose/*.json``; a grafting
(``graft/fF/lrL``: ``scores`` and ``metrics.json``) is grafted again.

For every kind, units are recomputed as they were trained: in one stack with the
same units (the engine records each unit's stack in its manifests). So a
discarded unit takes the units it was trained stacked with along, and a discarded
checkpoint the same step of its stack's other units: the stack resumes together,
from the same step, and its numbers equal an uninterrupted run's (a vmapped step
over another stack rounds differently).

A discarded unit loses its ``metrics.json`` first, then its directory; markers
(``results.json``) go before what they summarise, latest rounds first: a repair
killed half-way leaves a store the next ``--repair`` finishes. Repair runs under
the store's lock (:meth:`~lotto_jax.runs.store.RunStore.open`).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from typing import NamedTuple

from lotto_jax.runs import layout
from lotto_jax.runs.store import CorruptCheckpointError, RunStore

__all__ = ["Discard", "Problem", "plan", "repair", "scan", "stored_items"]

_MANIFEST = ".manifest.json"
_UNIT = re.compile(r"^(?P<unit>(?:controls/(?P<control>[^/]+)/)?round_(?P<round>\d+))(?:/|$)")
_STEP = re.compile(r"^(?P<unit>.+)/checkpoints/step_(?P<step>\d+)$")
_RESULTS = ("results.json", "result.json")
_SHARED = ("init", "mask", "start_mask")  # run-level items every unit starts from


class Problem(NamedTuple):
    """A corrupt item: its name in the run (``"round_001/final"``) and why."""

    item: str
    message: str


class Discard(NamedTuple):
    """What :func:`repair` deletes: a unit (``"round_002"``,
    ``"controls/shuffle/round_001"``, ``"variants/snip"``) or an item, and why."""

    name: str
    reason: str
    is_unit: bool


def stored_items(directory: str) -> list[str]:
    """Every item with a manifest, by its name in the run, in sorted order."""
    out = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not os.path.exists(os.path.join(root, d + _MANIFEST)))
        for name in files:
            if name.endswith(_MANIFEST):
                path = os.path.join(root, name[: -len(_MANIFEST)])
                out.append(os.path.relpath(path, directory))
    return sorted(out)


def _verify(store: RunStore, item: str) -> str | None:
    """The verification failure of ``item``, or None. An item deleted or replaced
    meanwhile (a run writing the directory) is not a failure."""
    for _ in range(2):
        try:
            store.verify(item)
            return None
        except CorruptCheckpointError as e:
            if not os.path.exists(store.path(item) + _MANIFEST):
                return None
            failure = str(e)
    return failure


def _needed(kind: str, unit: str) -> list[str]:
    """The items a finished unit must hold."""
    if kind == "imp":
        return ["mask", "final"] + (["init"] if unit.startswith("controls/reinit/") else [])
    if kind == "sft" and unit.startswith("graft/"):
        return ["scores"]
    if kind == "sft" and unit.startswith(("ltsft/", "random/")):
        return ["mask", "final"]
    return ["final"]


def _records(directory: str, kind: str) -> list[str]:
    """The JSON records besides the markers that a run reads back: ``driver.json``
    and, for sft, every unit's ``eval.json`` and ``compose/*.json``."""
    out = ["driver.json"]
    if kind == "sft":
        out += [f"{u}/eval.json" for u in layout.unit_dirs(directory, kind)]
        out += [f"compose/{n}" for n in sorted(os.listdir(os.path.join(directory, "compose")))
                if n.endswith(".json")] if os.path.isdir(os.path.join(directory, "compose")) else []
    return out


def _json_problem(store: RunStore, name: str) -> Problem | None:
    if not store.exists(name):
        return None
    try:
        store.read_json(name)
    except CorruptCheckpointError as e:
        return Problem(name, str(e))
    return None


def scan(store: RunStore) -> list[Problem]:
    """Every corrupt or missing item of the run in ``store`` (module docs)."""
    kind = layout.run_kind(store.directory)
    problems = []
    for item in stored_items(store.directory):
        if (failure := _verify(store, item)) is not None:
            problems.append(Problem(item, failure))
    seen = {p.item for p in problems}
    for unit in layout.unit_dirs(store.directory, kind):
        marker = f"{unit}/metrics.json"
        if not store.exists(marker):
            continue
        if (p := _json_problem(store, marker)) is not None:
            problems.append(p)
        for name in _needed(kind, unit):
            item = f"{unit}/{name}"
            if item not in seen and not store.has(item) and store.exists(marker):
                problems.append(Problem(item, f"{store.path(item)}: missing from a "
                                              "finished unit (no manifest)"))
    if kind != "imp":
        problems += [p for name in (*_RESULTS, *_records(store.directory, kind))
                     if (p := _json_problem(store, name))]
        return sorted(problems)
    driver = None
    if (p := _json_problem(store, "driver.json")) is not None:
        problems.append(p)
    elif store.exists("driver.json"):
        driver = store.read_json("driver.json")
    rewind = driver.get("rewind", "") if isinstance(driver, dict) else ""
    if (str(rewind).startswith("step:") and store.exists("round_000/metrics.json")
            and not store.has("rewind") and "rewind" not in seen):
        problems.append(Problem("rewind", f"{store.path('rewind')}: the rewind point is "
                                          "missing although round 0 finished"))
    return sorted(problems)


def _plan_imp(directory: str, problems: list[Problem]) -> dict[str, Discard]:
    """IMP's dependency rule (module docs)."""
    units = layout.unit_dirs(directory, "imp")
    first: int | None = None  # the first trunk round to recompute
    why: str | None = None
    unit_reason: dict[str, str] = {}
    items: dict[str, str] = {}
    for p in problems:
        m = _UNIT.match(p.item)
        if p.item == "rewind":
            items[p.item] = f"corrupt: {p.message}"
            if first is None or first > 0:
                first, why = 0, "the rewind point θK is corrupt (saved while round 0 trains)"
        elif m is None or _STEP.match(p.item):
            items.setdefault(p.item, f"corrupt: {p.message}")
        elif m["control"] is None:
            r = int(m["round"])
            if first is None or r < first:
                first, why = r, f"corrupt: {p.message}"
        else:
            unit_reason.setdefault(m["unit"], f"corrupt: {p.message}")
    out: dict[str, Discard] = {}
    if first is not None:
        trunk = f"round_{first:03d}"
        for unit in units:
            r = int(_UNIT.match(unit)["round"])
            if r < first:
                continue
            if unit == trunk:
                reason = why
            elif unit_reason.get(unit):
                reason = unit_reason[unit]
            else:
                reason = (f"a control of round {first}, recomputed with it" if r == first
                          else f"derives from round {first}")
            out[unit] = Discard(unit, reason, True)
    for unit, reason in unit_reason.items():
        out.setdefault(unit, Discard(unit, reason, True))
    for item, reason in items.items():
        m = _UNIT.match(item)
        if m is not None and m["unit"] in out:
            continue  # its unit goes anyway
        note = ("" if item == "rewind"
                else f"; {m['unit']} resumes from an earlier checkpoint or its start"
                if m is not None else "; written again by the next run")
        out[item] = Discard(item, reason + note, False)
    return out


def _sft_dependents(directory: str, out: dict[str, Discard]) -> bool:
    """Adds what derives from each discarded unit of an sft run (module docs);
    whether anything was added."""
    present = layout.unit_dirs(directory, "sft")
    compose = os.path.join(directory, "compose")
    records = sorted(f"compose/{n}" for n in os.listdir(compose)) if os.path.isdir(
        compose) else []
    added = False
    for unit in [d.name for d in out.values() if d.is_unit]:
        if unit == "pretrain":
            deps = [u for u in present if u != unit] + records
        elif m := re.fullmatch(r"finetune/([^/]+)", unit):
            t = m[1]
            deps = [u for u in present if u.startswith(f"ltsft/{t}/") or (t == "B" and u.startswith(
                ("random/B/", "graft/")))] + ([r for r in records if r == "compose/full.json"]
                                             if t in ("B1", "B2") else [])
        elif m := re.fullmatch(r"ltsft/B[12]/(k\d+)", unit):
            deps = [r for r in records if r == f"compose/{m[1]}.json"]
        else:
            deps = []
        for d in deps:
            if d not in out:
                out[d] = Discard(d, f"derives from {unit}: recomputed with it",
                                 not d.endswith(".json"))
                added = True
    return added


def _plan_units(directory: str, problems: list[Problem], kind: str) -> dict[str, Discard]:
    """The rule of the other kinds (module docs), before stacks and markers."""
    bad = {p.item for p in problems}
    units: dict[str, str] = {}
    items: dict[str, str] = {}
    everything: list[str] = []  # corrupt run-level items every unit depends on
    for p in problems:
        unit = layout.unit_of(p.item, kind)
        reason = f"corrupt: {p.message}"
        if unit is None:
            items[p.item] = reason + ("" if p.item in _RESULTS or p.item.startswith("export/")
                                      else "; written again by the next run")
            if p.item in _SHARED:
                everything.append(p.item)
        elif (m := _STEP.match(p.item)) and m["unit"] == unit:
            items[p.item] = reason + f"; {unit} resumes from an earlier checkpoint or its start"
        elif kind == "sft" and re.fullmatch(r"eval\.json|phi(?:_r\d+)?",
                                            p.item[len(unit) + 1:]):
            items[p.item] = reason + f"; derived again from {unit}"
        elif (p.item == f"{unit}/metrics.json" and f"{unit}/final" not in bad
                and os.path.exists(os.path.join(directory, unit, "final" + _MANIFEST))):
            items[p.item] = reason + "; its final is intact: completed again from it"
        else:
            units.setdefault(unit, reason)
    present = layout.unit_dirs(directory, kind)
    for item in everything:
        n = len(present)
        items[item] += ("; every unit depends on it: "
                        + (f"all {n} units are" if n != 1 else "its one unit is")
                        + " recomputed")
        for unit in present:
            units.setdefault(unit, f"depends on {item} (corrupt)")
    out = {u: Discard(u, r, True) for u, r in units.items()}
    for item, reason in items.items():
        if layout.unit_of(item, kind) not in out:
            out[item] = Discard(item, reason, False)
    return out


def _stacks(directory: str, kind: str) -> dict[str, set[str]]:
    """Unit -> the units it was trained stacked with (itself included), from the
    ``stack`` its final's and checkpoints' manifests record."""
    peers: dict[str, set[str]] = {}
    for unit in layout.unit_dirs(directory, kind):
        steps = [i for i in stored_items(os.path.join(directory, unit))
                 if i.startswith("checkpoints/")]
        for item in ["final", *steps]:
            manifest, _ = layout.load_json(os.path.join(directory, unit, item + _MANIFEST))
            meta = manifest.get("meta") if isinstance(manifest, dict) else None
            stack = meta.get("stack") if isinstance(meta, dict) else None
            if isinstance(stack, list) and all(isinstance(s, str) for s in stack):
                for s in stack:
                    peers.setdefault(s, {s}).update(stack)
    return peers


def _add_stacks(directory: str, kind: str, out: dict[str, Discard]) -> None:
    """A discarded unit takes its stack along; a discarded checkpoint the same step
    of its stack's other units (module docs)."""
    peers = _stacks(directory, kind)
    todo = [d.name for d in out.values() if d.is_unit]
    while todo:
        unit = todo.pop()
        for q in sorted(peers.get(unit, set()) - set(out)):
            if os.path.isdir(os.path.join(directory, q)):
                out[q] = Discard(q, f"trained in one stack with {unit}: recomputed with it "
                                    "(the same stack, the same numbers)", True)
                todo.append(q)
    gone = {d.name for d in out.values() if d.is_unit}
    for d in list(out.values()):
        m = _STEP.match(d.name)
        if d.is_unit or m is None:
            continue
        for q in sorted(peers.get(m["unit"], set()) - {m["unit"]} - gone):
            item = f"{q}/checkpoints/step_{m['step']}"
            if item not in out and os.path.exists(os.path.join(directory, item + _MANIFEST)):
                out[item] = Discard(item, f"the same step of {m['unit']}'s stack: {q} "
                                          "resumes with it", False)


def _deletion_order(kind: str, discards: list[Discard]) -> list[Discard]:
    """Markers before what they summarise, dependants before their sources."""

    def key(d: Discard):
        if d.name in _RESULTS:
            return (0, 0, False, d.name)
        if d.name.startswith(("export/", "compose/")):
            return (1, 0, False, d.name)
        if kind == "imp":
            m = _UNIT.match(d.name)
            r = int(m["round"]) if m else -1
            return (2, -r, m is None or m["control"] is None, d.name)
        unit = layout.unit_of(d.name, kind)
        rank = {"finetune": 1, "pretrain": 2}.get(unit.split("/")[0], 0) if unit else 0
        return (2 if unit else 3, rank, not d.is_unit, d.name)  # sft: dependants first

    return sorted(discards, key=key)


def plan(directory: str, problems: list[Problem], *, kind: str | None = None) -> list[Discard]:
    """What to delete for ``problems`` (module docs), in deletion order: markers
    first, the latest rounds first, each unit's dependants before it.

    Args:
      directory: the run directory.
      problems: what :func:`scan` found.
      kind: the run's kind; default: :func:`lotto_jax.runs.layout.run_kind`.
    """
    kind = kind or layout.run_kind(directory)
    out = (_plan_imp(directory, problems) if kind == "imp"
           else _plan_units(directory, problems, kind))
    _add_stacks(directory, kind, out)
    while kind == "sft" and _sft_dependents(directory, out):
        _add_stacks(directory, kind, out)
        out = {n: d for n, d in out.items()  # an item of a discarded unit goes with it
               if d.is_unit or layout.unit_of(n, kind) not in out}
    if out and kind != "imp":
        if "search" in out and kind == "supermask":
            for item in stored_items(directory):
                if item.startswith("export/"):
                    out.setdefault(item, Discard(item, "exported from search: written "
                                                       "again with it", False))
        name = layout.results_name(directory)
        if name not in out and os.path.exists(os.path.join(directory, name)):
            out[name] = Discard(name, "summarises the units: written again once every "
                                      "unit is finished", False)
    return _deletion_order(kind, list(out.values()))


def repair(store: RunStore, *, echo: Callable[[str], None] | None = print) -> list[Discard]:
    """Verifies the run in ``store``, prints what it will discard (one line each),
    then discards it. The next run recomputes the discarded units.

    Args:
      store: an opened store (it holds the directory's lock).
      echo: where the lines go (``None``: silent).

    Returns:
      The discarded units and items, in the order they were deleted.
    """
    discards = plan(store.directory, scan(store))
    if echo is not None:
        if not discards:
            echo(f"repair: {store.directory}: every item verified, nothing to discard")
        else:
            echo(f"repair: {store.directory}: discarding {len(discards)} corrupt or "
                 "dependent units and items, to be recomputed:")
            for d in reversed(discards):  # causes first: in round order
                echo(f"  {d.name}: {d.reason}")
    for d in discards:
        path = store.path(d.name)
        if not d.is_unit:
            if d.name.endswith(".json"):
                if os.path.exists(path):
                    os.remove(path)
            else:
                store.delete(d.name)
            continue
        marker = store.path(d.name, "metrics.json")
        if os.path.exists(marker):
            os.remove(marker)  # unfinished first: a kill here leaves a resumable run
        shutil.rmtree(path, ignore_errors=True)
    return discards
