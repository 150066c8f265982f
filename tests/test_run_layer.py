"""The run layer around the store: one writer per run directory (the lock),
``lotto imp --repair``, ``lotto ls``, and the CLI's refusal to hide a broken module.

The runs are the tiny ones of tests/test_cli_errors.py (a random 40-feature
``.npz``, an MLP, 20 steps) with 2 rounds, a shuffle control and a checkpoint at
step 10. One uninterrupted run is made once per session (file lock, shared by the
xdist workers) and is the truth the repaired runs are compared with: every mask and
final weight bit for bit, every ``metrics.json`` byte for byte. Errors go through
the ``lotto`` entry point in a subprocess; the runs that succeed go through
``cli.main`` in this process (no second interpreter start).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from _killrun import made_once
from test_cli_errors import (
    TINY,
    _env,
    assert_one_line_error,
    finished_imp,
    imp_args,
    lotto,
    shared,
)

from lotto_jax.runs import cli
from lotto_jax.runs.store import RunLockedError, RunStore

__all__ = ["finished_imp", "shared"]  # the fixtures, imported

CRASH = """
import os, sys
from lotto_jax.runs import cli
from lotto_jax.runs.store import RunStore
save_step = RunStore.save_step
def crash(self, prefix, step, tree, **kw):  # dies right after round 1's checkpoint
    save_step(self, prefix, step, tree, **kw)
    if prefix == "round_002":
        os._exit(9)
RunStore.save_step = crash
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def reference(finished_imp):
    """The uninterrupted 2-round run (made once per session)."""
    return finished_imp[0]


def copy_of(reference, tmp_path, name="run"):
    d = tmp_path / name
    shutil.copytree(reference, d)
    return d


def data_file(item):
    files = sorted(p for p in item.rglob("*") if p.is_file() and p.parent.name == "d")
    assert files, item
    return files[0]


def assert_same_run(d, ref):
    """Every item and metrics.json of ``ref`` equals ``d``'s; no leftovers."""
    items = sorted(os.path.relpath(p, ref)[: -len(".manifest.json")]
                   for p in glob.glob(os.path.join(ref, "**", "*.manifest.json"), recursive=True))
    mine = sorted(os.path.relpath(p, d)[: -len(".manifest.json")]
                  for p in glob.glob(os.path.join(d, "**", "*.manifest.json"), recursive=True))
    assert mine == items and "round_002/mask" in items
    ckpt = ocp.StandardCheckpointer()
    for item in items:
        a, b = ckpt.restore(os.path.join(d, item)), ckpt.restore(os.path.join(ref, item))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=item)
    metrics = sorted(os.path.relpath(p, ref)
                     for p in glob.glob(os.path.join(ref, "**", "metrics.json"), recursive=True))
    assert len(metrics) == 5  # rounds 0-2, shuffle 1-2
    for rel in metrics:
        with open(os.path.join(d, rel)) as f, open(os.path.join(ref, rel)) as g:
            assert f.read() == g.read(), rel
    assert not os.path.exists(os.path.join(d, ".lock"))


def run_in_process(capsys, *argv):
    """``lotto ARGV`` in this process: ``(status, stdout, stderr)``."""
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------ the lock


def test_lock_is_taken_released_and_reentrant(tmp_path, capsys):
    d = str(tmp_path / "run")
    with RunStore.open(d, {"a": 1}) as store:
        with open(os.path.join(d, ".lock")) as f:
            info = json.load(f)
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert info["started"]
        RunStore.open(d, {"a": 1}).close()  # this process again: counted
        assert os.path.exists(os.path.join(d, ".lock"))
        store.save("init", {"w": np.zeros(2)})
        # --overwrite keeps the lock while it deletes the run
        RunStore.open(d, {"a": 1}, overwrite=True).close()
        assert os.path.exists(os.path.join(d, ".lock")) and not store.has("init")
    assert not os.path.exists(os.path.join(d, ".lock"))
    # a lock left by a dead process of this host is taken over, with a note
    pid = dead_pid()
    with open(os.path.join(d, ".lock"), "w") as f:
        json.dump({"pid": pid, "host": socket.gethostname(), "started": "then"}, f)
    with RunStore.open(d, {"a": 1}):
        assert f"took over the lock of pid {pid}" in capsys.readouterr().err
    # another host's lock is refused: its process cannot be checked from here
    with open(os.path.join(d, ".lock"), "w") as f:
        json.dump({"pid": 1, "host": "elsewhere.example", "started": "then"}, f)
    with pytest.raises(RunLockedError, match=r"pid 1 on host elsewhere\.example.*delete"):
        RunStore.open(d, {"a": 1})
    assert json.load(open(os.path.join(d, ".lock")))["host"] == "elsewhere.example"


