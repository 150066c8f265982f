"""Reading a run directory: its kind, its units and how far each got.

The one place where the readers (:mod:`~lotto_jax.runs.report`,
:mod:`~lotto_jax.runs.ls`, :mod:`~lotto_jax.runs.sweeps`,
:mod:`~lotto_jax.runs.repair`) learn what a directory holds. Nothing here writes,
locks or imports orbax: only JSON records and manifests are read.

A *run* is a directory holding ``config.json`` (or, for runs written by hand or
by older versions, ``results.json`` / ``result.json``). Its *kind*
(:func:`kind_of`) comes from the config's fields:

=============  ==============================================  ======================
kind           config fields                                   units
=============  ==============================================  ======================
``imp``        ``rounds`` and ``rewind`` (or ``driver.json``)  ``round_NNN``,
                                                               ``controls/C/round_NNN``
``pai``        ``method`` and ``density``                      ``variants/NAME``
``supermask``  ``method`` and ``keep``                         ``search``
``train``      ``run`` and ``mask``                            ``train``
``dst``        ``method``, ``density`` and ``update_every``    ``dst``
``sft``        ``task_a``, ``task_b`` and ``graft_fractions``  ``pretrain``,
                                                               ``finetune/T``,
                                                               ``ltsft/T/kK``,
                                                               ``random/B/kK``,
                                                               ``graft/fF/lrL``
``bip``        ``keep`` and ``bip_steps``                      ``pretrain``,
                                                               ``bip/kK``,
                                                               ``finetune/kK``
=============  ==============================================  ======================

(``dst`` is told apart from ``pai``, whose configs also have ``method`` and
``density``, by ``update_every``), and, when the config says nothing, from the
layout (``round_000/``, ``variants/``, ``search/``, ``train/``, ``dst/``, the
fields of ``results.json``). A *unit* is one network
trained by the engine (:mod:`lotto_jax.runs.engine`): a directory holding any of
``mask``, ``init``, ``checkpoints/``, ``final`` and ``metrics.json`` (written last:
the unit is finished iff it exists; an sft graft holds ``scores`` and
``metrics.json``). ``results.json`` (every kind but imp) is written after every
unit finished: the run is done iff it exists. (``stability``, ``earlybird``,
``oneshot``, ``sft`` and ``bip`` runs have reports of their own; :data:`KINDS` are those
the sweep tables compare.)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

__all__ = [
    "KINDS",
    "RunView",
    "UnitState",
    "entry",
    "expected_units",
    "find_runs",
    "is_run",
    "kind_of",
    "load_json",
    "read",
    "results_name",
    "run_kind",
    "total_steps",
    "unit_dirs",
    "unit_of",
]

KINDS = ("imp", "pai", "supermask", "train", "dst")
_MANIFEST = ".manifest.json"
_UNIT = {
    "imp": re.compile(r"(?:controls/[^/]+/)?round_\d+"),
    "pai": re.compile(r"variants/[^/]+"),
    "supermask": re.compile(r"search"),
    "train": re.compile(r"train"),
    "dst": re.compile(r"dst"),
    "stability": re.compile(r"pairs/[^/]+"),
    "earlybird": re.compile(r"dense|ticket"),
    "oneshot": re.compile(r"retrain/[^/]+/[^/]+"),
    "sft": re.compile(r"pretrain|finetune/[^/]+|(?:ltsft|random)/[^/]+/k\d+|graft/[^/]+/[^/]+"),
    "bip": re.compile(r"pretrain|(?:bip|finetune)/k[^/]+"),
}
_MARKS = ("config.json", "results.json", "result.json")


class UnitState(NamedTuple):
    """How far one unit got.

    Attributes:
      prefix: its directory in the run (``"variants/snip"``).
      status: ``"done"`` (``metrics.json``), ``"training"`` (a checkpoint or a
        final without the marker), ``"pending"`` (nothing trained yet) or
        ``"corrupt"`` (a garbled ``metrics.json``).
      metrics: its ``metrics.json`` record (done), else None.
      step: the step reached: its latest committed checkpoint's (training), the
        configured total (a stored final), else None.
      curve: its evaluation records so far (dicts with ``step``,
        ``test_accuracy``, ...): from the marker, else the latest checkpoint's or
        the final's manifest.
    """

    prefix: str
    status: str
    metrics: dict[str, Any] | None
    step: int | None
    curve: list[dict[str, Any]]


class RunView(NamedTuple):
    """A run directory as the readers see it (:func:`read`).

    Attributes:
      path: the run directory.
      kind: one of :data:`KINDS`, or ``"?"``.
      config: ``config.json`` (``{}`` when absent or garbled).
      results: ``results.json`` (``result.json`` of an older ``lotto train``), or
        None while the run is unfinished (or when garbled: see ``problems``).
      units: prefix -> :class:`UnitState`, the configured units first.
      problems: the garbled JSON records met while reading (one line each).
    """

    path: str
    kind: str
    config: dict[str, Any]
    results: dict[str, Any] | None
    units: dict[str, UnitState]
    problems: tuple[str, ...]

    @property
    def finished(self) -> int:
        """The number of finished units."""
        return sum(u.status == "done" for u in self.units.values())

    @property
    def done(self) -> bool:
        """Whether the run is complete: ``results.json`` for the kinds that write
        one, every configured unit finished for IMP."""
        if self.kind == "imp":
            return bool(self.units) and self.finished == len(self.units)
        return self.results is not None


def load_json(path: str) -> tuple[Any, bool]:
    """``(record, ok)``: ``(None, True)`` when absent, ``(None, False)`` when garbled."""
    try:
        with open(path) as f:
            return json.load(f), True
    except FileNotFoundError:
        return None, True
    except (OSError, ValueError):
        return None, False


def _isdir(directory: str, *parts: str) -> bool:
    return os.path.isdir(os.path.join(directory, *parts))


def kind_of(config: Mapping[str, Any] | None, directory: str) -> str:
    """The kind of the run in ``directory`` with config ``config`` (module docs).

    Examples:
      >>> kind_of({"rounds": 3, "rewind": "init"}, "/nowhere")
      'imp'
      >>> kind_of({"method": "snip", "density": 0.1}, "/nowhere")
      'pai'
      >>> kind_of({"method": "rigl", "density": 0.1, "update_every": 100}, "/nowhere")
      'dst'
      >>> kind_of({}, "/nowhere")
      '?'
    """
    c = config if isinstance(config, Mapping) else {}
    if "rewind_steps" in c and "pair_seeds" in c:  # lotto stability (pairs/NAME units)
        return "stability"
    if "epsilon" in c and "keep" in c and "density" in c:  # lotto earlybird
        return "earlybird"
    if "densities" in c and "retrain_steps" in c:  # lotto oneshot (retrain/S/dD units)
        return "oneshot"
    if "keep" in c and "bip_steps" in c:  # lotto bip: before imp (it has a driver.json)
        return "bip"
    if ("task_a" in c and "task_b" in c and "graft_fractions" in c) or (
            not c and _isdir(directory, "pretrain") and _isdir(directory, "finetune")):
        return "sft"  # before imp: an sft run has a driver.json too
    if ("rounds" in c and "rewind" in c) or os.path.exists(
            os.path.join(directory, "driver.json")):
        return "imp"
    if "method" in c and "density" in c and "update_every" in c:  # before pai: both
        return "dst"  # have a method and a density
    if "method" in c and "density" in c:
        return "pai"
    if "method" in c and "keep" in c:
        return "supermask"
    if "run" in c and "mask" in c:
        return "train"
    if any(re.fullmatch(r"round_\d+", n) for n in _listdir(directory)):
        return "imp"
    for kind, sub in (("pai", "variants"), ("supermask", "search"), ("train", "train"),
                      ("dst", "dst")):
        if _isdir(directory, sub):
            return kind
    results, _ = load_json(os.path.join(directory, "results.json"))
    if isinstance(results, dict) and "method" in results:
        return ("pai" if "variants" in results else "supermask" if "keep" in results
                else "dst" if "schedule" in results else "?")
    return "train" if os.path.exists(os.path.join(directory, "result.json")) else "?"


def run_kind(directory: str) -> str:
    """The kind of the run in ``directory``, from its ``config.json`` and layout."""
    config, _ = load_json(os.path.join(directory, "config.json"))
    return kind_of(config, directory)


def is_run(directory: str) -> bool:
    """Whether ``directory`` is a run (``config.json``, or a results file)."""
    return any(os.path.isfile(os.path.join(directory, m)) for m in _MARKS)


def find_runs(directory: str) -> list[str]:
    """The run directories under ``directory`` (it included), sorted; the search
    stops at a run (runs do not nest).

    Raises:
      FileNotFoundError: ``directory`` is not a directory.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no such directory")
    out = []
    for root, dirs, _ in os.walk(directory):
        if is_run(root):
            out.append(root)
            dirs[:] = []
        else:
            dirs.sort()
    return sorted(out)


