"""The engine: trains a run's *units*, stacked in one compiled fit, and persists each.

A unit (:class:`Unit`) is one network to train (a variant × its replicates): a
directory in the run (``prefix``), a start point ``{"params", "model_state"}``, a
mask, a start step and a learning-rate hold. :meth:`Engine.run` trains a set of
units to the end and returns one :class:`Done` per unit:

* **Stacked.** The unfinished units are concatenated along the replicate axis and
  trained by one ``train.fit(replicates=True)`` (one vmapped compiled step); their
  curves and states are split back per unit. A single unreplicated unit trains
  unvmapped. Units resumed at different steps train in separate stacks.
* **Persisted.** Mid-training checkpoints ``PREFIX/checkpoints/step_N`` are taken on
  a schedule (every ``save_every`` steps, else every ``save_interval`` seconds, at
  evaluation points). A stack's units all write step ``N`` before any drops its
  older checkpoint, and each records the stack it trained in, so a kill at any
  instant resumes every unit of a stack from the same step: the same stack, the
  same numbers (bit for bit on CPU). At the end every unit of the stack writes
  ``PREFIX/final`` (with its curve), then every unit its ``metrics.json`` (the
  commit marker), then the checkpoints go.
* **Never recomputed.** A unit with ``metrics.json`` is finished and skipped; one
  whose stack all wrote ``final`` is completed from the stored curve without
  training; the others resume from their latest consistent checkpoint.

A driver (:mod:`lotto_jax.runs.imp`, ``pai``, ``supermask``, ``train``) only says
which units to train from which start states; the engine does the rest.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import masks, train
from lotto_jax._types import Mask
from lotto_jax.runs.progress import ProgressBar
from lotto_jax.runs.store import CorruptCheckpointError
from lotto_jax.runs.writer import Clock, TimedTrainer

__all__ = ["Done", "Engine", "Unit", "abstract"]


@functools.partial(jax.jit, static_argnums=(0, 5))
def _start(trainer, weights, mask, step, key, stacked):
    """The start state of a unit: masked weights, fresh optimizer state, ``step``
    (per replicate when ``stacked``); with a mask updater, ``mask`` and ``key``
    start ``state.dst``."""

    def one(w, m, k):
        params, model_state = masks.apply(w["params"], m), jax.tree.map(jnp.copy, w["model_state"])
        if trainer.updater is None:
            return trainer.init(params, model_state, step=step)
        return trainer.init(params, model_state, step=step, mask=m, key=k)

    return jax.vmap(one)(weights, mask, key) if stacked else one(weights, mask, key)


@functools.partial(jax.jit, static_argnums=1)
def _concat(trees, stacked):
    """Trees joined along the replicate axis (each gets one when not ``stacked``)."""
    rows = trees if stacked else [jax.tree.map(lambda x: x[None], t) for t in trees]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *rows)


@functools.partial(jax.jit, static_argnums=1)
def _split(tree, parts):
    """The inverse of :func:`_concat`: ``parts = ((start, rows or None), ...)``."""
    return tuple(
        jax.tree.map(lambda x, s=s, n=n: x[s] if n is None else x[s : s + n], tree)
        for s, n in parts
    )


_RECORD_VALUES = ("train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy",
                  "train_accuracy")


def _stack_records(histories: Sequence[Sequence[train.EvalRecord]]) -> list[train.EvalRecord]:
    """Per-unit curves (same steps) joined into curves over the stacked axis."""
    out = []
    for recs in zip(*histories, strict=True):
        values = {
            f: None if getattr(recs[0], f) is None else np.concatenate(
                [np.asarray(getattr(r, f), float).reshape(-1) for r in recs])
            for f in _RECORD_VALUES
        }
        out.append(recs[0]._replace(**values))
    return out


def _split_record(rec: train.EvalRecord, parts) -> list[train.EvalRecord]:
    def take(v, s, n):
        if v is None:
            return None
        v = np.asarray(v, float)
        return float(v[s]) if n is None else v[s : s + n]

    return [rec._replace(**{f: take(getattr(rec, f), s, n) for f in _RECORD_VALUES})
            for s, n in parts]


def abstract(tree):
    """Abstract leaves; committed arrays keep their sharding (restored like them)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            jnp.shape(x), jnp.result_type(x),
            sharding=x.sharding if getattr(x, "committed", False) else None,
        ),
        tree,
    )


