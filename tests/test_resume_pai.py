"""``lotto pai`` killed and rerun, through the installed entry point.

Every run is tiny (SNIP at density 0.2 on the ``mlp``, a 40-feature ``.npz`` whose
labels are a linear function of the inputs, 40 steps, a checkpoint every 10) with
the shuffle and reinit controls: three units trained in one stack. Each goes
through :func:`_killrun.lotto`, which SIGKILLs the process at a named store item.
The truth is an uninterrupted run of the same command (run A): every committed
item bit for bit and every JSON record equal (:func:`_killrun.assert_same_run`);
the engine's ``lotto: variants/NAME: ...`` lines are the evidence that finished
work was reused and that training went on from a checkpoint. Run A's stored
weights are checked against ``models.init`` and a numpy forward pass.
"""

from __future__ import annotations

import json
import os
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

from lotto_jax import data, models

ARGS = ["--model", "mlp", "--method", "snip", "--density", "0.2", "--sample-per-class", "2",
        "--steps", "40", "--eval-every", "10", "--batch-size", "32", "--validation", "64",
        "--save-every", "10", "--lr", "0.01"]
VARIANTS = ("snip", "shuffle", "reinit")
STACK = " + ".join(f"variants/{v}" for v in VARIANTS)
N_TEST = 256




@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """``(run(out, *extra, **kill), the npz spec)``."""
    base = shared_base(tmp_path_factory)
    spec = f"npz:{tiny_npz(base, 'pai_tiny', seed=1, n_test=N_TEST)}"

    def run(out, *extra, controls=VARIANTS[1:], **kill):
        return lotto(["pai", "--dataset", spec, *ARGS, "--controls", *controls, *extra,
                      "--out", out], cache_dir=base / "xla_cache", **kill)

    return run, spec


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    """The uninterrupted run A (made once for the session's workers)."""
    run, _ = env

    def make(d):
        r = run(d, in_process=True)
        assert_ok(r)
        assert decisions(r) == [f"{STACK}: training from step 0"]  # one stack

    return made_once(shared_base(tmp_path_factory), "pai_ref", make)


def decisions(proc):
    """The engine's lines (not the lock's takeover notes)."""
    return [line for line in engine_lines(proc) if not line.startswith("note: ")]


def load_json(path):
    with open(path) as f:
        return json.load(f)


def test_killed_at_every_stage_ends_as_the_uninterrupted_run(env, reference, tmp_path):
    """Killed (1) right after the stack's first checkpoint, (2) inside the shuffle
    control's checkpoint write at step 30 (between the units of the stack: snip
    has committed step 30), (3) after the method's final (the others have none:
    one final is not a finished stack); each rerun goes on from the stack's latest
    common checkpoint. The end equals run A bit for bit. (A kill after every
    final of a stack, before its markers, is the IMP controls' and ``lotto
    train``'s case; a finished run's rerun keeping every variant is
    :func:`test_a_control_added_to_a_finished_run_trains_alone`'s.)"""
    run, _ = env
    d = tmp_path / "b"
    assert_killed(run(d, kill_after="variants/reinit/checkpoints/step_00000010"))
    assert "variants/snip/checkpoints/step_00000010" in items(d)
    dead = load_json(d / ".lock")["pid"]  # a killed run leaves its lock

    r = run(d, kill_in="variants/shuffle/checkpoints/step_00000030")
    assert_killed(r)
    assert f"took over the lock of pid {dead}" in r.stderr  # a dead holder
    assert decisions(r) == [f"{STACK}: training from step 10"]
    assert {"variants/snip/checkpoints/step_00000030",
            "variants/shuffle/checkpoints/step_00000020"} <= set(items(d))
    assert "variants/shuffle/checkpoints/step_00000030" not in items(d)  # partial

    r = run(d, kill_after="variants/snip/final")
    assert_killed(r)
    assert decisions(r) == [f"{STACK}: training from step 20"]
    assert "variants/snip/final" in items(d) and "variants/shuffle/final" not in items(d)
    assert not any(os.path.exists(d / "variants" / v / "metrics.json") for v in VARIANTS)

    r = run(d, in_process=True)  # one final is not a finished stack: all three train on together
    assert_ok(r)
    assert decisions(r) == [f"{STACK}: training from step 30"]
    assert_same_run(str(reference), str(d))
    assert not (d / ".lock").exists()