def results_name(directory: str) -> str:
    """``results.json``, or ``result.json`` where only that (an older ``lotto
    train``) exists."""
    if not os.path.exists(os.path.join(directory, "results.json")) and os.path.exists(
            os.path.join(directory, "result.json")):
        return "result.json"
    return "results.json"


def total_steps(config: Mapping[str, Any]) -> int | None:
    """``run.train.steps`` of a config (None when absent)."""
    run = config.get("run")  # a lotto stability config's "run" is a directory
    steps = ((run if isinstance(run, Mapping) else {}).get("train") or {}).get("steps")
    return int(steps) if isinstance(steps, int | float) else None


def expected_units(kind: str, config: Mapping[str, Any], *,
                   num_weights: int | None = None) -> list[str] | None:
    """The units a run of ``kind`` with ``config`` trains, in order; None when
    the config does not say (an sft run's sparse units need ``num_weights``, its
    ``driver.json``'s, to name their K counts).

    Examples:
      >>> expected_units("imp", {"rounds": 2, "controls": ["random"]})
      ['round_000', 'round_001', 'round_002', 'controls/random/round_001', 'controls/random/round_002']
      >>> expected_units("pai", {"method": "snip", "controls": ["shuffle"]})
      ['variants/snip', 'variants/shuffle']
    """
    if kind == "imp" and isinstance(config.get("rounds"), int):
        rounds = config["rounds"]
        return ([f"round_{r:03d}" for r in range(rounds + 1)]
                + [f"controls/{c}/round_{r:03d}" for c in config.get("controls") or ()
                   for r in range(1, rounds + 1)])
    if kind == "pai" and config.get("method"):
        return [f"variants/{v}" for v in [config["method"], *(config.get("controls") or ())]]
    if kind == "supermask":
        return ["search"]
    if kind in ("train", "dst"):
        return [kind]
    if kind == "sft":
        return _sft_units(config, num_weights)
    if kind == "bip" and isinstance(config.get("keep"), list):
        keeps = [f"k{k:g}" for k in config["keep"]]
        return ([] if config.get("pretrained") else ["pretrain"]) + [
            f"bip/{k}" for k in keeps] + [f"finetune/{k}" for k in keeps
                                          if config.get("finetune_steps")]
    return None