class Unit(NamedTuple):
    """One network to train (with a leading replicate axis in a stacked engine).

    Attributes:
      prefix: its directory in the run, e.g. ``"round_002"``.
      name: its label in progress bars.
      weights: the start point ``{"params", "model_state"}``, or a function that
        returns it (called only if the unit trains).
      mask: the mask it trains under (masked into the start weights).
      step: the start step (learning-rate schedule and data order resume there).
      hold: ``hold_lr`` of :func:`lotto_jax.train.fit` (-1: follow the schedule).
      data_key: its data-order key; ``None``: the engine's.
      key: with a trainer that has a mask updater (:mod:`lotto_jax.dst`), the
        updater's key (``mask`` is then its start mask); else unused.
    """

    prefix: str
    name: str
    weights: Any
    mask: Mask
    step: int = 0
    hold: int = -1
    data_key: Any = None
    key: Any = None


class Done(NamedTuple):
    """A unit at the end of :meth:`Engine.run`.

    Attributes:
      unit: the unit.
      metrics: its ``metrics.json`` record.
      final: its trained ``{"params", "model_state"}`` when trained by this call,
        else ``None`` (:meth:`Engine.final` loads it).
      trained: whether this call trained it.
    """

    unit: Unit
    metrics: dict[str, Any]
    final: Any
    trained: bool


def _step_item(prefix: str, step: int) -> str:
    return f"{prefix}/checkpoints/step_{int(step):08d}"


def _records(curve: Sequence[Any]) -> list[train.EvalRecord]:
    return [train.EvalRecord(**r) for r in curve]


