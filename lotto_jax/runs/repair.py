"""Verifying a run directory and repairing it: ``lotto imp --repair``.

A corrupt or partial checkpoint item is detected (:class:`~lotto_jax.runs.store.
CorruptCheckpointError` names the file) but a run cannot go on past it.
:func:`repair` makes it go on: it verifies every item of the store, discards exactly
the units that depend on a corrupt one, and leaves the rest; the next run recomputes
what was discarded from the last good state, and ends where an uninterrupted run
would (bit for bit on CPU: every unit is a deterministic function of the config).

What is checked (:func:`scan`): every item with a manifest (``X.manifest.json``,
:meth:`~lotto_jax.runs.store.RunStore.verify`), every finished unit (its
``metrics.json`` marker) for valid JSON and for the items it must have (``mask``,
``final``, and ``init`` for a ``reinit`` control), ``driver.json``, and the rewind
point of a ``step:K`` run whose round 0 finished.

What is discarded for a corrupt item (:func:`plan`):

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

A discarded unit loses its ``metrics.json`` first, then its directory, latest
rounds first: a repair killed half-way leaves a store the next ``--repair`` finishes.
Repair runs under the store's lock (:meth:`~lotto_jax.runs.store.RunStore.open`).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from typing import NamedTuple

from lotto_jax.runs.store import CorruptCheckpointError, RunStore

__all__ = ["Discard", "Problem", "plan", "repair", "scan", "stored_items"]

_MANIFEST = ".manifest.json"
_UNIT = re.compile(r"^(?P<unit>(?:controls/(?P<control>[^/]+)/)?round_(?P<round>\d+))(?:/|$)")
_STEP = re.compile(r"^(?:controls/[^/]+/)?round_\d+/checkpoints/step_\d+$")


class Problem(NamedTuple):
    """A corrupt item: its name in the run (``"round_001/final"``) and why."""

    item: str
    message: str


class Discard(NamedTuple):
    """What :func:`repair` deletes: a unit (``"round_002"``,
    ``"controls/shuffle/round_001"``) or an item, and why."""

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


def _units(directory: str) -> list[str]:
    """The unit directories (``round_NNN``, ``controls/NAME/round_NNN``) present."""
    out = []
    for base in ["", *(os.path.join("controls", c) for c in _listdir(directory, "controls"))]:
        for name in _listdir(directory, base):
            if re.fullmatch(r"round_\d+", name) and os.path.isdir(os.path.join(directory, base, name)):
                out.append(os.path.join(base, name))
    return sorted(out)


def _listdir(directory: str, sub: str) -> list[str]:
    path = os.path.join(directory, sub)
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


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


def scan(store: RunStore) -> list[Problem]:
    """Every corrupt or missing item of the run in ``store`` (module docs)."""
    problems = []
    for item in stored_items(store.directory):
        if (failure := _verify(store, item)) is not None:
            problems.append(Problem(item, failure))
    seen = {p.item for p in problems}
    for unit in _units(store.directory):
        marker = f"{unit}/metrics.json"
        if not store.exists(marker):
            continue
        try:
            store.read_json(marker)
        except CorruptCheckpointError as e:
            problems.append(Problem(marker, str(e)))
        needed = ["mask", "final"] + (["init"] if unit.startswith("controls/reinit/") else [])
        for name in needed:
            item = f"{unit}/{name}"
            if item not in seen and not store.has(item) and store.exists(marker):
                problems.append(Problem(item, f"{store.path(item)}: missing from a "
                                              "finished unit (no manifest)"))
    driver = None
    if store.exists("driver.json"):
        try:
            driver = store.read_json("driver.json")
        except CorruptCheckpointError as e:
            problems.append(Problem("driver.json", str(e)))
    rewind = (driver or {}).get("rewind", "") if isinstance(driver, dict) else ""
    if (str(rewind).startswith("step:") and store.exists("round_000/metrics.json")
            and not store.has("rewind") and "rewind" not in seen):
        problems.append(Problem("rewind", f"{store.path('rewind')}: the rewind point is "
                                          "missing although round 0 finished"))
    return sorted(problems)


def plan(directory: str, problems: list[Problem]) -> list[Discard]:
    """What to delete for ``problems`` (module docs), in deletion order: the
    latest rounds first, each unit's dependants before it."""
    units = _units(directory)
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

    def order(d: Discard):
        m = _UNIT.match(d.name)
        r = int(m["round"]) if m else -1
        return (-r, m is None or m["control"] is None, d.name)

    return sorted(out.values(), key=order)


def repair(store: RunStore, *, echo: Callable[[str], None] | None = print) -> list[Discard]:
    """Verifies the run in ``store``, prints what it will discard (one line each),
    then discards it. The next run recomputes the discarded units.

    Args:
      store: an opened store (it holds the directory's lock).
      echo: where the lines go (``None``: silent).

    Returns:
      The discarded units and items.
    """
    discards = plan(store.directory, scan(store))
    if echo is not None:
        if not discards:
            echo(f"repair: {store.directory}: every item verified, nothing to discard")
        else:
            echo(f"repair: {store.directory}: discarding {len(discards)} corrupt or "
                 "dependent units, to be recomputed:")
            for d in reversed(discards):  # in round order
                echo(f"  {d.name}: {d.reason}")
    for d in discards:
        if not d.is_unit:
            if d.name.endswith(".json"):
                os.remove(store.path(d.name))
            else:
                store.delete(d.name)
            continue
        marker = store.path(d.name, "metrics.json")
        if os.path.exists(marker):
            os.remove(marker)  # unfinished first: a kill here leaves a resumable run
        shutil.rmtree(store.path(d.name))
    return discards