def _sft_units(config: Mapping[str, Any], num_weights: int | None) -> list[str] | None:
    """The units of a ``lotto sft`` run (:mod:`lotto_jax.runs.sft_stages` names)."""
    from lotto_jax.sft import count_k

    try:
        ks = [count_k(k, int(num_weights)) for k in config["k"]] if num_weights else []
        fractions, lrs = list(config["graft_fractions"]), list(config["graft_lrs"])
        compose, random_k = bool(config.get("compose")), bool(config.get("random_k"))
    except (KeyError, TypeError, ValueError):
        return None
    tasks = ["B", "B1", "B2"] if compose else ["B"]
    out = ["pretrain", *(f"finetune/{t}" for t in tasks)]
    for kind, task in [("ltsft", "B"), *([("random", "B")] if random_k else []),
                       *(("ltsft", t) for t in tasks[1:])]:
        out += [f"{kind}/{task}/k{k}" for k in ks]
    return out + [f"graft/f{f:g}/lr{lr:g}" for f in fractions for lr in lrs]


def _listdir(directory: str, *parts: str) -> list[str]:
    path = os.path.join(directory, *parts)
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def unit_dirs(directory: str, kind: str) -> list[str]:
    """The unit directories of a ``kind`` run that exist, sorted."""
    if kind == "imp":
        bases = ["", *(f"controls/{c}" for c in _listdir(directory, "controls"))]
        return sorted(os.path.join(b, n) for b in bases for n in _listdir(directory, b)
                      if re.fullmatch(r"round_\d+", n) and _isdir(directory, b, n))
    if kind == "pai":
        return [f"variants/{n}" for n in _listdir(directory, "variants")
                if _isdir(directory, "variants", n)]
    if kind in ("supermask", "train", "dst"):
        name = "search" if kind == "supermask" else kind
        return [name] if _isdir(directory, name) else []
    if kind == "stability":
        return [f"pairs/{n}" for n in _listdir(directory, "pairs")
                if _isdir(directory, "pairs", n)]
    if kind == "earlybird":
        return [n for n in ("dense", "ticket") if _isdir(directory, n)]
    if kind == "oneshot":
        return [f"retrain/{s}/{n}" for s in _listdir(directory, "retrain")
                for n in _listdir(directory, "retrain", s) if _isdir(directory, "retrain", s, n)]
    if kind == "bip":
        found = ["pretrain", *(f"{top}/{n}" for top in ("bip", "finetune")
                               for n in _listdir(directory, top))]
        return sorted(u for u in found if _isdir(directory, u) and _UNIT["bip"].fullmatch(u))
    if kind == "sft":
        found = ["pretrain", *(f"finetune/{t}" for t in _listdir(directory, "finetune"))]
        found += [f"{top}/{a}/{b}" for top in ("ltsft", "random", "graft")
                  for a in _listdir(directory, top) for b in _listdir(directory, top, a)]
        return sorted(u for u in found if _isdir(directory, u) and _UNIT["sft"].fullmatch(u))
    return []