def test_a_control_added_to_a_finished_run_trains_alone(env, reference, tmp_path):
    run, _ = env
    d = tmp_path / "c"
    shutil.copytree(reference, d)
    r = run(d, controls=(*VARIANTS[1:], "invert"), in_process=True)
    assert_ok(r)
    assert decisions(r) == [*(f"variants/{v}: finished, kept" for v in VARIANTS),
                               "variants/invert: training from step 0"]
    for v in VARIANTS:  # the finished variants' files are untouched
        for root, _, files in os.walk(reference / "variants" / v):
            for name in files:
                a = os.path.join(root, name)
                b = os.path.join(d, os.path.relpath(a, reference))
                with open(a, "rb") as f, open(b, "rb") as g:
                    assert f.read() == g.read(), b
    old, new = load_json(reference / "results.json"), load_json(d / "results.json")
    assert list(new["variants"]) == [*VARIANTS, "invert"]
    assert {k: new["variants"][k] for k in VARIANTS} == old["variants"]
    assert new["variants"]["invert"] == load_json(d / "variants/invert/metrics.json")
    assert {"variants/invert/mask", "variants/invert/final"} <= set(items(d))


def test_stored_weights_are_models_init_and_give_the_recorded_accuracy(env, reference):
    """Truths: θ0 and the reinit control's weights are ``models.init`` with
    ``key(0)`` and ``fold_in(key(0), 3)``; every mask keeps round(0.2 N) of the
    N kernel weights (shuffle: the method's count per layer; reinit: the method's
    mask); each trained ``final`` (restored with plain orbax) is zero where its
    mask is, and a numpy forward pass of it gives the recorded test accuracy."""
    _, spec = env
    ckpt = ocp.StandardCheckpointer()
    load = lambda item: ckpt.restore(os.path.abspath(reference / item))  # noqa: E731
    module = models.build("mlp", num_classes=10)
    for item, key in (("init", jax.random.key(0)),
                      ("variants/reinit/init", jax.random.fold_in(jax.random.key(0), 3))):
        want = models.init(module, key, (40,))
        got = load(item)
        assert got["model_state"] == {}
        for a, b in zip(jax.tree.leaves(want["params"]), jax.tree.leaves(got["params"]),
                        strict=True):
            np.testing.assert_array_equal(np.asarray(a), b, err_msg=item)
    test = data.load(spec, seed=0, validation=64).test
    results = load_json(reference / "results.json")
    assert (results["method"], results["density"], results["replicates"]) == ("snip", 0.2, 1)
    mask = {v: load(f"variants/{v}/mask") for v in VARIANTS}
    kernels = {k: mask["snip"][k]["kernel"] for k in mask["snip"]}
    n = sum(k.size for k in kernels.values())
    assert sum(int(k.sum()) for k in kernels.values()) == int(np.floor(0.2 * n + 0.5))
    for k in kernels:
        assert mask["shuffle"][k]["kernel"].sum() == kernels[k].sum()
        assert mask["shuffle"][k]["bias"].all()
    for a, b in zip(jax.tree.leaves(mask["reinit"]), jax.tree.leaves(mask["snip"]),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    for v in VARIANTS:
        rec = load_json(reference / "variants" / v / "metrics.json")
        assert results["variants"][v] == rec
        assert rec["control"] == (None if v == "snip" else v)
        assert rec["density"] == pytest.approx(int(np.floor(0.2 * n + 0.5)) / n)
        final = load(f"variants/{v}/final")["params"]
        for w, m in zip(jax.tree.leaves(final), jax.tree.leaves(mask[v]), strict=True):
            assert np.all(w[~m] == 0)
        acc = mlp_accuracy(final, test)
        assert acc == pytest.approx(rec["final_test_accuracy"], abs=1 / N_TEST + 1e-9)
        assert rec["curve"][-1]["test_accuracy"] == rec["final_test_accuracy"]
    assert results["variants"]["snip"]["final_test_accuracy"] > 0.3  # it learned


# A second writer refused (lotto imp, its lock live): tests/test_run_layer.py.
