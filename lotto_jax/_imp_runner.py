"""How :mod:`lotto_jax.imp` trains: stacks of networks, checkpoints written behind,
and the wall-time clock.

* :class:`Runner` trains *units* (a trunk round or a control round, each with a
  leading replicate axis when replicated) from their latest checkpoints, as few
  vmapped stacks as possible (one per resume step): the unit states, masks and data
  keys are concatenated along the replicate axis, ``train.fit(replicates=True)``
  trains them, and the results and mid-round checkpoints are split back per unit.
  A single unreplicated unit trains unvmapped.
* :class:`WriteBehind` runs a :class:`lotto_jax.store.RunStore`'s writes in call
  order on one background thread; reads wait only for queued writes to their path.
* :class:`Clock` splits wall time into train, eval, prune and checkpoint.

Private: the public entry is :func:`lotto_jax.imp.run_imp`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import masks, train
from lotto_jax._types import Mask
from lotto_jax.store import CorruptCheckpointError, RunStore

__all__ = ["Clock", "Runner", "TimedTrainer", "Unit", "WriteBehind", "abstract"]


@functools.partial(jax.jit, static_argnums=(0, 4))
def _start(trainer, weights, mask, step, stacked):
    """The start state of a round: masked weights, fresh optimizer state, ``step``
    (per replicate when ``stacked``)."""

    def one(w, m):
        return trainer.init(masks.apply(w["params"], m),
                            jax.tree.map(jnp.copy, w["model_state"]), step=step)

    return jax.vmap(one)(weights, mask) if stacked else one(weights, mask)


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


_RECORD_VALUES = ("train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy")


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


class Clock:
    """Wall time per kind of work; nested measurements count once (the outer)."""

    KINDS = ("train", "eval", "prune", "checkpoint")

    def __init__(self):
        self.totals = dict.fromkeys(self.KINDS, 0.0)
        self._busy = False

    @contextlib.contextmanager
    def __call__(self, kind: str):
        if self._busy:
            yield
            return
        self._busy, t = True, time.perf_counter()
        try:
            yield
        finally:
            self.totals[kind] += time.perf_counter() - t
            self._busy = False

    def snapshot(self) -> dict[str, float]:
        return dict(self.totals)

    def since(self, snap: Mapping[str, float]) -> dict[str, float]:
        return {f"{k}_s": self.totals[k] - snap[k] for k in self.KINDS}


class TimedTrainer:
    """The trainer, its evaluations timed (``fit`` calls ``trainer.evaluate``)."""

    def __init__(self, trainer: train.Trainer, clock: Clock):
        self._trainer, self._clock = trainer, clock

    def __getattr__(self, name):
        return getattr(self._trainer, name)

    def evaluate(self, *args, **kw):
        with self._clock("eval"):
            return jax.block_until_ready(self._trainer.evaluate(*args, **kw))


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


class WriteBehind:
    """A :class:`RunStore` whose writes run in call order on one background thread.

    ``save``, ``save_step``, ``write_json`` and ``clear_steps`` are queued (trees
    first copied on device: the caller may donate its buffers right away); each
    runs exactly as the synchronous call would, in order, so the store's commit
    protocol holds unchanged. A read waits for the queued writes that touch its
    path (and only those). After a failed write the queue stops (later writes are
    dropped, never committed out of order) and the error is raised by the next
    call.
    """

    def __init__(self, store: RunStore, clock: Clock):
        self.store, self.directory, self._clock = store, store.directory, clock
        # the thread's own store (own orbax checkpointer): reads never share one
        # with a save in flight
        self._out = RunStore(store.directory)
        self._queue: queue.Queue = queue.Queue()
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="lotto-store", daemon=True)
        self._thread.start()

    def _work(self):
        while True:
            job = self._queue.get()
            if job is None:
                self._queue.task_done()
                return
            path, fn, args, kw = job
            try:
                if self._error is None:
                    fn(*args, **kw)
            except BaseException as e:  # raised in the caller's thread
                self._error = e
            finally:
                with self._lock:
                    self._pending.remove(path)
                self._queue.task_done()

    def _check(self):
        if self._error is not None:
            raise self._error

    def _put(self, path, fn, *args, **kw):
        with self._clock("checkpoint"):
            self._check()
            with self._lock:
                self._pending.append(path)
            self._queue.put((path, fn, args, kw))

    def _wait_for(self, path: str) -> None:
        with self._lock:
            busy = any(_overlaps(path, p) for p in self._pending)
        if busy:
            self.flush()
        self._check()

    def flush(self) -> None:
        """Waits until every queued write is done; raises a failed write's error."""
        with self._clock("checkpoint"):
            self._queue.join()
            self._check()

    def close(self, *, raise_errors: bool = True) -> None:
        """Flushes and stops the thread (errors kept quiet when ``raise_errors`` is
        False, e.g. while another exception propagates); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.join()
            if raise_errors:
                self._check()
        finally:
            self._queue.put(None)
            self._thread.join()

    # writes
    def save(self, item, tree, *, meta=None):
        with self._clock("checkpoint"):
            self._put(item, self._out.save, item, jax.device_put(tree, may_alias=False),
                      meta=meta)

    def save_step(self, prefix, step, tree, *, meta=None):
        with self._clock("checkpoint"):
            self._put(f"{prefix}/checkpoints", self._out.save_step, prefix, step,
                      jax.device_put(tree, may_alias=False), meta=meta)

    def write_json(self, name, obj):
        self._put(name, self._out.write_json, name, copy.deepcopy(obj))

    def clear_steps(self, prefix):
        self._put(f"{prefix}/checkpoints", self._out.clear_steps, prefix)

    # reads
    def _read(self, path, fn, *args):
        with self._clock("checkpoint"):
            self._wait_for(path)
            return fn(*args)

    def has(self, item):
        return self._read(item, self.store.has, item)

    def exists(self, name):
        return self._read(name, self.store.exists, name)

    def verify(self, item):
        return self._read(item, self.store.verify, item)

    def restore(self, item, target=None):
        return self._read(item, self.store.restore, item, target)

    def read_json(self, name):
        return self._read(name, self.store.read_json, name)

    def latest_step_number(self, prefix):
        return self._read(f"{prefix}/checkpoints", self.store.latest_step_number, prefix)

    def latest_step(self, prefix, target=None):
        return self._read(f"{prefix}/checkpoints", self.store.latest_step, prefix, target)

    def check_record(self, name, record, *, mutable=()):
        self.flush()
        return self.store.check_record(name, record, mutable=mutable)

    def path(self, *parts):
        return self.store.path(*parts)


class Unit(NamedTuple):
    """One network to train: a trunk round or a control round (maybe replicated)."""

    prefix: str  # its directory in the run
    name: str  # "round" or the control's name
    weights: Any  # the rewind point {"params", "model_state"}
    mask: Mask
    step: int  # start step
    hold: int  # hold_lr


class Runner:
    """Trains units (trunk rounds or control rounds), stacked, with checkpoints."""

    def __init__(self, trainer, dataset, data_key, store, *, save_every, save_interval,
                 progress, stacked, mesh, clock):
        self.trainer, self.dataset, self.data_key = trainer, dataset, data_key
        self.timed = TimedTrainer(trainer, clock)
        self.store, self.save_every, self.save_interval = store, save_every, save_interval
        self.progress, self.stacked, self.mesh, self.clock = progress, stacked, mesh, clock
        self.rows = int(np.shape(data_key)[0]) if stacked else None

    def start(self, u: Unit):
        state = _start(self.trainer, u.weights, u.mask, jnp.asarray(u.step, jnp.int32),
                       self.stacked)
        if self.mesh is not None:
            from lotto_jax.sharding import place_state

            state = place_state(state, self.mesh, tx=self.trainer.tx)
        return state

    def resume_point(self, u: Unit):
        """``(state, curve so far)``: the latest checkpoint of ``u``, or its start."""
        if self.store is not None and self.store.latest_step_number(u.prefix) is not None:
            # restored with the placement of a fresh start state: the same signature
            state, meta = self.store.latest_step(u.prefix, abstract(self.start(u)))
            return state, [train.EvalRecord(**r) for r in meta["curve"]]
        return self.start(u), []

    def train(self, units: Sequence[Unit], describe: Callable[[list[str]], str], *,
              stop_at=None, on_stop=None) -> list[tuple[Any, train.FitResult]]:
        """Trains ``units`` from their latest checkpoints (or starts) to the end,
        as few stacks as possible (one per resume step); ``[(state, result)]``.

        With ``stop_at=K``, training pauses at step ``K`` and ``on_stop(state)``
        runs (to save θK) before it goes on.
        """
        points = [self.resume_point(u) for u in units]
        groups: dict[tuple, list[int]] = {}
        for i, ((state, history), u) in enumerate(zip(points, units, strict=True)):
            at = (int(np.max(np.asarray(state.step))), len(history), u.hold)
            groups.setdefault(at, []).append(i)
        out: list[Any] = [None] * len(units)
        for idx in groups.values():
            done = self._fit([units[i] for i in idx], [points[i] for i in idx],
                             describe([units[i].name for i in idx]), stop_at, on_stop)
            for i, r in zip(idx, done, strict=True):
                out[i] = r
        return out

    def _due(self, step: int, last: dict) -> bool:
        if self.save_every:
            return step // self.save_every > last["step"] // self.save_every
        return time.perf_counter() - last["time"] >= self.save_interval

    def _fit(self, units, points, description, stop_at, on_stop):
        plain = len(units) == 1 and not self.stacked
        parts = tuple((i * (self.rows or 1), self.rows) for i in range(len(units)))
        if plain:
            ((state, history),) = points
            mask, data_key = units[0].mask, self.data_key
        else:
            state = _concat(tuple(s for s, _ in points), self.stacked)
            mask = _concat(tuple(u.mask for u in units), self.stacked)
            data_key = _concat((self.data_key,) * len(units), self.stacked)
            history = _stack_records([h for _, h in points])
        if self.mesh is not None:  # masks follow their params (a mask computed from
            # placed weights would else differ in sharding from a fresh one: a recompile)
            from lotto_jax.sharding import param_shardings, place

            mask = place(mask, param_shardings(mask, self.mesh))
        curves = [list(h) for _, h in points]
        steps = self.trainer.config.steps
        last = {"step": int(np.max(np.asarray(state.step))), "time": time.perf_counter()}

        def callback(st, rec):
            recs = [rec] if plain else _split_record(rec, parts)
            for curve, r in zip(curves, recs, strict=True):
                curve.append(r)
            step = int(rec.step)
            if self.store is None or not 0 < step < steps or not self._due(step, last):
                return
            states = [st] if plain else _split(st, parts)
            for u, s, curve in zip(units, states, curves, strict=True):
                self.store.save_step(u.prefix, step, s,
                                     meta={"curve": [r._asdict() for r in curve]})
            last.update(step=step, time=time.perf_counter())

        kw = dict(data_key=data_key, hold_lr=units[0].hold, callback=callback,
                  replicates=not plain, progress=self.progress, description=description)
        t0, snap = time.perf_counter(), self.clock.snapshot()
        if stop_at is not None and on_stop is not None:
            if int(np.max(np.asarray(state.step))) > stop_at:
                raise CorruptCheckpointError(
                    f"{units[0].prefix}: resumed at step {int(np.max(state.step))} but "
                    f"the rewind point of step {stop_at} was never saved"
                )
            state, res = train.fit(self.timed, state, mask, self.dataset, until=stop_at,
                                   history=history, **kw)
            history = res.curve
            on_stop(state)
        state, res = train.fit(self.timed, state, mask, self.dataset, history=history, **kw)
        spent = self.clock.since(snap)
        self.clock.totals["train"] += (time.perf_counter() - t0 - spent["eval_s"]
                                       - spent["checkpoint_s"] - spent["prune_s"])
        if plain:
            return [(state, res)]
        curves = [_split_record(r, parts) for r in res.curve]
        return [(s, train.summarize([c[i] for c in curves]))
                for i, s in enumerate(_split(state, parts))]