def unit_of(item: str, kind: str) -> str | None:
    """The unit an item path belongs to (``"variants/snip/final"`` ->
    ``"variants/snip"``), or None for a run-level item.

    Examples:
      >>> unit_of("controls/random/round_002/checkpoints/step_00000010", "imp")
      'controls/random/round_002'
      >>> unit_of("init", "pai"), unit_of("variants/snip/mask", "pai")
      (None, 'variants/snip')
    """
    pattern = _UNIT.get(kind)
    if pattern is None:
        return None
    m = re.match(pattern.pattern + r"(?=/|$)", item)
    return m.group(0) if m else None


def _steps(directory: str, prefix: str) -> list[int]:
    out = []
    for name in _listdir(directory, prefix, "checkpoints"):
        digits = name[len("step_"): -len(_MANIFEST)]
        if name.startswith("step_") and name.endswith(_MANIFEST) and digits.isdigit():
            out.append(int(digits))
    return sorted(out)


def _meta(directory: str, item: str) -> dict[str, Any]:
    manifest, _ = load_json(os.path.join(directory, item + _MANIFEST))
    meta = manifest.get("meta") if isinstance(manifest, dict) else None
    return meta if isinstance(meta, dict) else {}


def _unit(directory: str, prefix: str, steps: int | None) -> tuple[UnitState, str | None]:
    """The state of one unit, and a problem line when its marker is garbled."""
    metrics, ok = load_json(os.path.join(directory, prefix, "metrics.json"))
    if isinstance(metrics, dict):
        return UnitState(prefix, "done", metrics, None, list(metrics.get("curve") or [])), None
    problem = None if ok else f"{prefix}/metrics.json: not valid JSON"
    status = "pending" if ok else "corrupt"
    held = _steps(directory, prefix)
    if os.path.exists(os.path.join(directory, prefix, "final" + _MANIFEST)):
        curve = _meta(directory, f"{prefix}/final").get("curve") or []
        return UnitState(prefix, "training" if ok else status, None, steps, curve), problem
    if held:
        meta = _meta(directory, f"{prefix}/checkpoints/step_{held[-1]:08d}")
        return (UnitState(prefix, "training" if ok else status, None, held[-1],
                          list(meta.get("curve") or [])), problem)
    return UnitState(prefix, status, None, None, []), problem


