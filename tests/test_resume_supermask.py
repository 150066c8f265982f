"""``lotto supermask`` killed and rerun, through the installed entry point.

Every run is tiny (the Bernoulli search in the ``mlp`` on a 40-feature ``.npz``
whose labels are a linear function of the inputs, 50 steps, a checkpoint every 10;
two replicates stacked in one unit, their sample keys riding in the stored search
state: the method with the most state to resume) and goes
through :func:`_killrun.lotto`, which SIGKILLs the process at a named store item.
The truth is an uninterrupted run of the same command: every committed item bit for
bit and every JSON record equal (:func:`_killrun.assert_same_run`); the engine's
``lotto: search: ...`` lines are the evidence that finished work was reused and that
the search went on from a checkpoint.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
from _killrun import (
    assert_killed,
    assert_ok,
    assert_same_run,
    engine_lines,
    items,
    lotto,
    made_once,
    shared_base,
    tiny_npz,
)

ARGS = ["--model", "mlp", "--steps", "50", "--eval-every", "10", "--batch-size", "32",
        "--save-every", "10", "--method", "bernoulli", "--replicates", "2",
        "--eval-samples", "2"]
EXPORTS = ["export/mask", "export/scores", "export/weights"]




@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``run(out, *extra_flags, kill_after=, kill_in=)``: one ``lotto supermask``."""
    base = shared_base(tmp_path_factory)
    spec = f"npz:{tiny_npz(base, 'supermask', seed=1, n_train=256, n_test=128)}"

    def run(out, *extra, **kill):
        return lotto(["supermask", "--dataset", spec, *ARGS, *extra, "--out", out],
                     cache_dir=base / "xla_cache", **kill)

    return run


@pytest.fixture(scope="module")
def reference(run, tmp_path_factory):
    """The uninterrupted run A (made once for the session's workers)."""
    return made_once(shared_base(tmp_path_factory), "supermask_ref",
                     lambda d: assert_ok(run(d, in_process=True)))


def _lines(proc) -> list[str]:
    """The engine's decisions about the unit ``search`` (not the lock's notes)."""
    return [line for line in engine_lines(proc) if line.startswith("search: ")]


def test_reference_layout(reference):
    """The store's items once finished: start point, final, exports (no checkpoint)."""
    assert items(reference) == sorted(["search/init", "search/final", *EXPORTS])
    for record in ("config.json", "search/metrics.json", "results.json"):
        assert (reference / record).is_file()


def test_killed_at_each_stage_in_turn_ends_as_the_uninterrupted_run(run, reference,
                                                                     tmp_path):
    """One directory killed at every stage in turn, each rerun going on from what
    the last one left: after the first mid-search checkpoint (step 10); inside the
    write of step 30 (orbax done, no manifest: debris, never loaded, so step 20
    is the resume point); after the first export (the search finished: its
    exports are written only where missing). Then it equals run A, and a rerun of
    the finished run trains nothing and touches no file. (A kill between a final
    and its ``metrics.json`` marker, completed from the stored final, is
    ``lotto train``'s, IMP's and ``lotto dst``'s case.)"""
    d = tmp_path / "b"
    assert_killed(run(d, kill_after="search/checkpoints/step_"))
    assert items(d) == ["search/checkpoints/step_00000010", "search/init"]

    proc = run(d, kill_in="search/checkpoints/step_00000030")
    assert_killed(proc)
    assert _lines(proc) == ["search: training from step 10"]
    assert items(d) == ["search/checkpoints/step_00000020", "search/init"]
    assert (d / "search/checkpoints/step_00000030").is_dir()  # the partial write

    proc = run(d, kill_after="export/mask")
    assert_killed(proc)
    assert _lines(proc) == ["search: training from step 20"]
    assert items(d) == ["export/mask", "search/final", "search/init"]
    assert (d / "search/metrics.json").exists() and not (d / "results.json").exists()

    proc = run(d, in_process=True)  # no kill: no subprocess needed
    assert_ok(proc)
    assert _lines(proc) == ["search: finished, kept"]
    assert_same_run(reference, d)

    before = {p: os.stat(p).st_mtime_ns for p in d.rglob("*")}
    proc = run(d, in_process=True)
    assert_ok(proc)
    assert _lines(proc) == ["search: finished, kept"]
    assert {p: os.stat(p).st_mtime_ns for p in d.rglob("*")} == before


def test_repair_recomputes_a_corrupt_search(run, reference, tmp_path):
    """A finished run whose ``search/final`` lost bytes: ``--repair`` lists and
    discards the search, the exports and results.json (all derive from it), and
    the rerun recomputes them equal to run A."""
    d = tmp_path / "g"
    shutil.copytree(reference, d)
    data = sorted(p for p in (d / "search/final").rglob("*")
                  if p.is_file() and p.parent.name == "d")
    with open(data[0], "r+b") as f:
        f.truncate(3)
    proc = run(d, "--repair", in_process=True)
    assert_ok(proc)
    out = proc.stdout.splitlines()
    head = next(i for i, line in enumerate(out) if line.startswith("repair: "))
    listed = []
    for line in out[head + 1:]:  # "  UNIT: why", then the results' table
        unit = re.match(r"  (\S+): ", line)
        if not unit:
            break
        listed.append(unit.group(1))
    assert sorted(listed) == sorted(["results.json", *EXPORTS, "search"])
    assert _lines(proc) == ["search: training from step 0"]
    assert_same_run(reference, d)
