"""Checkpoints written behind training, and the wall-time clock of a run.

* :class:`WriteBehind` runs a :class:`lotto_jax.runs.store.RunStore`'s writes in call
  order on one background thread; reads wait only for queued writes to their path.
* :class:`Clock` splits wall time into train, eval, prune and checkpoint;
  :class:`TimedTrainer` times a trainer's evaluations with it.
"""

from __future__ import annotations

import contextlib
import copy
import queue
import threading
import time
from collections.abc import Mapping

import jax

from lotto_jax import train
from lotto_jax.runs.store import RunStore

__all__ = ["Clock", "TimedTrainer", "WriteBehind"]


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

    def save_step(self, prefix, step, tree, *, meta=None, keep_older=False):
        with self._clock("checkpoint"):
            self._put(f"{prefix}/checkpoints", self._out.save_step, prefix, step,
                      jax.device_put(tree, may_alias=False), meta=meta,
                      keep_older=keep_older)

    def drop_steps_before(self, prefix, step):
        self._put(f"{prefix}/checkpoints", self._out.drop_steps_before, prefix, step)

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

    def meta(self, item):
        return self._read(item, self.store.meta, item)

    def steps(self, prefix):
        return self._read(f"{prefix}/checkpoints", self.store.steps, prefix)

    def read_json(self, name):
        return self._read(name, self.store.read_json, name)

    def latest_step_number(self, prefix):
        return self._read(f"{prefix}/checkpoints", self.store.latest_step_number, prefix)

    def latest_step(self, prefix, target=None):
        return self._read(f"{prefix}/checkpoints", self.store.latest_step, prefix, target)

    def check_record(self, name, record, *, mutable=(), defaults=None):
        self.flush()
        return self.store.check_record(name, record, mutable=mutable, defaults=defaults)

    def path(self, *parts):
        return self.store.path(*parts)
