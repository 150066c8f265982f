"""Kill-and-resume harness shared by the per-command resume tests.

:func:`lotto` runs the installed ``lotto`` entry point in a subprocess (CPU, a
shared persistent compilation cache so reruns compile little). With ``kill_after``
or ``kill_in`` the run store SIGKILLs the process itself at that item
(``LOTTO_KILL_AFTER``: right after the item's commit; ``LOTTO_KILL_IN``: after orbax
wrote it, before its manifest: a partial item), so the kill lands at an exact,
named point: mid-training after a checkpoint, inside a checkpoint write, between
the units of a stack, during a control's training. :func:`assert_one_line_error`
checks a refusal as a person reads it (one ``lotto: error:`` line, no traceback).
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp

LOTTO = shutil.which("lotto", path=os.path.dirname(sys.executable)) or "lotto"


def xla_cache_env(cache_dir) -> dict[str, str]:
    """The environment of a subprocess's persistent XLA cache: the session's
    (``LOTTO_TESTS_XLA_CACHE``, tests/conftest.py), shared with the tests' own
    process, or else ``cache_dir``."""
    return {"JAX_COMPILATION_CACHE_DIR": os.environ.get("LOTTO_TESTS_XLA_CACHE")
            or str(cache_dir),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def lotto(args, *, cache_dir, kill_after=None, kill_in=None, timeout=600,
          in_process=False):
    """Runs ``lotto ARGS``; returns the CompletedProcess (stdout, stderr as text).
    ``in_process``: through :func:`here` instead (a run that is not killed)."""
    if in_process:
        assert not (kill_after or kill_in)
        return here(args)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **xla_cache_env(cache_dir)}
    env.pop("LOTTO_KILL_AFTER", None)
    env.pop("LOTTO_KILL_IN", None)
    if kill_after:
        env["LOTTO_KILL_AFTER"] = kill_after
    if kill_in:
        env["LOTTO_KILL_IN"] = kill_in
    return subprocess.run([LOTTO, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def here(args):
    """Runs ``lotto ARGS`` through the entry point's function in this process (no
    kill: for the uninterrupted reference runs, which need no interpreter, JAX and
    lotto import of their own); returns a CompletedProcess like :func:`lotto`'s.
    The programs are the subprocesses' (the same persistent XLA cache and matmul
    precision: tests/conftest.py)."""
    import contextlib
    import io

    from lotto_jax.runs import cli

    assert not {"LOTTO_KILL_AFTER", "LOTTO_KILL_IN"} & set(os.environ)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main([str(a) for a in args])
    return subprocess.CompletedProcess(["lotto", *map(str, args)], status,
                                       out.getvalue(), err.getvalue())


def assert_killed(proc):
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])


def assert_ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def items(directory):
    """The committed orbax items of a run directory (relative paths)."""
    return sorted(os.path.relpath(p, directory)[: -len(".manifest.json")]
                  for p in glob.glob(os.path.join(directory, "**", "*.manifest.json"),
                                     recursive=True))


def assert_same_run(a, b, *, ignore=("config.json",)):
    """Every committed item bit-equal and every JSON record (but ``ignore``) equal."""
    assert items(a) == items(b)
    ckpt = ocp.StandardCheckpointer()
    for item in items(a):
        x, y = ckpt.restore(os.path.join(a, item)), ckpt.restore(os.path.join(b, item))
        import jax

        for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=item)
    ja = sorted(os.path.relpath(p, a) for p in glob.glob(os.path.join(a, "**", "*.json"),
                                                         recursive=True))
    ja = [j for j in ja if not j.endswith(".manifest.json") and j not in ignore]
    jb = sorted(os.path.relpath(p, b) for p in glob.glob(os.path.join(b, "**", "*.json"),
                                                         recursive=True))
    assert ja == [j for j in jb if not j.endswith(".manifest.json") and j not in ignore]
    for j in ja:
        with open(os.path.join(a, j)) as f, open(os.path.join(b, j)) as g:
            assert json.load(f) == json.load(g), j


def engine_lines(proc):
    """The engine's decisions (``lotto: PREFIX: ...`` lines on stderr)."""
    return [line[len("lotto: "):] for line in proc.stderr.splitlines()
            if line.startswith("lotto: ") and ": " in line[len("lotto: "):]]


def shared_base(tmp_path_factory):
    """A directory shared by this session's xdist workers: the datasets and the
    persistent XLA cache of the resume tests."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    d = base / "resume"
    d.mkdir(exist_ok=True)
    return d


def made_once(base, name, make):
    """``base/NAME``, made by ``make(path)`` once per session: the first of the
    xdist workers to ask makes it under a file lock, the others wait for it and
    share it (a module-scoped fixture alone would run once per worker). Tests
    read it or copy it, never write into it."""
    path, done = base / name, base / f"{name}.done"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            make(path)
            done.touch()
    return path


def tiny_npz(base, name="tiny", *, seed=0, n_train=512, n_test=256) -> str:
    """``base/NAME.npz`` (made once, whichever worker comes first): ``n_train`` and
    ``n_test`` examples of 40 features, 10 classes given by ``argmax(x @ w)``: a
    problem the MLP learns."""
    path = base / f"{name}.npz"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            r = np.random.default_rng(seed)
            w = r.normal(size=(40, 10))
            x_train, x_test = (r.normal(size=(n, 40)).astype(np.float32)
                               for n in (n_train, n_test))
            np.savez(base / f"{name}.tmp.npz", x_train=x_train,
                     y_train=np.argmax(x_train @ w, 1), x_test=x_test,
                     y_test=np.argmax(x_test @ w, 1))
            os.replace(base / f"{name}.tmp.npz", path)
    return str(path)


def assert_one_line_error(result, *names):
    """rc != 0 (2, not an abort), one stderr line ``lotto: error: ...`` naming
    every one of ``names``, no traceback. The engine's progress lines before it
    (``lotto: round_000: finished, kept``: what the run did before it stopped)
    are not part of the error."""
    err = result.stderr
    assert result.returncode == 2, (result.returncode, err[-3000:])
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines()
             if not re.match(r"lotto: [\w/+ .-]+: (finished, kept|training from step \d+|"
                             r"completed from its stored final)$", line)]
    assert len(lines) == 1 and lines[0].startswith("lotto: error: "), err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]