def test_a_live_holder_is_refused_through_lotto_imp(shared, tmp_path):
    """The second writer writes nothing (no config.json) and leaves the holder's
    lock to it."""
    d = tmp_path / "run"
    with RunStore.open(str(d)):  # this process writes the directory
        r = lotto(shared, *imp_args(shared, d))
        assert json.loads((d / ".lock").read_text())["pid"] == os.getpid()
    line = assert_one_line_error(r, d, f"pid {os.getpid()}", f"host {socket.gethostname()}",
                                 "another process is writing")
    assert "lock file" in line and not (d / ".lock").exists()
    assert not (d / "config.json").exists()


def test_another_hosts_lock_is_refused_through_lotto_imp(shared, tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / ".lock").write_text(json.dumps({"pid": 4242, "host": "node7", "started": "x"}))
    r = lotto(shared, *imp_args(shared, d))
    assert_one_line_error(r, "pid 4242 on host node7", "delete the stale lock file",
                          d / ".lock")


# ------------------------------------------------------------------ repair


def test_crash_corrupt_checkpoint_and_repair(shared, reference, tmp_path, capsys):
    """A run killed mid-round 2 leaves its lock (a dead PID) and a checkpoint; the
    checkpoint is then truncated. Without --repair: the dead lock is taken over and
    the error line names the file and --repair. With it: the checkpoint alone is
    discarded and the run ends equal to the uninterrupted one."""
    d = copy_of(reference, tmp_path)  # rounds 0-1 done: round 2 is what runs
    shutil.rmtree(d / "round_002")
    shutil.rmtree(d / "controls" / "shuffle" / "round_002")
    crashed = subprocess.run([sys.executable, "-c", CRASH, *imp_args(shared, d)],
                             capture_output=True, text=True, env=_env(shared), timeout=300)
    assert crashed.returncode == 9, crashed.stderr[-3000:]
    dead = json.loads((d / ".lock").read_text())["pid"]
    (ckpt,) = glob.glob(str(d / "round_002" / "checkpoints" / "step_*.manifest.json"))
    assert ckpt.endswith("step_00000010.manifest.json")
    victim = data_file(d / "round_002" / "checkpoints" / "step_00000010")
    victim.write_bytes(victim.read_bytes()[:3])

    r = lotto(shared, *imp_args(shared, d))
    note, *rest = r.stderr.splitlines()
    assert note.startswith("lotto: note: ") and f"took over the lock of pid {dead}" in note
    kept = ["round_000: finished, kept", "round_001: finished, kept",
            "controls/shuffle/round_001: finished, kept"]
    assert rest[:3] == [f"lotto: {line}" for line in kept]  # the engine's decisions
    r.stderr = "\n".join(rest[3:])
    assert_one_line_error(r, victim, "truncated", "--repair")
    assert not (d / ".lock").exists()  # released on the error

    status, out, _ = run_in_process(capsys, *imp_args(shared, d), "--repair")
    assert status == 0
    listed = out.split("IMP:")[0]
    assert "discarding 1 " in listed
    assert "round_002/checkpoints/step_00000010: corrupt" in listed
    assert "round_002 resumes from an earlier checkpoint or its start" in listed
    assert_same_run(str(d), str(reference))


def test_corrupt_final_of_a_finished_round_is_recomputed(shared, reference, tmp_path, capsys):
    d = copy_of(reference, tmp_path)
    victim = data_file(d / "round_001" / "final")
    victim.write_bytes(b"\0" * victim.stat().st_size)  # same size, other bytes
    status, out, _ = run_in_process(capsys, *imp_args(shared, d), "--repair")
    assert status == 0
    listed = [line.strip() for line in out.split("IMP:")[0].splitlines()]
    assert listed[0].startswith("repair: ") and "discarding 4 " in listed[0]
    units = [line.split(":")[0] for line in listed[1:5]]
    assert units == ["round_001", "controls/shuffle/round_001", "round_002",
                     "controls/shuffle/round_002"]
    assert str(victim) in listed[1] and "SHA-256" in listed[1]
    assert_same_run(str(d), str(reference))
    # a second repair finds nothing
    status, out, _ = run_in_process(capsys, *imp_args(shared, d), "--repair")
    assert status == 0 and "nothing to discard" in out


