"""``lotto imp`` killed, corrupted and rerun, through the installed entry point;
and the README's main job, cut down.

The run is tiny: the ``mlp`` on a 40-feature ``.npz`` (tests/test_resume_train.py's),
20 steps, a checkpoint at step 10, rounds 0-2 and the controls ``reinit shuffle
random``, trained together at every round >= 1 (one stack). The truth is the
uninterrupted run A: every committed item bit for bit and every JSON record equal
(:func:`_killrun.assert_same_run`). The engine's ``lotto: PREFIX: ...`` lines are
the evidence that finished units were kept and that training went on from a
checkpoint. (The lock, live and dead holders: tests/test_run_layer.py.)
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from _killrun import (
    assert_killed,
    assert_ok,
    assert_same_run,
    items,
    lotto,
    made_once,
    shared_base,
    tiny_npz,
)
from test_resume_train import decisions, took_over_a_dead_lock

CONTROLS = ("reinit", "shuffle", "random")


def stack(r):
    return " + ".join(f"controls/{c}/round_{r:03d}" for c in CONTROLS)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``run(out, *extra, **kill)``: the tiny ``lotto imp`` into ``out``."""
    base = shared_base(tmp_path_factory)
    args = ["imp", "--dataset", f"npz:{tiny_npz(base)}", "--model", "mlp", "--steps", "20",
            "--eval-every", "10", "--batch-size", "32", "--validation", "64",
            "--rounds", "2", "--controls", *CONTROLS, "--save-every", "10"]

    def run(out, *extra, **kill):
        return lotto([*args, *extra, "--out", out], cache_dir=base / "xla_cache", **kill)

    return run


@pytest.fixture(scope="module")
def reference(run, tmp_path_factory):
    """The uninterrupted run A (made once for the session's workers)."""

    def make(d):
        p = run(d, in_process=True)
        assert_ok(p)
        assert decisions(p) == [
            "round_000: training from step 0", "round_001: training from step 0",
            f"{stack(1)}: training from step 0", "round_002: training from step 0",
            f"{stack(2)}: training from step 0"]

    return made_once(shared_base(tmp_path_factory), "imp_ref", make)


@pytest.fixture(scope="module")
def killed_in_round_1(run, tmp_path_factory):
    """A run killed right after round 1's first checkpoint (round 0 finished),
    made once for the session's workers; the tests work on copies."""

    def make(d):
        assert_killed(run(d, kill_after="round_001/checkpoints/step_"))
        assert items(d) == ["init", "round_000/final", "round_000/mask",
                            "round_001/checkpoints/step_00000010", "round_001/mask"]

    return made_once(shared_base(tmp_path_factory), "imp_killed", make)


def test_killed_in_the_trunk_in_a_controls_write_and_before_the_markers(
        run, reference, killed_in_round_1, tmp_path):
    """Three more kills after the one in round 1's trunk, each rerun going on from
    what was committed: inside shuffle's first checkpoint write (the stack's second
    unit: reinit committed step 10, shuffle left a partial item, random nothing),
    then after the last final of round 2's controls (every final, no marker). The
    end equals A bit for bit."""
    d = tmp_path / "run"
    shutil.copytree(killed_in_round_1, d)
    # 1. round 0 kept, round 1 from its checkpoint; killed inside shuffle's write
    p = run(d, kill_in="controls/shuffle/round_001/checkpoints/step_")
    assert_killed(p)
    assert took_over_a_dead_lock(p)
    # (the kill lands in the writer thread: training may have logged more by then)
    assert decisions(p)[:3] == ["round_000: finished, kept",
                                "round_001: training from step 10",
                                f"{stack(1)}: training from step 0"]
    ckpts = [i for i in items(d) if i.startswith("controls/") and "/checkpoints/" in i]
    assert ckpts == ["controls/reinit/round_001/checkpoints/step_00000010"]
    assert (d / "controls/shuffle/round_001/checkpoints/step_00000010").is_dir()  # partial
    # 2. the stack trains together again from its last common step (its start:
    # reinit's lone step 10 would make another stack, other numbers); killed once
    # round 2's controls all saved their finals, before any marker
    p = run(d, kill_after="controls/random/round_002/final")
    assert_killed(p)
    assert decisions(p)[:3] == ["round_000: finished, kept", "round_001: finished, kept",
                                f"{stack(1)}: training from step 0"]
    assert not list(d.glob("controls/*/round_002/metrics.json"))
    # 3. nothing trains: the controls are completed from their stored finals
    p = run(d, in_process=True)
    assert_ok(p)
    assert decisions(p) == [
        "round_000: finished, kept", "round_001: finished, kept",
        *[f"controls/{c}/round_001: finished, kept" for c in CONTROLS],
        "round_002: finished, kept",
        *[f"controls/{c}/round_002: completed from its stored final" for c in CONTROLS]]
    assert_same_run(reference, d)
    assert not (d / ".lock").exists()


def flip_a_byte(item: Path) -> Path:
    """Flips one byte of the largest file listed in ``item``'s manifest (same size:
    only its SHA-256 tells)."""
    files = json.loads(Path(f"{item}.manifest.json").read_text())["files"]
    victim = item / max(files, key=lambda rel: files[rel][0])
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    return victim


