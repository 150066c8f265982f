"""The run store: a directory of orbax checkpoints and JSON records that a killed run
resumes from.

Every arrow of a driver's loop ends here (DESIGN.md): the resolved config, the
initial weights θ0, the rewind point θK, and for each round its mask, its trained
weights and its metrics. Pytrees are written with orbax's ``StandardCheckpointHandler``
(the format of ``orbax.checkpoint.StandardCheckpointer``), so any JAX code can read a
rewind point or a ticket with plain orbax; records are JSON. Nothing goes through
pickle.

The layout of an IMP run directory is in :mod:`lotto_jax.runs.imp_loop`; every command
lays its units out the same way (:mod:`lotto_jax.runs.engine`).

Each orbax directory ``X/`` comes with ``X.manifest.json``, its commit record: the
size and SHA-256 of every file orbax wrote, plus small metadata (e.g. the curve so far
of a mid-round checkpoint). It is written atomically (temp file + ``os.replace``)
after orbax has finalised ``X/`` (orbax itself writes to a temporary directory and
renames it). So an item exists only when its manifest does; a directory without one
is debris of a killed save and is deleted before the next save, and an item whose
files disagree with its manifest (truncated, rewritten, missing, extra) raises
:class:`CorruptCheckpointError` naming the file. Nothing unverified is ever loaded.

One writer per run directory: :meth:`RunStore.open` creates ``RUN/.lock``
atomically and :meth:`RunStore.close` (or leaving a ``with`` block) deletes it. A
second process opening the directory gets :class:`RunLockedError` naming the
holder's PID and host; a lock whose process has died on this host is taken over
(with a note on stderr); a lock from another host is refused, since its process
cannot be checked (delete the file if it is stale). Readers (``lotto report``,
``lotto ls``) take no lock. :mod:`lotto_jax.runs.repair` discards the corrupt units of
a run so that the next run recomputes them.

Restoring with plain orbax (no lotto_jax needed), e.g. round 3's ticket and the rewind
point; pass an abstract target from ``jax.eval_shape`` to get arrays of a given
sharding::

  import orbax.checkpoint as ocp
  run = os.path.abspath("runs/imp")  # orbax wants absolute paths
  mask = ocp.StandardCheckpointer().restore(f"{run}/round_003/mask")
  theta_k = ocp.StandardCheckpointer().restore(f"{run}/rewind", jax.eval_shape(lambda: {"params": params, "model_state": {}}))

Examples:
  >>> import tempfile, jax.numpy as jnp
  >>> store = RunStore.open(tempfile.mkdtemp(), {"lr": 0.1})
  >>> store.save("init", {"w": jnp.arange(3.0)})
  >>> store.restore("init")["w"].tolist()
  [0.0, 1.0, 2.0]
  >>> RunStore.open(store.directory, {"lr": 0.2})
  Traceback (most recent call last):
  ...
  lotto_jax.runs.store.ConfigMismatchError: ...: the directory holds a run with another config: lr: 0.1 -> 0.2. Pass overwrite=True (--overwrite) to replace it, or new_dir=True (--new-dir) to start the run in a new directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax.runs import lock as _runlock
from lotto_jax.runs.jsonio import (  # noqa: F401  (re-exported)
    _flatten,
    _json_default,
    _jsonable,
    config_diff,
    write_json_atomic,
)
from lotto_jax.runs.lock import RunLockedError

__all__ = [
    "ConfigMismatchError",
    "CorruptCheckpointError",
    "RunLockedError",
    "RunStore",
    "config_diff",
    "round_name",
    "write_json_atomic",
]

_MANIFEST = ".manifest.json"
_FORMAT = "lotto_jax.store/1"  # the on-disk format name: unchanged since the first runs
_TMP = ".orbax-checkpoint-tmp"


class ConfigMismatchError(ValueError):
    """A run directory holds a run with a different config."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint or record is missing, partial or altered."""


def round_name(round: int, control: str | None = None) -> str:
    """The directory of a round (or of a control of that round) inside a run.

    Examples:
      >>> round_name(3), round_name(3, "reinit")
      ('round_003', 'controls/reinit/round_003')
    """
    name = f"round_{int(round):03d}"
    return name if control is None else f"controls/{control}/{name}"


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CorruptCheckpointError(f"{path}: not valid JSON ({e})") from None


def _file_table(directory: str) -> dict[str, list]:
    table = {}
    for root, _, files in os.walk(directory):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            table[os.path.relpath(full, directory)] = [os.path.getsize(full), digest]
    return table