class Engine:
    """Trains units of one trainer: stacked, checkpointed, resumed, never redone.

    Args:
      trainer: the compiled trainer every unit runs through.
      dataset: the data.
      data_key: the default data-order key (with a replicate axis when ``stacked``).
      store: a :class:`lotto_jax.runs.store.RunStore` (or its
        :class:`lotto_jax.runs.writer.WriteBehind`), or ``None`` for in memory.
      stacked: the units carry a leading replicate axis.
      mesh: start states and masks are placed on it.
      save_every: steps between mid-training checkpoints; ``None``: by time.
      save_interval: seconds between checkpoints when ``save_every`` is None.
      progress: show progress bars (default: when stderr is a terminal).
      clock: the wall-time clock (a new one by default).
      log: receives one line per decision (a unit kept, completed or trained from a
        step); default: stderr, prefixed ``lotto:``. Tests read it as evidence that
        finished work was reused.
      on_eval: ``on_eval(state, record)``, called at every evaluation of a training
        stack before its checkpoint (e.g. to record the mask magnitude pruning would
        give: :mod:`lotto_jax.runs.earlybird`); its writes go through the store
        before the checkpoint's, so a resume finds them. A state it returns
        replaces the trained one (WORM's gradient scale), checkpoint included.
    """

    def __init__(self, trainer, dataset, data_key, store=None, *, stacked=False, mesh=None,
                 save_every=None, save_interval=60.0, progress=None, clock=None, log=None,
                 on_eval=None):
        self.on_eval = on_eval
        self.log = log or (lambda line: print(f"lotto: {line}", file=sys.stderr, flush=True))
        self.trainer, self.dataset, self.data_key = trainer, dataset, data_key
        self.clock = clock or Clock()
        self.timed = TimedTrainer(trainer, self.clock)
        self.store, self.save_every, self.save_interval = store, save_every, save_interval
        self.progress, self.stacked, self.mesh = progress, stacked, mesh
        self.rows = int(np.shape(data_key)[0]) if stacked else None

    # ------------------------------------------------------------ persistence
    def save(self, item: str, tree: Any) -> None:
        if self.store is not None:
            self.store.save(item, tree)

    def finished(self, prefix: str) -> bool:
        """Whether the unit at ``prefix`` wrote its ``metrics.json`` marker."""
        if self.store is None or not self.store.exists(f"{prefix}/metrics.json"):
            return False
        self.store.clear_steps(prefix)  # leftovers of a kill right after the marker
        return True

    def metrics(self, prefix: str) -> dict[str, Any]:
        return self.store.read_json(f"{prefix}/metrics.json")

    def final(self, prefix: str, target: Any) -> Any:
        """A finished unit's trained ``{"params", "model_state"}``."""
        return self.store.restore(f"{prefix}/final", target)

    def load_or(self, item: str, target: Any, make: Callable[[], Any]) -> Any:
        """The stored ``item``, else ``make()`` (saved). A finished unit that lost
        the item raises :class:`CorruptCheckpointError` instead."""
        if self.store is not None and self.store.has(item):
            return self.store.restore(item, target)
        if self.store is not None and "/" in item and self.finished(item.rsplit("/", 1)[0]):
            self.store.verify(item)  # raises: a finished unit lost an item
        tree = make()
        self.save(item, tree)
        return tree

    # ---------------------------------------------------------------- running
    def run(self, units: Sequence[Unit], describe: Callable[[list[str]], str], *,
            metrics_fn: Callable[[Unit, train.FitResult], dict[str, Any]],
            stop_at: int | None = None, on_stop: Callable[[Any], None] | None = None,
            ) -> list[Done]:
        """Trains the unfinished ``units`` to the end and commits each.

        Args:
          units: the units (distinct prefixes).
          describe: ``describe(names) -> str``, a stack's progress label.
          metrics_fn: ``metrics_fn(unit, fit_result) -> dict``, its metrics record.
          stop_at, on_stop: pause at step ``stop_at`` and call ``on_stop(state)``
            (e.g. to save a rewind point) before going on.

        Returns:
          One :class:`Done` per unit, in order.
        """
        out: dict[int, Done] = {}
        todo = []
        for i, u in enumerate(units):
            if self.finished(u.prefix):
                self.log(f"{u.prefix}: finished, kept")
                out[i] = Done(u, self.metrics(u.prefix), None, False)
            elif self._complete(u, metrics_fn) is not None:
                self.log(f"{u.prefix}: completed from its stored final")
                out[i] = Done(u, self.metrics(u.prefix), None, False)
            else:
                todo.append(i)
        trained = self.train([units[i] for i in todo], describe, stop_at=stop_at,
                             on_stop=on_stop)
        finals = {}
        for i, (state, res, stack) in zip(todo, trained, strict=True):
            finals[i] = {"params": state.params, "model_state": state.model_state}
            if state.dst is not None:  # a mask updater's last mask
                finals[i]["mask"] = state.dst.mask
            if self.store is not None:
                self.store.save(f"{units[i].prefix}/final", finals[i],
                                meta={"curve": [r._asdict() for r in res.curve],
                                      "stack": stack})
        for i, (_, res, _) in zip(todo, trained, strict=True):
            m = metrics_fn(units[i], res)
            if self.store is not None:
                self.store.write_json(f"{units[i].prefix}/metrics.json", m)
            out[i] = Done(units[i], m, finals[i], True)
        for i in todo:
            if self.store is not None:
                self.store.clear_steps(units[i].prefix)
        return [out[i] for i in range(len(units))]

    def _complete(self, u: Unit, metrics_fn) -> dict[str, Any] | None:
        """Commits a unit whose stack all saved ``final`` before a kill, from its
        stored curve (no training); ``None`` when it must train."""
        if self.store is None or not self.store.has(f"{u.prefix}/final"):
            return None
        meta = self.store.meta(f"{u.prefix}/final")
        if "curve" not in meta or not all(
                self.store.has(f"{p}/final") or self.store.exists(f"{p}/metrics.json")
                for p in meta.get("stack", [u.prefix])):
            return None
        m = metrics_fn(u, train.summarize(_records(meta["curve"])))
        self.store.write_json(f"{u.prefix}/metrics.json", m)
        self.store.clear_steps(u.prefix)
        return m

    def start(self, u: Unit):
        """A unit's start state: masked weights, fresh optimizer state, its step."""
        weights = u.weights() if callable(u.weights) else u.weights
        if self.trainer.updater is not None and u.key is None:
            raise ValueError(f"{u.prefix}: a unit of a trainer with a mask updater needs key=")
        state = _start(self.trainer, weights, u.mask, jnp.asarray(u.step, jnp.int32), u.key,
                       self.stacked)
        if self.mesh is not None:
            from lotto_jax.sharding import place_state

            state = place_state(state, self.mesh, tx=self.trainer.tx)
        return state

    def _resume_steps(self, units: Sequence[Unit]) -> list[int | None]:
        """Per unit, the latest checkpoint step that every unit it was stacked with
        (and that trains now) also holds: kills between the stack's writes resume
        the same stack from the same step."""
        if self.store is None:
            return [None] * len(units)
        steps = {u.prefix: self.store.steps(u.prefix) for u in units}
        chosen = []
        for u in units:
            have = steps[u.prefix]
            if not have:
                chosen.append(None)
                continue
            stack = self.store.meta(_step_item(u.prefix, have[-1])).get("stack", [u.prefix])
            peers = [p for p in stack if p in steps]
            common = [t for t in have if all(t in steps[p] for p in peers)]
            chosen.append(common[-1] if common else None)  # no shared step: the stack restarts together
        return chosen

    def resume_point(self, u: Unit, step: int | None):
        """``(state, curve so far)``: the checkpoint of ``u`` at ``step``, or its start."""
        if step is None:
            return self.start(u), []
        item = _step_item(u.prefix, step)
        # restored with the placement of a fresh start state: the same signature
        state = self.store.restore(item, abstract(self.start(u)))
        return state, _records(self.store.meta(item)["curve"])

    def train(self, units: Sequence[Unit], describe: Callable[[list[str]], str], *,
              stop_at=None, on_stop=None) -> list[tuple[Any, train.FitResult, list[str]]]:
        """Trains ``units`` from their checkpoints (or starts) to the end, as few
        stacks as possible (one per resume step and hold); ``[(state, result,
        stack prefixes)]``. Commits nothing but mid-training checkpoints."""
        points = [self.resume_point(u, s)
                  for u, s in zip(units, self._resume_steps(units), strict=True)]
        def at_step(i):
            return int(np.max(np.asarray(points[i][0].step)))

        groups: dict[tuple, list[int]] = {}
        for i, ((state, history), u) in enumerate(zip(points, units, strict=True)):
            at = (int(np.max(np.asarray(state.step))), len(history), u.hold)
            groups.setdefault(at, []).append(i)
        out: list[Any] = [None] * len(units)
        for idx in groups.values():
            stack = [units[i].prefix for i in idx]
            self.log(f"{' + '.join(stack)}: training from step {at_step(idx[0])}")
            done = self._fit([units[i] for i in idx], [points[i] for i in idx],
                             describe([units[i].name for i in idx]), stop_at, on_stop)
            for i, (state, res) in zip(idx, done, strict=True):
                out[i] = (state, res, stack)
        return out

    def _due(self, step: int, last: dict) -> bool:
        if self.save_every:
            return step // self.save_every > last["step"] // self.save_every
        return time.perf_counter() - last["time"] >= self.save_interval

    def _checkpoint(self, units, states, curves, step):
        stack = [u.prefix for u in units]
        for u, s, curve in zip(units, states, curves, strict=True):
            self.store.save_step(u.prefix, step, s, keep_older=True,
                                 meta={"curve": [r._asdict() for r in curve], "stack": stack})
        for u in units:  # only once the whole stack holds step
            self.store.drop_steps_before(u.prefix, step)

    def _stack(self, units, points):
        """``(state, mask, data_key, history)`` of units joined along the replicate
        axis (as they are for one unreplicated unit)."""
        keys = tuple(self.data_key if u.data_key is None else u.data_key for u in units)
        dynamic = self.trainer.updater is not None  # the mask lives in the state
        if len(units) == 1 and not self.stacked:
            ((state, history),) = points
            return state, None if dynamic else units[0].mask, keys[0], history
        state = _concat(tuple(s for s, _ in points), self.stacked)
        mask = None if dynamic else _concat(tuple(u.mask for u in units), self.stacked)
        return state, mask, _concat(keys, self.stacked), _stack_records([h for _, h in points])

    def _fit(self, units, points, description, stop_at, on_stop):
        plain = len(units) == 1 and not self.stacked
        parts = tuple((i * (self.rows or 1), self.rows) for i in range(len(units)))
        state, mask, data_key, history = self._stack(units, points)
        if self.mesh is not None and mask is not None:  # masks follow their params (a mask computed from
            # placed weights would else differ in sharding from a fresh one: a recompile)
            from lotto_jax.sharding import param_shardings, place

            mask = place(mask, param_shardings(mask, self.mesh))
        curves = [list(h) for _, h in points]
        steps = self.trainer.config.steps
        last = {"step": int(np.max(np.asarray(state.step))), "time": time.perf_counter()}

        bar = ProgressBar(description, total=steps, done=last["step"], enabled=self.progress)

        def callback(st, rec):
            bar.update(rec)
            for curve, r in zip(curves, [rec] if plain else _split_record(rec, parts),
                                strict=True):
                curve.append(r)
            new = None if self.on_eval is None else self.on_eval(st, rec)
            st = st if new is None else new  # the hook may change the state
            step = int(rec.step)
            if self.store is not None and 0 < step < steps and self._due(step, last):
                self._checkpoint(units, [st] if plain else _split(st, parts), curves, step)
                last.update(step=step, time=time.perf_counter())
            return new

        kw = dict(data_key=data_key, hold_lr=units[0].hold, callback=callback,
                  replicates=not plain)
        t0, snap = time.perf_counter(), self.clock.snapshot()
        with bar:
            if stop_at is not None and on_stop is not None:
                if int(np.max(np.asarray(state.step))) > stop_at:
                    raise CorruptCheckpointError(
                        f"{units[0].prefix}: resumed at step {int(np.max(state.step))} "
                        f"but the rewind point of step {stop_at} was never saved"
                    )
                state, res = train.fit(self.timed, state, mask, self.dataset,
                                       until=stop_at, history=history, **kw)
                history = res.curve
                on_stop(state)
            state, res = train.fit(self.timed, state, mask, self.dataset, history=history,
                                   **kw)
        spent = self.clock.since(snap)
        self.clock.totals["train"] += (time.perf_counter() - t0 - spent["eval_s"]
                                       - spent["checkpoint_s"] - spent["prune_s"])
        if plain:
            return [(state, res)]
        curves = [_split_record(r, parts) for r in res.curve]
        return [(s, train.summarize([c[i] for c in curves]))
                for i, s in enumerate(_split(state, parts))]
