"""``lotto train`` killed and rerun, through the installed entry point.

Every run is tiny (the ``mlp`` on a 40-feature ``.npz`` whose labels are a linear
function of the inputs, 40 steps, a checkpoint every 10; two replicates trained
together, so that one chain of kills covers the replicates too) and goes through
:func:`_killrun.lotto`, which SIGKILLs the process at a named store item. The truth
is an uninterrupted run of the same command: every committed item bit for bit and
every JSON record equal (:func:`_killrun.assert_same_run`); the engine's
``lotto: train: ...`` lines are the evidence that finished work was reused and
that training went on from a checkpoint. The ``--mask`` run (one network) is
checked against a numpy forward pass of its restored weights.
"""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
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
from _numpy_ref import mlp_accuracy

from lotto_jax import data, imp, masks, models

ARGS = ["--model", "mlp", "--steps", "40", "--eval-every", "10", "--batch-size", "32",
        "--validation", "64", "--save-every", "10"]
REPLICATES = ["--replicates", "2"]  # run A and the kill chain




@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """``(run(args, out, **kill), the npz spec)``."""
    base = shared_base(tmp_path_factory)
    spec = f"npz:{tiny_npz(base)}"

    def run(out, *extra, **kill):
        return lotto(["train", "--dataset", spec, *ARGS, *extra, "--out", out],
                     cache_dir=base / "xla_cache", **kill)

    return run, spec


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    """The uninterrupted run A, two replicates (made once for the session's
    workers)."""
    run, _ = env
    return made_once(shared_base(tmp_path_factory), "train_ref",
                     lambda d: assert_ok(run(d, *REPLICATES, in_process=True)))


def decisions(proc):
    """The engine's lines, without the note of a dead holder's lock taken over."""
    return [line for line in engine_lines(proc) if not line.startswith("note: ")]


def took_over_a_dead_lock(proc):
    return any(line.startswith("note: ") and "took over the lock of pid" in line
               for line in engine_lines(proc))


def restore(path):
    return ocp.StandardCheckpointer().restore(str(path))


def test_killed_three_times_ends_as_the_uninterrupted_run(env, reference, tmp_path):
    """Killed inside the first checkpoint write, after a later checkpoint, and
    after ``train/final`` before its marker; each rerun goes on from what was
    committed (both replicates from the same step), and the last one equals A bit
    for bit."""
    run, _ = env
    d = tmp_path / "run"
    # 1. inside the write of step 10: orbax wrote it, its manifest never came
    assert_killed(run(d, *REPLICATES, kill_in="train/checkpoints/step_"))
    assert items(d) == ["init", "mask"]
    assert (d / "train" / "checkpoints" / "step_00000010").is_dir()  # the partial item
    # 2. the partial item is never loaded: from step 0 again, killed after step 20
    p = run(d, *REPLICATES, kill_after="train/checkpoints/step_00000020")
    assert_killed(p)
    assert decisions(p) == ["train: training from step 0"]
    assert took_over_a_dead_lock(p)  # the killed run's lock
    assert "train/checkpoints/step_00000020" in items(d)
    # 3. from step 20, killed once train/final is committed, before metrics.json
    p = run(d, *REPLICATES, kill_after="train/final")
    assert_killed(p)
    assert decisions(p) == ["train: training from step 20"]
    assert not (d / "train" / "metrics.json").exists() and not (d / "results.json").exists()
    # 4. nothing trains: the stored final's curve completes the unit
    p = run(d, *REPLICATES, in_process=True)
    assert_ok(p)
    assert decisions(p) == ["train: completed from its stored final"]
    assert_same_run(reference, d)
    assert not (d / ".lock").exists()


def test_a_finished_run_trains_nothing(env, reference, tmp_path, capsys):
    """Rerun on a copy of A (in this process: nothing to train, nothing to compile);
    its table shows each accuracy as the mean ± std of the two replicates, by hand
    (a+b)/2 ± |a-b|/2."""
    from lotto_jax.runs import cli

    _, spec = env
    d = tmp_path / "run"
    shutil.copytree(reference, d)
    assert cli.main(["train", "--dataset", spec, *ARGS, *REPLICATES, "--out", str(d)]) == 0
    out, err = capsys.readouterr()
    assert [line for line in err.splitlines() if line.startswith("lotto: ")] == [
        "lotto: train: finished, kept"]
    assert_same_run(reference, d)
    a, b = (100 * v for v in json.loads((d / "results.json").read_text())[
        "final_test_accuracy"])
    assert f"{(a + b) / 2:.2f} ± {abs(a - b) / 2:.2f}%" in out  # the table


def test_replicates_keep_their_seeds(reference):
    """Replicate i of A starts from ``models.init(mlp, key(seed + i))``; the results
    hold one accuracy per replicate."""
    result = json.loads((reference / "results.json").read_text())
    assert result["replicates"] == 2 and len(result["final_test_accuracy"]) == 2
    theta0 = restore(reference / "init")["params"]
    for i in range(2):
        mine = models.init(models.build("mlp"), jax.random.key(i), (40,))["params"]
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theta0), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[i])


_ONE_EXAMPLE = 1 / 256 + 1e-9  # a float32 near-tie of two logits may rank otherwise


def test_train_under_an_imp_mask(env, reference, tmp_path):
    """``lotto train --mask`` (one network) with the mask IMP's next round would
    prune from the trained weights of A's replicate 0 (half of each kernel).
    Truths: the stored mask is that mask; pruned weights are exactly 0, kept ones
    moved from θ0; the density by counting; the recorded accuracies by a numpy
    forward pass of the restored weights."""
    run, spec = env
    final = restore(reference / "train" / "final")["params"]
    final = jax.tree.map(lambda a: np.asarray(a)[0], final)  # replicate 0
    mask, _ = imp.next_mask(final, masks.init(final), fraction=0.5)
    mask = jax.tree.map(np.asarray, mask)
    path = tmp_path / "mask"
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(str(path), mask)
    ckpt.wait_until_finished()
    d = tmp_path / "run"
    assert_ok(run(d, "--mask", path))
    for a, b in zip(jax.tree.leaves(restore(d / "mask")), jax.tree.leaves(mask), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    result = json.loads((d / "results.json").read_text())
    kernels = [m["kernel"] for m in mask.values()]
    assert result["density"] == pytest.approx(
        sum(int(k.sum()) for k in kernels) / sum(k.size for k in kernels))
    assert result["density"] == pytest.approx(0.5, abs=0.01)
    theta0 = restore(d / "init")["params"]
    trained = restore(d / "train" / "final")["params"]
    for layer, m in mask.items():
        w = np.asarray(trained[layer]["kernel"])
        assert np.all(w[~m["kernel"]] == 0.0)  # exactly 0
        moved = w[m["kernel"]] != np.asarray(theta0[layer]["kernel"])[m["kernel"]]
        assert moved.mean() > 0.9, (layer, moved.mean())
    test = data.load(spec).test
    curve = json.loads((d / "train" / "metrics.json").read_text())["curve"]
    assert result["final_test_accuracy"] == curve[-1]["test_accuracy"]
    assert mlp_accuracy(trained, test) == pytest.approx(
        result["final_test_accuracy"], abs=_ONE_EXAMPLE)
    assert result["final_test_accuracy"] > 0.3  # it learned (chance: 0.1)
