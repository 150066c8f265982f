"""Many tickets in one compiled step: replicated IMP, stacked controls, compile
counts, the write-behind store, timing, and IMP on an 8-device mesh.

The tiny problem of tests/_imp_run.py (MLP 40-32-10 on MNIST-1D, 30 steps).
Independent truths: the single run (S = 1) for replicate 0; numpy magnitude rankings
for every replicate's masks; one-by-one control training (``stack_controls=False``)
for the stacked controls; an uninterrupted run for a resumed one; the jit caches'
sizes for the compile counts; one device for the mesh.
"""

import json
import os
import subprocess
import sys
import threading
import time

import _imp_run as tiny
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lotto_jax import data, imp, train
from lotto_jax.runs import imp as imp_run
from lotto_jax.runs import writer as runner
from lotto_jax.runs.store import RunStore

HELPER = os.path.join(os.path.dirname(__file__), "_imp_run.py")
S = 2


@pytest.fixture(scope="module")
def dataset():
    return data.load("mnist1d", validation=1000)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def row(tree, i):
    return jax.tree.map(lambda x: np.asarray(x)[i], tree)


def restore(directory, item):
    return ocp.StandardCheckpointer().restore(os.path.join(directory, item))


def top_k_mask(weights, prev, k):
    """The k largest |w| among prev's kept entries (ties: the later position wins,
    as prune.by_fraction's stable ascending order removes the earlier first)."""
    w, kept = np.abs(weights).ravel(), prev.ravel()
    order = np.lexsort((np.arange(w.size), np.where(kept, w, -1.0)))
    out = np.zeros(w.size, bool)
    out[order[w.size - k:]] = True
    return out.reshape(weights.shape)


# ----------------------------------------------------------------------------------
# replicates


def check_crash_and_resume(trainer, dataset, init_fn, params, ref, tmp_path, **kw):
    """A crash while the stacked controls (x 2 replicates) of round 2 train: the
    resumed run trains only them, as one stack from their checkpoints at step 20,
    and ends bit for bit where the uninterrupted run ``ref`` ended."""

    class Crash(Exception):
        pass

    save_step = RunStore.save_step

    def crashing(self, prefix, step, tree, **k):
        save_step(self, prefix, step, tree, **k)
        if prefix == "controls/random/round_002":
            raise Crash(prefix)

    d = str(tmp_path / "crash")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunStore, "save_step", crashing)
        with pytest.raises(Crash):
            tiny.run(trainer, params, dataset, init_fn, store=d, **kw)
    assert not os.path.exists(os.path.join(d, "controls/reinit/round_002/metrics.json"))
    calls = []
    fit = train.fit

    def logged(trainer, state, *args, **k):
        calls.append((labels["now"].split(" (")[0], np.asarray(state.step).tolist()))
        return fit(trainer, state, *args, **k)

    with pytest.MonkeyPatch.context() as mp:
        labels = tiny.track_labels(mp.setattr)
        mp.setattr(train, "fit", logged)
        tiny.run(trainer, params, dataset, init_fn, store=d, **kw)
    assert calls == [("reinit+shuffle+random 2/2", [20] * 3 * S)]
    for c in imp.CONTROLS:
        for item in ("mask", "final"):
            assert_trees_equal(restore(d, f"controls/{c}/round_002/{item}"),
                               restore(ref, f"controls/{c}/round_002/{item}"))
        with open(os.path.join(d, f"controls/{c}/round_002/metrics.json")) as f, \
                open(os.path.join(ref, f"controls/{c}/round_002/metrics.json")) as g:
            got, want = json.load(f), json.load(g)
        want.pop("timing")  # ref was run with timing=True
        assert got == want
        assert not os.path.exists(os.path.join(d, f"controls/{c}/round_002/checkpoints"))


