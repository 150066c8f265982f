"""``lotto dst`` killed and rerun, repaired, and its stored results re-derived.

Every run is tiny: RigL at density 0.2 (ERK) on the ``mlp`` and a 40-feature
``.npz`` whose labels are a linear function of the inputs, 40 steps, a mask update
and a checkpoint every 10. Each goes through :func:`_killrun.lotto` (the installed
entry point), which SIGKILLs the process at a named store item. The truths: one
uninterrupted run of the same command (run A, shared by the tests), compared item
by item bit for bit and record by record (:func:`_killrun.assert_same_run`); the
engine's ``lotto: dst: ...`` lines as the evidence that training went on from a
checkpoint and that finished work was kept; ERK's closed form, worked in numpy,
for the start mask; a float64 numpy forward pass of the restored final weights
under the restored final mask for the accuracy.
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
    shared_base,
    tiny_npz,
)
from _numpy_ref import mlp_accuracy

from lotto_jax import data

ARGS = ["--model", "mlp", "--method", "rigl", "--density", "0.2", "--update-every", "10",
        "--steps", "40", "--eval-every", "10", "--batch-size", "32", "--validation", "64",
        "--save-every", "10", "--lr", "0.01"]
N_TEST = 256
# the mlp on 40 features, 10 classes: kernel (fan_in, fan_out) per layer
SHAPES = {"Dense_0/kernel": (40, 100), "Dense_1/kernel": (100, 100),
          "output/kernel": (100, 10)}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """``(run(out, *extra, **kill), the npz spec)``."""
    base = shared_base(tmp_path_factory)
    spec = f"npz:{tiny_npz(base, 'dst_tiny', seed=2, n_test=N_TEST)}"

    def run(out, *extra, **kill):
        return lotto(["dst", "--dataset", spec, *ARGS, *extra, "--out", out],
                     cache_dir=base / "xla_cache", **kill)

    return run, spec


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    """The uninterrupted run A."""
    run, _ = env
    d = tmp_path_factory.mktemp("dst_ref") / "a"
    p = run(d, in_process=True)
    assert_ok(p)
    assert decisions(p) == ["dst: training from step 0"]
    return d


def decisions(proc):
    """The engine's lines (not the lock's takeover notes)."""
    return [line for line in engine_lines(proc) if not line.startswith("note: ")]


def in_process(spec, out, *extra, capsys):
    """``lotto dst`` through the entry point's function in this process: the
    status and the engine's lines."""
    from lotto_jax.runs import cli

    status = cli.main(["dst", "--dataset", spec, *ARGS, *extra, "--out", str(out)])
    err = capsys.readouterr().err
    return status, [line[len("lotto: "):] for line in err.splitlines()
                    if line.startswith("lotto: ") and not line.startswith("lotto: note: ")]


def flip_a_byte(item):
    """Flips one byte of the largest file in ``item``'s manifest (same size: only
    its SHA-256 tells)."""
    files = json.loads((item.parent / f"{item.name}.manifest.json").read_text())["files"]
    victim = item / max(files, key=lambda rel: files[rel][0])
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    return victim


@pytest.fixture(scope="module")
def killed_after_final(env, reference, tmp_path_factory):
    """Run B, killed (1) right after its first checkpoint, (2) inside the write of
    the step-30 checkpoint (a partial item), (3) right after ``dst/final``, before
    its marker; each rerun goes on from the last committed checkpoint. Returns the
    directory as the third kill left it (final and the step-30 checkpoint)."""
    run, _ = env
    d = tmp_path_factory.mktemp("dst_b") / "b"
    assert_killed(run(d, kill_after="dst/checkpoints/step_"))
    assert items(d) == ["dst/checkpoints/step_00000010", "init", "start_mask"]

    p = run(d, kill_in="dst/checkpoints/step_00000030")
    assert_killed(p)
    assert decisions(p) == ["dst: training from step 10"]
    assert items(d) == ["dst/checkpoints/step_00000020", "init", "start_mask"]
    assert (d / "dst" / "checkpoints" / "step_00000030").is_dir()  # partial: never loaded

    p = run(d, kill_after="dst/final")
    assert_killed(p)
    assert decisions(p) == ["dst: training from step 20"]
    assert items(d) == ["dst/checkpoints/step_00000030", "dst/final", "init", "start_mask"]
    assert not (d / "dst" / "metrics.json").exists() and not (d / "results.json").exists()
    return d


def test_killed_three_times_ends_as_the_uninterrupted_run(
        env, reference, killed_after_final, tmp_path, capsys):
    """The rerun after the last kill commits from the stored final without
    training, and equals A bit for bit; a rerun of the finished run keeps it."""
    _, spec = env
    d = tmp_path / "b"
    shutil.copytree(killed_after_final, d)
    status, lines = in_process(spec, d, capsys=capsys)
    assert status == 0 and lines == ["dst: completed from its stored final"]
    assert_same_run(reference, d)
    assert not (d / ".lock").exists()

    status, lines = in_process(spec, d, capsys=capsys)
    assert status == 0 and lines == ["dst: finished, kept"]
    assert_same_run(reference, d)