def _legacy_curve(directory: str, kind: str, prefix: str) -> list[dict[str, Any]]:
    """The curve an older driver logged as JSON lines (``metrics.jsonl``,
    ``metrics_<variant>.jsonl``)."""
    name = (f"metrics_{prefix.split('/', 1)[1]}.jsonl" if kind == "pai"
            else "metrics.jsonl")
    try:
        with open(os.path.join(directory, name)) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def read(directory: str) -> RunView:
    """Reads a run directory: config, results and the state of every unit.

    Units the config names come first (``pending`` when absent), then any other
    unit directory found. Where ``results.json`` exists, a configured unit without
    a directory (a run written by an older driver) counts as done. Nothing is
    verified against its manifest: see :func:`lotto_jax.runs.repair.scan`.
    """
    config, ok = load_json(os.path.join(directory, "config.json"))
    problems = [] if ok else ["config.json: not valid JSON"]
    config = config if isinstance(config, dict) else {}
    kind = kind_of(config, directory)
    results = None
    if kind in ("pai", "supermask", "train", "dst", "stability", "earlybird", "oneshot", "sft",
                "bip"):
        name = results_name(directory)
        results, ok = load_json(os.path.join(directory, name))
        if not ok or (results is not None and not isinstance(results, dict)):
            problems.append(f"{name}: not valid JSON")
            results = None
    driver, _ = load_json(os.path.join(directory, "driver.json"))
    n = driver.get("num_weights") if kind == "sft" and isinstance(driver, dict) else None
    prefixes = list(expected_units(kind, config, num_weights=n) or [])
    prefixes += [p for p in unit_dirs(directory, kind) if p not in prefixes]
    units = {}
    for prefix in prefixes:
        state, problem = _unit(directory, prefix, total_steps(config))
        if problem:
            problems.append(problem)
        if results is not None and state.status == "pending":
            state = state._replace(status="done")
        if not state.curve:
            curve = (entry(RunView(directory, kind, config, results, {}, ()), prefix)
                     .get("curve") or _legacy_curve(directory, kind, prefix))
            state = state._replace(curve=list(curve))
        units[prefix] = state
    return RunView(os.path.abspath(directory), kind, config, results, units,
                   tuple(problems))


def entry(view: RunView, prefix: str) -> dict[str, Any]:
    """Everything known of one unit's outcome: its ``metrics.json`` overlaid with
    its part of ``results.json`` (a PaI variant's entry; the whole results of a
    supermask or train run). ``{}`` for a unit with neither."""
    unit = view.units.get(prefix)
    out = dict(unit.metrics or {}) if unit is not None else {}
    if view.results is not None:
        if view.kind == "pai":
            part = (view.results.get("variants") or {}).get(prefix.split("/", 1)[-1])
        elif view.kind in ("supermask", "train", "dst"):
            part = view.results
        else:
            part = None
        if isinstance(part, dict):
            curve = part.get("curve") or out.get("curve")
            out.update(part)
            if curve is not None:
                out["curve"] = curve
    return out