def test_replicate_zero_is_the_single_run_and_each_prunes_its_own(dataset, tmp_path):
    """S = 2 vs S = 1 on a fresh trainer: replicate 0's masks (trunk and controls)
    are the single run's; replicate 1 prunes its own θT; stored items and metrics
    carry the replicate axis; one compile per distinct stack size; timing; and a
    crash in the stacked controls resumes bit for bit."""
    _, module, params0, trainer, init_fn = tiny.setup(dataset)
    single = tiny.run(trainer, params0, dataset, init_fn, store=None,
                      controls=imp.CONTROLS)
    # the trunk alone (plain), the three controls stacked (size 3)
    assert (trainer._train_chunk._cache_size(),
            trainer._train_chunk_vmapped._cache_size()) == (1, 1)
    p_rep, dk_rep, k_rep = tiny.replicated(module, dataset, S)
    d = str(tmp_path / "rep")
    rep = tiny.run(trainer, p_rep, dataset, init_fn, store=d, controls=imp.CONTROLS,
                   data_key=dk_rep, key=k_rep, replicates=True, timing=True)
    # + the replicated trunk (size 2) and the stacked controls x replicates (size 6)
    assert (trainer._train_chunk._cache_size(),
            trainer._train_chunk_vmapped._cache_size()) == (1, 3)
    assert trainer._evaluate_vmapped._cache_size() == 3

    for r in range(3):
        m = rep.rounds[r].mask
        assert np.shape(m["Dense_0"]["kernel"]) == (S, 40, 32)
        assert_trees_equal(row(m, 0), single.rounds[r].mask)
        if r:
            assert not np.array_equal(row(m, 1)["Dense_0"]["kernel"],
                                      row(m, 0)["Dense_0"]["kernel"])
            for c in imp.CONTROLS:
                assert_trees_equal(row(rep.controls[c][r - 1].mask, 0),
                                   single.controls[c][r - 1].mask)
    # replicate 1 prunes its own trained weights (round 0's θT, from the store)
    theta_t = restore(d, "round_000/final")["params"]
    m1 = restore(d, "round_001/mask")
    for layer, k in (("Dense_0", 1024), ("output", 288)):
        for i in range(S):
            np.testing.assert_array_equal(
                m1[layer]["kernel"][i],
                top_k_mask(theta_t[layer]["kernel"][i], np.ones((40, 32) if layer ==
                           "Dense_0" else (32, 10), bool), k))
    # metrics per replicate, replicate 0's close to the single run's
    for got, want in [(rep.rounds[r].metrics, single.rounds[r].metrics) for r in range(3)] + [
            (rep.controls[c][1].metrics, single.controls[c][1].metrics) for c in imp.CONTROLS]:
        assert len(got["final_test_accuracy"]) == S
        assert got["density"] == want["density"]
        assert [lay["kept"][0] for lay in got["layers"].values()] == \
            [lay["kept"] for lay in want["layers"].values()]
        # float rounding of the vmapped step may flip at most a test example or two
        assert abs(got["final_test_accuracy"][0] - want["final_test_accuracy"]) <= 2e-3
        np.testing.assert_allclose([c["test_loss"][0] for c in got["curve"]],
                                   [c["test_loss"] for c in want["curve"]], rtol=1e-4)
    assert np.shape(restore(d, "controls/reinit/round_002/init")["params"]["output"]["bias"]) \
        == (S, 10)
    # timing: in the result per round, in every metrics.json with timing=True
    assert [t["round"] for t in rep.timing] == [0, 1, 2]
    for t in rep.timing:
        parts = sum(t[k] for k in imp_run.TIMING_KEYS)
        assert all(t[k] >= 0 for k in imp_run.TIMING_KEYS) and parts <= t["total_s"] * 1.01
        assert t["train_s"] > 0 and t["eval_s"] > 0
    assert rep.timing[1]["prune_s"] > 0
    assert set(rep.rounds[1].metrics["timing"]) == set(imp_run.TIMING_KEYS)
    assert rep.controls["random"][0].metrics["timing"]["stack"] == list(imp.CONTROLS)
    # a crash inside the stacked, replicated controls of round 2, then a resume
    check_crash_and_resume(trainer, dataset, init_fn, p_rep, d, tmp_path,
                           controls=imp.CONTROLS, data_key=dk_rep, key=k_rep,
                           replicates=True)


def test_stacked_controls_equal_one_by_one(dataset, tmp_path):
    """The controls of a round trained in one vmapped fit equal one-by-one training
    to float rounding; the masks are identical."""
    _, _, params0, trainer, init_fn = tiny.setup(dataset)
    a, b = str(tmp_path / "stacked"), str(tmp_path / "one_by_one")
    stacked = tiny.run(trainer, params0, dataset, init_fn, store=a, controls=imp.CONTROLS)
    sizes = (trainer._train_chunk._cache_size(), trainer._train_chunk_vmapped._cache_size())
    one = tiny.run(trainer, params0, dataset, init_fn, store=b, controls=imp.CONTROLS,
                   stack_controls=False)
    assert sizes == (1, 1)  # the trunk, and all controls in one stack of 3
    assert (trainer._train_chunk._cache_size(),
            trainer._train_chunk_vmapped._cache_size()) == (1, 1)  # nothing new
    for c in imp.CONTROLS:
        for r in (1, 2):
            x, y = stacked.controls[c][r - 1], one.controls[c][r - 1]
            assert_trees_equal(x.mask, y.mask)
            item = f"controls/{c}/round_{r:03d}/final"
            for p, q in zip(leaves(restore(a, item)), leaves(restore(b, item)), strict=True):
                np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)
            for f in ("test_loss", "val_loss", "train_loss"):
                np.testing.assert_allclose(
                    [np.nan if e[f] is None else e[f] for e in x.metrics["curve"]],
                    [np.nan if e[f] is None else e[f] for e in y.metrics["curve"]],
                    rtol=1e-5)
            assert abs(x.metrics["best_test_accuracy"]
                       - y.metrics["best_test_accuracy"]) <= 2e-3
    for x, y in zip(stacked.rounds, one.rounds, strict=True):
        assert x.metrics == y.metrics  # the trunk trains the same way in both


