"""One writer per run directory: the lock file ``RUN/.lock``.

:meth:`lotto_jax.runs.store.RunStore.open` takes the lock and :meth:`RunStore.close`
releases it; this module holds the mechanics. The lock is a small JSON file
``{"pid", "host", "started", "token", "proc_start"}`` that comes into existence
complete and atomically: it is written to a private temp file, then hard-linked to
``.lock``, which fails if the name exists (the ``O_CREAT | O_EXCL`` guarantee, with
the contents already there; where hard links are unsupported, ``O_CREAT | O_EXCL``
itself). So two processes never both hold it, and nobody reads a half-written one.

An existing lock is

* ours (this process holds the directory): re-entered, counted, released on the
  last close;
* held by a live process: refused with :class:`RunLockedError` naming its PID and
  host;
* left by a dead process on this host (``os.kill(pid, 0)`` raises
  ``ProcessLookupError``, or the PID now belongs to a process started later):
  taken over, with a note on stderr;
* from another host: refused, since its liveness cannot be checked here; the
  message says to delete the file if no run uses the directory.

A takeover is serialized by ``flock`` on the directory, so two processes finding
the same dead lock never both take it. Locks still held at interpreter exit are
released (``atexit``); a killed process leaves its lock, which the next run takes
over.

Private: the public names are :class:`RunLockedError` (re-exported by
:mod:`lotto_jax.runs.store`) and ``RunStore.open`` / ``close``.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
import threading
import uuid
from typing import Any

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError", "acquire", "describe_holder", "read"]

LOCK_NAME = ".lock"


class RunLockedError(ValueError):
    """Another process holds the run directory (its lock file ``RUN/.lock``)."""


_held: dict[str, RunLock] = {}  # directory -> this process's lock on it
_guard = threading.Lock()


def _proc_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def read(path: str) -> dict[str, Any] | None:
    """The lock at ``path`` as a dict; None if absent; ``{}`` if unreadable."""
    try:
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _alive(info: dict[str, Any]) -> bool:
    """Whether the process of a lock written on this host still runs."""
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True  # cannot tell: treat as held
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    recorded, now = info.get("proc_start"), _proc_start(pid)
    return not (isinstance(recorded, int) and now is not None and now != recorded)


def describe_holder(info: dict[str, Any]) -> str:
    """``pid 123 on host h (since 2024-...)``."""
    since = f" (since {info['started']})" if info.get("started") else ""
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}{since}"


def status(directory: str) -> tuple[str, dict[str, Any]] | None:
    """``("alive" | "dead" | "foreign" | "unreadable", info)`` of the lock in
    ``directory``, or None when there is none."""
    directory = os.path.abspath(directory)
    info = read(os.path.join(directory, LOCK_NAME))
    if info is None:
        return None
    if not info:
        return "unreadable", info
    if info.get("host") != socket.gethostname():
        return "foreign", info
    if info.get("pid") == os.getpid():  # ours, or a dead process's with our PID
        mine = directory in _held and _held[directory].info["token"] == info.get("token")
        return ("alive" if mine else "dead"), info
    return ("alive" if _alive(info) else "dead"), info


class RunLock:
    """This process's hold on one run directory (re-entrant: counted)."""

    def __init__(self, directory: str, info: dict[str, Any]):
        self.directory, self.info, self.count = directory, info, 1
        self.path = os.path.join(directory, LOCK_NAME)

    def release(self) -> None:
        """Drops one hold; the last one deletes the lock file (if still ours)."""
        with _guard:
            self.count -= 1
            if self.count > 0:
                return
            _held.pop(self.directory, None)
            current = read(self.path)
            if current and current.get("token") == self.info["token"]:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)


def _create(path: str, info: dict[str, Any]) -> bool:
    """Creates the lock file with ``info``; False if it exists."""
    data = json.dumps(info, indent=2, sort_keys=True).encode()
    tmp = f"{path}.tmp-{os.getpid()}-{info['token'][:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # atomic, fails if the lock exists
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here: O_CREAT | O_EXCL
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    finally:
        os.remove(tmp)


@contextlib.contextmanager
def _dir_flock(directory: str):
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _refusal(path: str, state: str, info: dict[str, Any]) -> RunLockedError:
    directory = os.path.dirname(path)
    if state == "alive":
        return RunLockedError(
            f"{directory}: another process is writing this run directory: "
            f"{describe_holder(info)}; wait for it to finish or stop it (lock file {path})"
        )
    if state == "foreign":
        return RunLockedError(
            f"{directory}: the run directory is locked by {describe_holder(info)}, "
            f"another host, whose process cannot be checked from {socket.gethostname()}; "
            f"if no run is using the directory, delete the stale lock file {path}"
        )
    return RunLockedError(
        f"{path}: the run directory is locked but the lock file is unreadable; if no "
        "run is using the directory, delete it"
    )


def acquire(directory: str) -> RunLock:
    """Takes (or re-enters) the lock of ``directory`` (which must exist).

    Raises:
      RunLockedError: a live process, another host or an unreadable lock holds it.
    """
    directory = os.path.abspath(directory)
    path = os.path.join(directory, LOCK_NAME)
    with _guard:
        if directory in _held:
            lock = _held[directory]
            current = read(path)
            if (current and current.get("token") == lock.info["token"]
                    and lock.info["pid"] == os.getpid()):
                lock.count += 1
                return lock
            _held.pop(directory)  # deleted or replaced behind our back, or a forked
            # child's copy of its parent's table
        info = {
            "pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "token": uuid.uuid4().hex, "proc_start": _proc_start(os.getpid()),
        }
        for _ in range(10):
            if _create(path, info):
                lock = _held[directory] = RunLock(directory, info)
                return lock
            found = status(directory)
            if found is None:
                continue  # released meanwhile: try again
            state, old = found
            if state != "dead":
                raise _refusal(path, state, old)
            with _dir_flock(directory):  # one taker of a dead lock
                if read(path) != old:
                    continue
                os.remove(path)
                if not _create(path, info):
                    continue
            print(f"lotto: note: {directory}: took over the lock of {describe_holder(old)}, "
                  "which has exited", file=sys.stderr, flush=True)
            lock = _held[directory] = RunLock(directory, info)
            return lock
        raise RunLockedError(f"{path}: could not take the lock (it keeps changing)")


@atexit.register
def _release_all() -> None:
    for lock in list(_held.values()):
        if lock.info["pid"] == os.getpid():  # not a forked child's copy
            lock.count = 1
            lock.release()
