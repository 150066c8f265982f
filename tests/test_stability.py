"""``lotto stability`` end to end on the tiny finished IMP run of test_cli_errors
(rounds 0-2, 20 steps, θ0 the only stored rewind point): a run killed mid-training
and resumed from its checkpoint, its pairs' paths against the engine's own
evaluation of each copy, the barrier by hand, the masks kept, the report, a rerun
that trains nothing; ``lotto compare`` against numpy; every refusal as one line
naming the flag."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from _killrun import assert_killed, assert_ok, engine_lines
from _killrun import lotto as lotto_killed
from test_cli_errors import assert_one_line_error, finished_imp, here, shared

__all__ = ["finished_imp", "here", "shared"]  # the fixtures, imported


def _args(imp_dir, out):
    return ["stability", "--run", imp_dir, "--rewind-steps", "0", "--rounds", "0", "2",
            "--points", "5", "--train-examples", "100", "--save-every", "10",
            "--out", out]


def _load(d):
    with open(os.path.join(d, "results.json")) as f:
        return json.load(f)


def test_stability_end_to_end_killed_resumed_and_rerun(finished_imp, here, shared,
                                                       tmp_path):
    imp_dir, _ = finished_imp
    d = tmp_path / "stab"
    # killed after the stack's checkpoint at step 10, then resumed from there
    args = _args(imp_dir, d)
    assert_killed(lotto_killed(args, cache_dir=shared / "xla_cache",
                               kill_after="round_002_k00000000/checkpoints/step_00000010"))
    assert not (d / "results.json").exists()
    p = lotto_killed(args, cache_dir=shared / "xla_cache")
    assert_ok(p)
    assert "pairs/round_000_k00000000 + pairs/round_002_k00000000: training from step 10" \
        in engine_lines(p)
    res = _load(d)
    assert [(p["round"], p["k"]) for p in res["pairs"]] == [(0, 0), (2, 0)]
    ckpt = ocp.StandardCheckpointer()
    for p in res["pairs"]:
        name = f"pairs/round_{p['round']:03d}_k{p['k']:08d}"
        metrics = json.load(open(d / name / "metrics.json"))
        acc = np.asarray(metrics["final_test_accuracy"])  # the engine's evaluation
        assert acc.shape == (2,)
        # the path's ends are the two copies as the trainer evaluated them
        np.testing.assert_allclose(p["test_error"][0], 1 - acc[0], atol=1e-6)
        np.testing.assert_allclose(p["test_error"][-1], 1 - acc[1], atol=1e-6)
        e = np.asarray(p["test_error"])
        assert p["test_barrier"] == pytest.approx(e.max() - (e[0] + e[-1]) / 2, abs=1e-6)
        assert p["alphas"] == pytest.approx([0, 0.25, 0.5, 0.75, 1])
        # both copies trained under the round's mask, with different data orders
        final = ckpt.restore(os.path.abspath(d / name / "final"))
        mask = ckpt.restore(os.path.abspath(os.path.join(imp_dir, f"round_{p['round']:03d}",
                                                         "mask")))
        for w, m in zip(jax.tree.leaves(final["params"]), jax.tree.leaves(mask), strict=True):
            assert np.all(np.asarray(w)[:, ~np.asarray(m)] == 0)
        w = jax.tree.leaves(final["params"])[0]
        assert not np.array_equal(w[0], w[1])
        assert p["density"] == pytest.approx(float(np.mean(np.concatenate(
            [np.asarray(m).ravel() for m in jax.tree.leaves(mask) if np.ndim(m) >= 2]))))
    assert res["pairs"][0]["density"] == 1.0 and res["pairs"][1]["density"] < 0.9
    assert sorted(os.listdir(d / "figures")) == ["barrier.png", "path.png"]

    # lotto report reads it back: one row per pair
    r = here("report", d, "--figures", tmp_path / "fig")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines() if line.split()[:1] in (["0"], ["2"])]
    assert [row[0] for row in rows] == ["0", "2"]
    assert rows[1][5] == f"{100 * res['pairs'][1]['test_barrier']:.2f}"

    # lotto report over a directory: the IMP run's sweep table, then the stability
    # run's own table
    shutil.copytree(imp_dir, tmp_path / "imp")
    r = here("report", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "sweep" in r.stdout and "stability of" in r.stdout
    assert r.stdout.index("sweep") < r.stdout.index("stability of")
    shutil.rmtree(tmp_path / "imp")

    # lotto ls lists it (its config's "run" is a directory, not a RunConfig)
    r = here("ls", tmp_path)
    assert r.returncode == 0, r.stderr
    assert ["stab", "stability", "done", "units", "2/2"] == r.stdout.splitlines()[1].split()[:5]

    # a finished run trains nothing
    r = here(*args)
    assert r.returncode == 0, r.stderr
    assert [line for line in r.stderr.splitlines() if "pairs/" in line] == [
        "lotto: pairs/round_000_k00000000: finished, kept",
        "lotto: pairs/round_002_k00000000: finished, kept"]
    assert _load(d) == res


def test_refusals_name_the_flag(finished_imp, here, tmp_path):
    imp_dir, _ = finished_imp
    out = tmp_path / "out"
    base = ["stability", "--run", imp_dir, "--out", out]
    assert_one_line_error(here(*base, "--rewind-steps", "100"), "--rewind-steps", "100",
                          "20")
    assert_one_line_error(here(*base, "--rewind-steps", "10"), "--rewind-steps",
                          "not stored", "stored rewind points: 0")
    assert_one_line_error(here(*base, "--rounds", "5"), "--rounds", "round 5",
                          "0, 1, 2")
    assert_one_line_error(here(*base, "--replicate", "1"), "--replicate")
    assert_one_line_error(here(*base, "--points", "1"), "--points")
    assert_one_line_error(here(*base, "--pair-seeds", "3", "3"), "--pair-seeds")
    train_run = tmp_path / "a_train_run"
    train_run.mkdir()
    (train_run / "config.json").write_text(json.dumps({"run": {}, "mask": None}))
    assert_one_line_error(here("stability", "--run", train_run, "--out", out), "--run",
                          "train run, not an IMP run")
    assert_one_line_error(here("stability", "--run", tmp_path / "nowhere", "--out", out),
                          "--run", "nowhere")
    assert not out.exists()  # refused before the run directory was made


def test_compare_two_rounds_a_matrix_and_different_models(finished_imp, here, tmp_path):
    imp_dir, _ = finished_imp
    ckpt = ocp.StandardCheckpointer()
    stored = [ckpt.restore(os.path.abspath(os.path.join(imp_dir, f"round_{r:03d}", "mask")))
              for r in range(3)]
    kernels = [{k: np.asarray(v["kernel"]) for k, v in m.items()} for m in stored]
    out = tmp_path / "cmp"
    r = here("compare", f"{imp_dir}@1", imp_dir, "--out", out)  # no @R: the last round, 2
    assert r.returncode == 0, r.stderr
    rec = json.load(open(out / "compare.json"))
    assert rec["runs"][0].endswith("@1") and rec["runs"][1].endswith("@2")
    a, b = kernels[1], kernels[2]
    for layer in a:
        row = rec["layers"][f"{layer}/kernel"]
        x, y = a[layer], b[layer]
        assert row["both"] == int((x & y).sum()) and row["kept_a"] == int(x.sum())
        assert row["jaccard"] == pytest.approx((x & y).sum() / (x | y).sum())
        assert row["hamming"] == pytest.approx((x != y).mean())
        assert f"{layer}/kernel" in r.stdout
    # IMP's masks are nested: round 2 keeps a subset of round 1
    assert rec["layers"]["all"]["both"] == rec["layers"]["all"]["kept_b"]
    assert os.path.exists(out / "overlap.png")
    # three masks: the matrix over them
    r = here("compare", f"{imp_dir}@0", f"{imp_dir}@1", f"{imp_dir}@2", "--out", out)
    assert r.returncode == 0, r.stderr
    jac = np.asarray(json.load(open(out / "compare.json"))["jaccard"])
    flat = [np.concatenate([k[layer].ravel() for layer in sorted(k)]) for k in kernels]
    want = [[(p & q).sum() / (p | q).sum() for q in flat] for p in flat]
    np.testing.assert_allclose(jac, want, rtol=1e-12)
    # a run of another model: refused, naming both models
    from lotto_jax.runs.store import RunStore

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"run": {"model": "lenet300"}, "mask": None}))
    RunStore(str(other)).save("mask", {"Dense_0": {"kernel": np.ones((4, 3), bool)}})
    line = assert_one_line_error(here("compare", imp_dir, other, "--out", out), "runs:",
                                 "mlp", "lenet300")
    assert "different models" in line
    assert_one_line_error(here("compare", f"{imp_dir}@7", imp_dir, "--out", out),
                          "--round", "0, 1, 2")
    assert_one_line_error(here("compare", imp_dir, "--out", out), "runs")
    assert_one_line_error(here("compare", f"{imp_dir}@1#1", imp_dir, "--out", out),
                          "--replicate", "1 replicates")
    from lotto_jax.runs.compare import _spec

    assert _spec("a/b@3#1", None, 0) == ("a/b", 3, 1, "#1")
    assert _spec("a/b#2", 5, 0) == ("a/b", 5, 2, "#2")
    assert _spec("a/b", None, 4) == ("a/b", None, 4, "")


def test_pairs_reshuffle_a_fixed_order_run():
    # a fixed data order (the MNIST-1D recipe) would train two identical copies
    from lotto_jax.runs import stability

    config = {"run": {"model": "mlp", "dataset": "mnist1d", "seed": 3,
                      "train": {"shuffle": False, "steps": 7, "milestones": [2]}}}
    assert not stability.imp_run_config(config).train.shuffle
    pair = stability._pair_run_config(config)
    assert pair.train.shuffle and pair.train.steps == 7 and pair.train.milestones == (2,)
    assert pair.seed == 3 and pair.model == "mlp"


def test_batchnorm_models_are_refused(here, tmp_path):
    # an IMP run's records as lotto imp writes them (nothing is restored before
    # the refusal): resnet20's BatchNorm statistics cannot simply be interpolated
    r = np.random.default_rng(0)
    np.savez(tmp_path / "img.npz", x_train=r.normal(size=(8, 8, 8, 3)).astype(np.float32),
             y_train=r.integers(0, 10, 8), x_test=r.normal(size=(4, 8, 8, 3)).astype(np.float32),
             y_test=r.integers(0, 10, 4))
    imp = tmp_path / "imp"
    (imp / "round_000").mkdir(parents=True)
    (imp / "config.json").write_text(json.dumps({"rounds": 0, "rewind": "init", "run": {
        "model": "resnet20", "dataset": f"npz:{tmp_path / 'img.npz'}",
        "train": {"steps": 4, "batch_size": 4, "eval_every": 2}}}))
    for item in ("init", "round_000/mask"):
        (imp / f"{item}.manifest.json").write_text("{}")
    line = assert_one_line_error(here("stability", "--run", imp, "--out", tmp_path / "s"),
                                 "--run", "batch_stats")
    assert "BatchNorm" in line