def test_replicates_need_one_leading_axis(dataset):
    _, module, _, trainer, init_fn = tiny.setup(dataset)
    p_rep, dk_rep, _ = tiny.replicated(module, dataset, S)
    with pytest.raises(ValueError, match=r"replicates: .*key: \[None\]"):
        tiny.run(trainer, p_rep, dataset, init_fn, store=None, data_key=dk_rep,
                 replicates=True)


# ----------------------------------------------------------------------------------
# the write-behind store


def test_write_behind_orders_writes_and_reads_wait_only_for_their_path(tmp_path):
    """Behaviour, not timing: while the "slow" save is held (it cannot finish before
    ``release`` is set), reads of other paths return and queued writes stay
    unwritten; a read of "slow" returns only after that save has finished."""
    store = RunStore.open(str(tmp_path / "run"), {"a": 1})
    release, started, finished = threading.Event(), threading.Event(), threading.Event()
    save = RunStore.save

    def slow(self, item, tree, **kw):
        if item == "slow":
            started.set()
            release.wait(600)  # only a failing test waits this out
        save(self, item, tree, **kw)
        if item == "slow":
            finished.set()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunStore, "save", slow)
        w = runner.WriteBehind(store, runner.Clock())
        try:
            w.save("slow", {"x": np.arange(3.0)})
            w.write_json("slow_done.json", {"ok": True})  # queued behind "slow"
            assert started.wait(600)
            assert not w.has("other") and not w.exists("slow_done.json.bak")
            assert not finished.is_set()  # those reads did not wait for "slow"
            assert not store.exists("slow_done.json")  # still queued
            seen = []
            reader = threading.Thread(
                target=lambda: seen.append((w.has("slow"), finished.is_set())))
            reader.start()
            time.sleep(0.3)  # lets the reader reach its wait (no assertion on time)
            assert not finished.is_set()
        finally:
            release.set()
        reader.join()
        assert seen == [(True, True)]  # returned only after the save had finished
        assert w.read_json("slow_done.json") == {"ok": True}
        np.testing.assert_array_equal(w.restore("slow")["x"], np.arange(3.0))
        w.close()


def test_write_behind_failure_stops_the_queue_and_is_raised(tmp_path):
    class Full(OSError):
        pass

    store = RunStore.open(str(tmp_path / "run"), {"a": 1})
    save = RunStore.save

    def failing(self, item, tree, **kw):
        if item == "bad":
            raise Full("disk full")
        save(self, item, tree, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunStore, "save", failing)
        w = runner.WriteBehind(store, runner.Clock())
        w.save("good", {"x": np.zeros(2)})
        w.save("bad", {"x": np.zeros(2)})
        w.write_json("marker.json", {"done": True})  # must never land after a failure
        with pytest.raises(Full, match="disk full"):
            w.flush()
        with pytest.raises(Full):
            w.save("later", {"x": np.zeros(2)})
        w.close(raise_errors=False)
    assert store.has("good") and not store.has("bad") and not store.has("later")
    assert not store.exists("marker.json")


def test_saves_copy_the_tree_so_donated_buffers_can_move_on(tmp_path):
    store = RunStore.open(str(tmp_path / "run"), {"a": 1})
    w = runner.WriteBehind(store, runner.Clock())
    x = jax.numpy.arange(4.0)
    w.save("x", {"x": x})
    x.delete()  # what a donating train step does to its input
    np.testing.assert_array_equal(w.restore("x")["x"], np.arange(4.0))
    w.close()


# ----------------------------------------------------------------------------------
# a mesh of 8 host devices


def test_imp_on_a_data_mesh_gives_the_single_device_masks(dataset, tmp_path):
    """IMP data-parallel over 8 host devices (a subprocess: its params sharded over
    the 8, one compile per train chunk) gives the masks of the same run on one
    device (made here) bit for bit, and its params to float rounding."""
    path, out = str(tmp_path / "data.npz"), str(tmp_path / "mesh.npz")
    tiny.save_dataset(dataset, path)
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    done = subprocess.Popen([sys.executable, HELPER, "--mesh-check", path, out],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    _, _, params0, trainer, init_fn = tiny.setup(dataset)
    one = tiny.mesh_arrays(tiny.run(trainer, params0, dataset, init_fn, store=None,
                                    controls=tiny.MESH_CONTROLS))
    stdout, stderr = done.communicate(timeout=600)
    assert done.returncode == 0, stdout + stderr
    assert "MESH OK" in stdout
    with np.load(out) as many:
        assert sorted(many.files) == sorted(one)
        for name, x in one.items():
            if name.startswith("params/"):
                np.testing.assert_allclose(many[name], x, rtol=1e-4, atol=1e-5,
                                           err_msg=name)
            else:
                np.testing.assert_array_equal(many[name], x, err_msg=name)