def test_repair_plan_of_a_corrupt_control_and_mask():
    """Which units go for which corrupt item (no training: the plan alone)."""
    from lotto_jax.runs.repair import Problem, plan

    layout = ["round_000", "round_001", "round_002", "controls/random/round_001",
              "controls/random/round_002", "controls/reinit/round_002"]

    def names(directory, *items):
        return [d.name for d in plan(directory, [Problem(i, "bad") for i in items])]

    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        for unit in layout:
            os.makedirs(os.path.join(directory, unit))
        # a control's item: that control's round alone
        assert names(directory, "controls/random/round_001/mask") == ["controls/random/round_001"]
        # round 2's mask: round 2 and its controls, controls first
        assert names(directory, "round_002/mask") == [
            "controls/random/round_002", "controls/reinit/round_002", "round_002"]
        # a mid-round checkpoint alone, unless its round goes anyway
        assert names(directory, "round_002/checkpoints/step_00000010") == [
            "round_002/checkpoints/step_00000010"]
        assert "round_002/checkpoints/step_00000010" not in names(
            directory, "round_001/final", "round_002/checkpoints/step_00000010")
        # θK: everything from round 0, then the item itself
        assert names(directory, "rewind")[-2:] == ["round_000", "rewind"]
        assert len(names(directory, "rewind")) == len(layout) + 1
        # θ0: the item alone (written again from the seed)
        assert names(directory, "init") == ["init"]


def pai_args(shared, out):
    return ["pai", "--dataset", f"npz:{shared / 'tiny.npz'}", *TINY, "--method", "magnitude",
            "--density", "0.5", "--controls", "shuffle", "reinit", "--save-every", "10",
            "--out", str(out)]


@pytest.fixture(scope="module")
def pai_reference(shared):
    """An uninterrupted PaI run with two controls (its three variants in one stack),
    made once for the session's workers."""
    def make(ref):
        assert cli.main([str(a) for a in pai_args(shared, ref)]) == 0

    return made_once(shared, "pai_ref", make)


def test_repair_of_a_pai_run_recomputes_the_stack(shared, pai_reference, tmp_path, capsys):
    """A PaI run trains its three variants in one stack. A corrupt final of one
    finished variant, then a corrupt step-10 checkpoint of a killed run: --repair
    discards the stack's units (or that step of each), and the rerun equals the
    uninterrupted run bit for bit (retraining one variant alone would not: a
    vmapped stack of three rounds differently)."""
    from _killrun import assert_killed, engine_lines
    from _killrun import assert_same_run as same_run
    from _killrun import lotto as lotto_killed

    ref = pai_reference
    d = copy_of(ref, tmp_path, "final")
    victim = data_file(d / "variants" / "shuffle" / "final")
    victim.write_bytes(victim.read_bytes()[:3])
    status, out, err = run_in_process(capsys, *pai_args(shared, d), "--repair")
    assert status == 0, err
    listed = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    assert [line.split(":")[0] for line in listed[:4]] == [
        "variants/shuffle", "variants/reinit", "variants/magnitude", "results.json"]
    assert str(victim) in listed[0]
    assert "one stack with variants/shuffle" in listed[1]
    assert "variants/magnitude + variants/shuffle + variants/reinit: training from step 0" in err
    same_run(str(d), str(ref))

    d = tmp_path / "ckpt"
    killed = lotto_killed(pai_args(shared, d), cache_dir=shared,
                          kill_after="variants/reinit/checkpoints/step_00000010")
    assert_killed(killed)
    victim = data_file(d / "variants" / "shuffle" / "checkpoints" / "step_00000010")
    victim.write_bytes(victim.read_bytes()[:3])
    status, out, err = run_in_process(capsys, *pai_args(shared, d), "--repair")
    assert status == 0, err
    listed = [line.strip() for line in out.splitlines() if line.startswith("  ")][:3]
    assert [line.split(":")[0] for line in listed] == [
        f"variants/{v}/checkpoints/step_00000010" for v in ("shuffle", "reinit", "magnitude")]
    assert "the same step of variants/shuffle's stack" in listed[1]
    assert "variants/magnitude + variants/shuffle + variants/reinit: training from step 0" in err
    assert engine_lines(killed)[-1].endswith("training from step 0")
    same_run(str(d), str(ref))