def _place(x: Any, t: Any) -> Any:
    if isinstance(x, jax.Array) and getattr(t, "sharding", None) is None:
        return jnp.asarray(np.asarray(x))  # uncommitted, like a fresh array
    return x


def _fault(variable: str, item: str) -> None:
    """Fault injection for the kill-and-resume tests: SIGKILL this process when the
    environment variable names a substring of ``item`` (``LOTTO_KILL_IN``: after
    orbax wrote the item, before its manifest; ``LOTTO_KILL_AFTER``: right after
    its commit). Unset in normal use."""
    needle = os.environ.get(variable)
    if needle and needle in item:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


class RunStore:
    """A run directory: orbax checkpoints with manifests, and JSON records.

    Open one with :meth:`open` (it checks or writes ``config.json``). Items are
    named by their path relative to the directory (``"init"``,
    ``"round_002/mask"``); see the module docstring for the layout and the
    commit protocol.
    """

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        import orbax.checkpoint as ocp  # imported here: a slow import, only for runs

        self._ocp = ocp
        self._ckpt = ocp.Checkpointer(ocp.StandardCheckpointHandler())
        self._lock: _runlock.RunLock | None = None

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        directory: str,
        config: Mapping[str, Any] | None = None,
        *,
        overwrite: bool = False,
        new_dir: bool = False,
        mutable: Iterable[str] = (),
        lock: bool = True,
        defaults: Mapping[str, Any] | None = None,
    ) -> RunStore:
        """Opens (or creates) a run directory for ``config``, as its one writer.

        Args:
          directory: the run directory.
          config: the resolved config (nested dicts, e.g.
            :func:`lotto_jax.runs.common.config_to_dict`); written as ``config.json``
            in a new directory, compared with it in an existing one. ``None``
            skips the check.
          overwrite: delete an existing run in ``directory`` and start afresh.
          new_dir: if ``directory`` holds a run with another config, use the first
            of ``directory_1``, ``directory_2``, ... that is free or holds this
            config.
          mutable: dotted config names allowed to change on an existing run (e.g.
            ``"rounds"``, ``"controls"``); their new values replace the stored
            ones.
          lock: take the directory's lock file ``.lock`` (``{pid, host,
            started}``) until :meth:`close`: one writer per run directory. A
            lock left by a dead process of this host is taken over (a note on
            stderr); this process may open a directory it holds again (the lock
            is counted). In a multi-process JAX run, process 0 takes it.
          defaults: the config class's defaults: a field added since the run was
            written, at its default, does not refuse the resume.

        Returns:
          The store; :meth:`close` it (or use it as a context manager).

        Raises:
          ConfigMismatchError: the directory holds a run with a different config
            (the message lists each differing field as ``name: old -> new``).
          RunLockedError: another live process, or a process on another host,
            holds the directory (the message names its PID and host).
          ValueError: ``overwrite`` on a non-empty directory that is not a run.
        """
        mutable = tuple(mutable)
        if overwrite:
            cls._check_wipe(directory)
        candidate, i = directory, 0
        while True:
            store = cls(candidate)
            try:
                if lock and jax.process_index() == 0:  # one lock for a multi-process run
                    os.makedirs(store.directory, exist_ok=True)
                    store._lock = _runlock.acquire(store.directory)
                if overwrite and candidate == directory:
                    cls._wipe(directory)
                if config is not None:
                    store.check_record("config", config, mutable=mutable,
                                       defaults=defaults)
                else:
                    os.makedirs(store.directory, exist_ok=True)
                return store
            except ConfigMismatchError:
                store.close()
                if not new_dir:
                    raise
                i += 1
                candidate = f"{directory.rstrip('/')}_{i}"
            except BaseException:
                store.close()
                raise

    def close(self) -> None:
        """Releases the directory's lock (if :meth:`open` took it); idempotent."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @staticmethod
    def _check_wipe(directory: str) -> None:
        if not os.path.isdir(directory):
            return
        entries = [e for e in os.listdir(directory) if e != _runlock.LOCK_NAME]
        if entries and "config.json" not in entries and "driver.json" not in entries:
            raise ValueError(
                f"overwrite: {directory} is not a run directory (no config.json); "
                "refusing to delete it"
            )

    @classmethod
    def _wipe(cls, directory: str) -> None:
        """Deletes a run's contents (its lock file, held by the caller, stays)."""
        cls._check_wipe(directory)
        if not os.path.isdir(directory):
            return
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if name == _runlock.LOCK_NAME:
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)

    def path(self, *parts: str) -> str:
        """The absolute path of ``parts`` inside the run directory."""
        return os.path.join(self.directory, *parts)

    # ------------------------------------------------------------------ records
    def check_record(
        self, name: str, record: Mapping[str, Any], *, mutable: Iterable[str] = (),
        defaults: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Writes ``NAME.json`` if absent, else checks that it equals ``record``.

        Fields named in ``mutable`` may differ; the stored record is then updated.
        A field absent from the stored record and at its value in ``defaults``
        (:func:`config_diff`) is no difference.

        Raises:
          ConfigMismatchError: listing the differing fields as ``name: old -> new``.
        """
        os.makedirs(self.directory, exist_ok=True)
        path = self.path(f"{name}.json")
        new = _jsonable(dict(record))
        if os.path.exists(path):
            old = _read_json(path)
            diff = config_diff(old, new, ignore=mutable, defaults=defaults)
            if diff:
                raise ConfigMismatchError(
                    f"{self.directory}: the directory holds a run with another "
                    f"{'config' if name == 'config' else name + ' record'}: "
                    + "; ".join(diff)
                    + ". Pass overwrite=True (--overwrite) to replace it, or "
                    "new_dir=True (--new-dir) to start the run in a new directory."
                )
            if old == new:
                return new
        write_json_atomic(path, new)
        return new

    def write_json(self, name: str, obj: Any) -> None:
        """Writes a JSON record atomically (e.g. a round's ``metrics.json``)."""
        path = self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json_atomic(path, obj)

    def read_json(self, name: str) -> Any:
        """Reads a JSON record; raises :class:`CorruptCheckpointError` if garbled."""
        return _read_json(self.path(name))

    def exists(self, name: str) -> bool:
        """Whether the file or directory ``name`` exists (e.g. a completion marker)."""
        return os.path.exists(self.path(name))

    # -------------------------------------------------------------------- items
    def has(self, item: str) -> bool:
        """Whether ``item`` was committed (its manifest exists)."""
        return os.path.exists(self.path(item) + _MANIFEST)

    def save(self, item: str, tree: Any, *, meta: Mapping[str, Any] | None = None) -> None:
        """Saves a pytree of arrays as an orbax checkpoint and commits it.

        An existing item of that name is replaced (its manifest goes first).

        Args:
          item: the item's path in the run, e.g. ``"round_002/final"``.
          tree: a pytree of arrays (nested dicts, flax structs, NamedTuples).
          meta: small JSON-ready metadata kept in the manifest.
        """
        path = self.path(item)
        self._remove(item)
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        self._ckpt.save(path, args=self._ocp.args.StandardSave(tree))
        _fault("LOTTO_KILL_IN", item)  # orbax done, not committed: a partial item
        manifest = {"format": _FORMAT, "files": _file_table(path), "meta": meta or {}}
        write_json_atomic(path + _MANIFEST, manifest)
        _fault("LOTTO_KILL_AFTER", item)

    def _remove(self, item: str) -> None:
        path = self.path(item)
        if os.path.exists(path + _MANIFEST):
            os.remove(path + _MANIFEST)
        if os.path.exists(path):
            shutil.rmtree(path)
        parent, base = os.path.split(path)
        if os.path.isdir(parent):
            for name in os.listdir(parent):
                if name.startswith(base + _TMP):
                    shutil.rmtree(os.path.join(parent, name), ignore_errors=True)

    def delete(self, item: str) -> None:
        """Removes an item (manifest first, so a kill leaves no committed debris)."""
        self._remove(item)

    def verify(self, item: str) -> dict[str, Any]:
        """Checks every file of ``item`` against its manifest; returns the manifest.

        Raises:
          CorruptCheckpointError: naming the manifest or file that is missing,
            garbled, truncated, modified or unexpected.
        """
        path = self.path(item)
        mpath = path + _MANIFEST
        if not os.path.exists(mpath):
            state = "a directory without manifest" if os.path.exists(path) else "missing"
            raise CorruptCheckpointError(
                f"{path}: checkpoint is {state} ({os.path.basename(mpath)} not found): "
                "its save never finished or files were deleted"
            )
        manifest = _read_json(mpath)
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            raise CorruptCheckpointError(f"{mpath}: not a lotto_jax manifest")
        if not os.path.isdir(path):
            raise CorruptCheckpointError(f"{path}: checkpoint directory is missing")
        expected = manifest["files"]
        for rel, (size, digest) in sorted(expected.items()):
            full = os.path.join(path, rel)
            if not os.path.isfile(full):
                raise CorruptCheckpointError(f"{full}: file missing from the checkpoint")
            actual = os.path.getsize(full)
            if actual != size:
                raise CorruptCheckpointError(
                    f"{full}: {actual} bytes, the checkpoint wrote {size} "
                    "(truncated or modified)"
                )
            with open(full, "rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() != digest:
                    raise CorruptCheckpointError(
                        f"{full}: contents differ from what the checkpoint wrote "
                        "(SHA-256 mismatch: garbled or modified)"
                    )
        for root, _, files in os.walk(path):
            for name in files:
                rel = os.path.relpath(os.path.join(root, name), path)
                if rel not in expected:
                    raise CorruptCheckpointError(
                        f"{os.path.join(root, name)}: unexpected file in the checkpoint"
                    )
        return manifest

    def meta(self, item: str) -> dict[str, Any]:
        """The metadata saved with ``item`` (reads only its manifest)."""
        manifest = _read_json(self.path(item) + _MANIFEST)
        return manifest.get("meta", {})

    def restore(self, item: str, target: Any = None) -> Any:
        """Verifies and restores a committed item.

        Args:
          item: the item's path in the run.
          target: an abstract pytree (``jax.eval_shape``) giving the structure,
            shapes, dtypes and shardings to restore to; ``None`` restores the saved
            structure as nested dicts. A leaf with a ``sharding`` is restored
            committed to it; a leaf without one (what ``jax.eval_shape`` gives)
            becomes an uncommitted array on the default device, like a freshly
            created one, so that jitted functions see the signature of fresh
            arrays and do not compile again.

        Returns:
          The pytree.

        Raises:
          CorruptCheckpointError: the item is missing, partial or altered, or orbax
            fails to read it (the message names the path).
        """
        self.verify(item)
        path = self.path(item)
        try:
            tree = self._ckpt.restore(path, args=self._ocp.args.StandardRestore(target))
        except Exception as e:  # orbax/tensorstore raise many types
            raise CorruptCheckpointError(
                f"{path}: orbax could not restore the checkpoint: "
                f"{type(e).__name__}: {e}"
            ) from e
        return tree if target is None else jax.tree.map(_place, tree, target)

    # --------------------------------------------------- step series (resume)
    def save_step(
        self, prefix: str, step: int, tree: Any, *, meta: Mapping[str, Any] | None = None,
        keep_older: bool = False,
    ) -> None:
        """Saves a mid-run checkpoint ``PREFIX/checkpoints/step_NNNNNNNN`` and then
        deletes the older ones of the series (only the latest is kept), unless
        ``keep_older``: the engine keeps a stack's previous checkpoints until
        every unit of the stack has its new one (:meth:`drop_steps_before`)."""
        item = f"{prefix}/checkpoints/step_{int(step):08d}"
        self.save(item, tree, meta={"step": int(step), **(meta or {})})
        if not keep_older:
            self.drop_steps_before(prefix, int(step))

    def drop_steps_before(self, prefix: str, step: int) -> None:
        """Deletes the checkpoints of a series older than ``step``."""
        for old in self._steps(prefix):
            if old < int(step):
                self.delete(f"{prefix}/checkpoints/step_{old:08d}")

    def steps(self, prefix: str) -> list[int]:
        """The steps of a series' committed checkpoints, ascending."""
        return self._steps(prefix)

    def _steps(self, prefix: str) -> list[int]:
        directory = self.path(prefix, "checkpoints")
        if not os.path.isdir(directory):
            return []
        steps = []
        for name in os.listdir(directory):
            if name.startswith("step_") and name.endswith(_MANIFEST):
                digits = name[len("step_") : -len(_MANIFEST)]
                if digits.isdigit():
                    steps.append(int(digits))
        return sorted(steps)

    def latest_step_number(self, prefix: str) -> int | None:
        """The step of the latest committed checkpoint of a series, or None."""
        steps = self._steps(prefix)
        return steps[-1] if steps else None

    def latest_step(self, prefix: str, target: Any = None) -> tuple[Any, dict] | None:
        """The latest committed checkpoint of a series as ``(tree, meta)``, or None.

        Uncommitted debris of a killed save is ignored (and deleted by the next
        save); a committed checkpoint that fails verification raises
        :class:`CorruptCheckpointError`.
        """
        steps = self._steps(prefix)
        if not steps:
            return None
        item = f"{prefix}/checkpoints/step_{steps[-1]:08d}"
        return self.restore(item, target), self.meta(item)

    def clear_steps(self, prefix: str) -> None:
        """Deletes a series' checkpoints (after the run they belong to finished)."""
        directory = self.path(prefix, "checkpoints")
        for step in self._steps(prefix):
            self.delete(f"{prefix}/checkpoints/step_{step:08d}")
        shutil.rmtree(directory, ignore_errors=True)