def test_repair_of_a_corrupt_checkpoint_and_a_finished_rounds_final(
        run, reference, killed_in_round_1, tmp_path):
    """Corrupt round 1's mid-round checkpoint and round 0's final (a finished
    round). Without --repair: one error line naming the file and --repair. With
    it: the discarded units listed first, then recomputed; the end equals A."""
    d = tmp_path / "run"
    shutil.copytree(killed_in_round_1, d)
    final = flip_a_byte(d / "round_000" / "final")
    ckpt = flip_a_byte(d / "round_001" / "checkpoints" / "step_00000010")
    p = run(d)
    assert p.returncode == 2, p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("lotto: error: ")]
    assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr
    assert str(ckpt) in errors[0] and "SHA-256" in errors[0] and "--repair" in errors[0]
    assert not (d / ".lock").exists()  # released on the error

    p = run(d, "--repair", in_process=True)
    assert_ok(p)
    listed = p.stdout.split("IMP:")[0].splitlines()
    assert re.match(r"repair: .*: discarding 2 ", listed[0]), listed
    assert listed[1].strip().startswith(f"round_000: corrupt: {final}")
    assert listed[2].strip() == "round_001: derives from round 0"
    assert decisions(p)[0] == "round_000: training from step 0"
    assert_same_run(reference, d)


def _readme_main_job() -> tuple[list[str], list[str]]:
    """The README's main-job command line, as written: ``(imp args, report args)``."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    (line,) = [x for x in readme.splitlines() if "lotto imp --recipe mnist1d-lottery" in x]
    commands = [c.split() for c in line.split("&&")]
    imp = next(c for c in commands if c[0].endswith("lotto") and c[1] == "imp")
    report = next(c for c in commands if c[0].endswith("lotto") and c[1] == "report")
    return imp[1:], report[1:]


def test_readme_main_job_cut_down_then_report(tmp_path, capsys):
    """``lotto imp --recipe mnist1d-lottery --out DIR && lotto report DIR`` as the
    README writes it, through the entry point's function in this process (no
    interpreter start, MNIST-1D generated once per worker; the installed script
    itself is run by the kill tests above), with 1 round of 20 steps and 2 of the
    recipe's 3 replicates:
    the report's figures exist; its table shows the stored metrics (the density
    counted from the stored mask; per-replicate accuracies as mean ± std, for two
    replicates (a+b)/2 ± |a-b|/2 by hand); the headline figure draws the trunk's
    per-replicate best accuracies as a band [min, max] (read from its artists).
    (This is also the real replicated run of tests/test_report.py.)"""
    from test_report import _band_label, _band_limits

    from lotto_jax.runs import cli, report

    imp_args, report_args = _readme_main_job()
    out = imp_args[imp_args.index("--out") + 1]
    assert report_args == ["report", out]
    d = str(tmp_path / "mnist1d")
    short = ["--rounds", "1", "--steps", "20", "--eval-every", "10", "--replicates", "2"]
    assert cli.main([a if a != out else d for a in imp_args] + short) == 0
    capsys.readouterr()
    assert cli.main(["report", d]) == 0
    stdout = capsys.readouterr().out
    for name in ("lottery.png", "accuracy.png", "best_accuracy.png", "curves.png"):
        assert (tmp_path / "mnist1d" / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = tmp_path / "mnist1d"
    rounds = [json.loads((runs / f"round_{r:03d}" / "metrics.json").read_text())
              for r in (0, 1)]
    control = json.loads((runs / "controls" / "random" / "round_001" / "metrics.json")
                         .read_text())
    mask = ocp.StandardCheckpointer().restore(str(runs / "round_001" / "mask"))
    leaves = [np.asarray(m) for m in jax.tree.leaves(mask)]
    assert leaves[0].shape[0] == 2  # the replicates
    density = sum(int(m[0].sum()) for m in leaves) / sum(m[0].size for m in leaves)
    for m in (*rounds, control):  # per-replicate lists
        assert len(m["final_test_accuracy"]) == 2
        assert len(m["curve"][-1]["test_accuracy"]) == 2
    kernel = np.asarray(mask["Dense_1"]["kernel"])
    assert rounds[1]["layers"]["Dense_1/kernel"]["kept"] == [int(k.sum()) for k in kernel]

    def mean_std(values):  # two replicates by hand: mean (a+b)/2, population std |a-b|/2
        x, y = 100 * values[0], 100 * values[1]
        return f"{(x + y) / 2:.2f} ± {abs(x - y) / 2:.2f}"

    table = [line for line in stdout.splitlines() if re.match(r"^\W*[01]\W", line)]
    assert len(table) == 2, stdout
    for r, row in enumerate(table):
        cells = [c.strip() for c in re.split(r"[│┃]", row) if c.strip()]
        assert cells[0] == str(r)
        assert cells[1] == (f"{100 * density:.2f}" if r else "100.00")
        for value in (rounds[r]["final_test_accuracy"], rounds[r]["best_test_accuracy"]):
            assert mean_std(value) in cells, (value, row)
    for value in (control["final_test_accuracy"], control["best_test_accuracy"]):
        assert mean_std(value) in table[1], (value, table[1])
    run = report.load_run(d)
    assert report.replicates(run) == 2
    ax = report.lottery_figure(run).axes[0]
    (band,) = [col for col in ax.collections if _band_label(ax, col) == "IMP ticket"]
    for r, (lo, hi) in enumerate(_band_limits(band)):
        v = 100 * np.asarray(rounds[r]["best_test_accuracy"])
        np.testing.assert_allclose([lo, hi], [v.min(), v.max()], atol=1e-6)