# ------------------------------------------------------------------ lotto ls


def test_lotto_ls(shared, reference, pai_reference, tmp_path, capsys):
    runs = tmp_path / "runs"
    copy_of(reference, runs, "done")
    partial = copy_of(reference, runs, "sub/partial")  # killed before round 2 finished
    os.remove(partial / "round_002" / "metrics.json")
    shutil.rmtree(partial / "controls" / "shuffle" / "round_002")
    corrupt = copy_of(reference, runs, "corrupt")
    victim = data_file(corrupt / "round_001" / "mask")
    victim.write_bytes(victim.read_bytes()[:-1])
    copy_of(pai_reference, runs, "pai")
    (runs / "notes").mkdir()  # not a run
    records = copy_of(reference, runs, "records")  # configs and metrics kept, as in git
    for manifest in records.rglob("*.manifest.json"):
        shutil.rmtree(str(manifest)[: -len(".manifest.json")])
        manifest.unlink()

    status, out, err = run_in_process(capsys, "ls", runs)
    assert status == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()[1:6]}
    assert sorted(rows) == ["corrupt", "done", "pai", "records", "sub/partial"]
    best = json.loads((reference / "round_002" / "metrics.json").read_text())
    pai = json.loads((runs / "pai" / "results.json").read_text())["variants"]["magnitude"]
    assert rows["done"].split()[1:6] == ["imp", "done", "rounds", "2/2,", "controls"]
    assert "controls 2/2" in rows["done"]
    assert f"{100 * best['best_test_accuracy']:.2f}%" in rows["done"]
    assert rows["sub/partial"].split()[1:5] == ["imp", "partial", "rounds", "1/2,"]
    assert rows["corrupt"].split()[1:3] == ["imp", "corrupt"]
    assert rows["records"].split()[1:3] == ["imp", "done"]
    assert rows["records"].endswith("records only: no checkpoints")
    assert rows["pai"].split()[1:5] == ["pai", "done", "units", "3/3"]
    assert f"{100 * pai['best_test_accuracy']:.2f}% @ 50%" in rows["pai"]
    # the corrupt run's file and the way out
    (tail,) = [line for line in out.splitlines() if line.startswith("corrupt: corrupt")]
    assert str(victim) in tail and "--repair" in tail
    # --no-verify reads only the records: the corrupt run looks done
    status, out, _ = run_in_process(capsys, "ls", runs, "--no-verify")
    (row,) = [line for line in out.splitlines() if line.startswith("corrupt ")]
    assert row.split()[1:3] == ["imp", "done"]


def test_lotto_ls_of_a_missing_directory(shared, tmp_path):
    r = lotto(shared, "ls", tmp_path / "nowhere")
    assert_one_line_error(r, tmp_path / "nowhere", "no such directory")


# ------------------------------------------------------------------ the CLI


def test_a_command_module_that_fails_to_import_is_loud(tmp_path, monkeypatch):
    (tmp_path / "lotto_broken_cmd.py").write_text("raise ImportError('no module named x')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "broken", ("lotto_broken_cmd", "Config", "main"))
    for argv in (["broken"], ["train", "--help"], ["--help"]):
        with pytest.raises(cli.CommandImportError, match="lotto broken: cannot load "
                                                         "lotto_broken_cmd") as e:
            cli.main(argv)
        assert isinstance(e.value.__cause__, ImportError)
    assert cli._user_error(e.value) is None  # a bug: its traceback is shown
    monkeypatch.setitem(cli.COMMANDS, "broken", ("lotto_jax.runs.cli", "NoSuchConfig", "main"))
    with pytest.raises(cli.CommandImportError, match="NoSuchConfig"):
        cli.main(["broken"])