def test_repair_of_a_corrupt_checkpoint_and_final(env, reference, killed_after_final,
                                                  tmp_path):
    """The step-30 checkpoint and the final of the killed run B lose a byte each.
    Without --repair: one error line naming a file and --repair. With it: the unit
    (its final is corrupt) is listed and discarded, then trained again from step
    0 from the stored init and start mask; the end equals A."""
    run, _ = env
    d = tmp_path / "c"
    shutil.copytree(killed_after_final, d)
    flip_a_byte(d / "dst" / "checkpoints" / "step_00000030")
    flip_a_byte(d / "dst" / "final")
    p = run(d)
    assert p.returncode == 2, p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("lotto: error: ")]
    assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "SHA-256" in errors[0] and "--repair" in errors[0] and str(d / "dst") in errors[0]

    p = run(d, "--repair", in_process=True)
    assert_ok(p)
    out = p.stdout.splitlines()
    head = next(i for i, line in enumerate(out) if line.startswith("repair: "))
    assert "discarding 1 " in out[head]
    assert out[head + 1].startswith("  dst: corrupt: ")
    assert decisions(p) == ["dst: training from step 0"]
    assert_same_run(reference, d)


def erk_counts(density):
    """ERK by hand: layer l keeps ε (n_in + n_out) / (n_in n_out) of its weights,
    ε chosen so that the total is ``density`` of all (no layer reaches 1 here);
    counts rounded half up."""
    total = sum(a * b for a, b in SHAPES.values())
    eps = density * total / sum(a + b for a, b in SHAPES.values())
    out = {}
    for name, (a, b) in SHAPES.items():
        d = eps * (a + b) / (a * b)
        assert d < 1
        out[name] = int(np.floor(d * a * b + 0.5))
    return out


def restore(path):
    return ocp.StandardCheckpointer().restore(str(path))


def test_results_restored_and_evaluated_independently(env, reference):
    """The stored start mask keeps ERK's counts; the final mask (restored with
    plain orbax) keeps the same counts per layer (RigL exchanges, never prunes),
    which results.json reports; the final weights are 0 off the mask, and a numpy
    forward pass of them gives the recorded final test accuracy; the schedule
    lists the updates at steps 10, 20, 30 with RigL's cosine drop fraction."""
    _, spec = env
    want = erk_counts(0.2)
    assert want == {"Dense_0/kernel": 933, "Dense_1/kernel": 1333, "output/kernel": 733}
    start = restore(reference / "start_mask")
    final = restore(reference / "dst" / "final")
    results = json.loads((reference / "results.json").read_text())
    for tree in (start, final["mask"]):
        for name in SHAPES:
            layer, leaf = name.split("/")
            assert int(np.sum(tree[layer][leaf])) == want[name], name
            assert np.all(tree[layer]["bias"])  # biases are not pruned
    assert {k: v["kept"] for k, v in results["layers"].items()} == want
    assert results["kept"] == sum(want.values()) and results["total"] == 15000
    assert results["density"] == pytest.approx(sum(want.values()) / 15000)
    assert (results["method"], results["target_density"], results["distribution"]) == (
        "rigl", 0.2, "erk")
    moved = sum(int(np.sum(start[k]["kernel"] != final["mask"][k]["kernel"])) for k in start)
    assert moved > 0  # the mask changed during training
    params = final["params"]
    for layer, m in final["mask"].items():
        assert np.all(np.asarray(params[layer]["kernel"])[~m["kernel"]] == 0)
    test = data.load(spec, seed=0, validation=64).test
    masked = jax.tree.map(lambda w, m: np.asarray(w) * m, params, final["mask"])
    acc = mlp_accuracy(masked, test)
    assert acc == pytest.approx(results["final_test_accuracy"], abs=1 / N_TEST + 1e-9)
    assert results["final_test_accuracy"] > 0.3  # it learned (chance: 0.1)
    # RigL's drop fraction: 0.3 (1 + cos(π t / 30)) / 2 at the updates t = 10, 20, 30
    assert [s["step"] for s in results["schedule"]] == [10, 20, 30]
    np.testing.assert_allclose([s["drop_fraction"] for s in results["schedule"]],
                               [0.225, 0.075, 0.0], atol=1e-6)
    assert {s["density"] for s in results["schedule"]} == {0.2}


def test_a_uniform_start_mask_keeps_each_layers_share(env, tmp_path):
    """``--distribution uniform``: every layer keeps round(0.05 n) of its n
    weights (the run is stopped once its start mask is committed)."""
    run, _ = env
    d = tmp_path / "u"
    assert_killed(run(d, "--method", "static", "--distribution", "uniform",
                      "--density", "0.05", kill_after="start_mask"))
    start = restore(d / "start_mask")
    for name, (a, b) in SHAPES.items():
        layer, leaf = name.split("/")
        assert int(np.sum(start[layer][leaf])) == int(np.floor(0.05 * a * b + 0.5)), name
