"""``lotto earlybird`` on the tiny 40-feature problem: the draw step against the rule
applied by hand (numpy Hamming distances over the stored masks), the masks'
density counted, the ticket trained from the drawn weights, a rerun that trains
nothing, a kill before the draw resumed, and the refusals."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from _killrun import assert_killed, assert_ok, engine_lines, lotto
from test_cli_errors import TINY, assert_one_line_error, finished_imp, here, shared

__all__ = ["finished_imp", "here", "shared"]  # the fixtures, imported

EB = ["--model", "mlp", "--steps", "60", "--eval-every", "5", "--batch-size", "32"]


def _kernels(tree):
    return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(tree)
                           if np.ndim(x) >= 2])


def test_earlybird_draws_by_the_rule_and_trains_the_ticket(shared, here, finished_imp,
                                                           tmp_path):
    d = tmp_path / "eb"
    imp_dir, _ = finished_imp  # 20 steps per round, rounds 0-2
    args = ["earlybird", *EB, "--dataset", f"npz:{shared / 'tiny.npz'}", "--density", "0.3",
            "--epsilon", "0.024", "--save-every", "20", "--imp", imp_dir, "--out", d]
    # killed after the dense unit's checkpoint at step 20 (before the draw): the
    # resumed run rebuilds the FIFO from the stored masks
    cache = shared / "xla_cache"
    assert_killed(lotto(args, cache_dir=cache, kill_after="dense/checkpoints/step_00000020"))
    assert not (d / "eb" / "draw.manifest.json").exists()
    p = lotto(args, cache_dir=cache)
    assert_ok(p)
    assert "dense: training from step 20" in engine_lines(p)
    res = json.load(open(d / "results.json"))
    ckpt = ocp.StandardCheckpointer()
    steps = list(range(0, 61, 5))
    stored = [_kernels(ckpt.restore(os.path.abspath(d / "eb" / "masks" / f"step_{n:08d}")))
              for n in steps]
    for m in stored:  # global magnitude masks at exactly 30 % of the kernels
        assert m.sum() == round(0.3 * m.size)
    # the rule by hand: the newest mask against each of the 4 before it, all <= eps
    fired = [i for i in range(4, len(steps))
             if all(np.mean(stored[i] != stored[j]) <= 0.024 for j in range(i - 4, i))]
    assert fired, [np.mean(stored[i] != stored[i - 1]) for i in range(1, len(steps))]
    assert res["draw_step"] == steps[fired[0]]
    assert res["draw_step"] > 20  # full FIFOs (from step 20 on) were rejected first
    assert res["total_steps"] == res["draw_step"] + 60
    draw = ckpt.restore(os.path.abspath(d / "eb" / "draw_mask"))
    np.testing.assert_array_equal(_kernels(draw), stored[fired[0]])
    assert abs(res["ticket_density"] - 0.3) < 1e-3
    final = ckpt.restore(os.path.abspath(d / "ticket" / "final"))
    for w, m in zip(jax.tree.leaves(final["params"]), jax.tree.leaves(draw), strict=True):
        assert np.all(np.asarray(w)[~np.asarray(m)] == 0)
    # the distance curve: the rule's distances at every evaluation (those after the
    # resume computed against masks the killed process stored)
    assert [p["step"] for p in res["distances"]] == steps
    for i, p in enumerate(res["distances"]):
        want = [np.mean(stored[i] != stored[j]) for j in range(max(0, i - 4), i)]
        np.testing.assert_allclose(p["distances"], want, atol=1e-12)
    assert os.path.exists(d / "figures" / "distance.png")
    # IMP beside it: its round closest to 30 %, and the steps of every round to it
    dens = [json.load(open(os.path.join(imp_dir, f"round_{r:03d}", "metrics.json")))["density"]
            for r in range(3)]
    best = int(np.argmin([abs(x - 0.3) for x in dens]))
    assert res["imp"]["round"] == best and res["imp"]["total_steps"] == 20 * (best + 1)
    # a finished run trains nothing
    r = here(*args)
    assert r.returncode == 0
    assert [line for line in r.stderr.splitlines() if "finished, kept" in line] == [
        "lotto: dense: finished, kept", "lotto: ticket: finished, kept"]
    r = here("ls", tmp_path)
    assert r.returncode == 0 and "earlybird  done" in r.stdout, r.stdout + r.stderr
    r = here("report", d, "--figures", tmp_path / "fig")
    assert r.returncode == 0 and "draw step" in r.stdout


def test_earlybird_refusals(shared, here, tmp_path):
    base = ["earlybird", *TINY, "--dataset", f"npz:{shared / 'tiny.npz'}", "--out",
            tmp_path / "x"]
    for eps in ("0", "1", "1.5"):
        assert_one_line_error(here(*base, "--epsilon", eps), "--epsilon", "(0, 1)")
    assert_one_line_error(here(*base, "--density", "1.0"), "--density")
    assert_one_line_error(here(*base, "--keep", "1"), "--keep")
    assert_one_line_error(here(*base, "--imp", tmp_path / "nowhere"), "--imp", "nowhere")
    assert not (tmp_path / "x").exists()


def _units(mask):
    """Which hidden units a stored MLP mask keeps: a unit's kernel column."""
    return np.concatenate([np.asarray(mask[k]["kernel"]).any(0)
                           for k in sorted(mask) if k != "output"])


def test_neuron_earlybird_draws_whole_units_by_the_rule_over_units(shared, here, tmp_path):
    """``--structure neuron``: every stored mask keeps round(0.5 x units) of each
    hidden layer, whole (kernel column, bias and the next layer's rows), and the
    distances and the draw are the rule applied by hand to the unit masks."""
    d = tmp_path / "eb"
    r = here("earlybird", *EB, "--dataset", f"npz:{shared / 'tiny.npz'}", "--density", "0.5",
             "--scope", "layerwise", "--structure", "neuron", "--epsilon", "0.2", "--out", d)
    assert r.returncode == 0, r.stderr
    res = json.load(open(d / "results.json"))
    assert res["structure"] == "neuron"
    ckpt = ocp.StandardCheckpointer()
    steps = list(range(0, 61, 5))
    stored = [ckpt.restore(os.path.abspath(d / "eb" / "masks" / f"step_{n:08d}")) for n in steps]
    units = [_units(m) for m in stored]
    for m in stored:
        rows = np.ones(np.shape(m["Dense_0"]["kernel"])[0], bool)  # the inputs
        for k in [*(k for k in sorted(m) if k != "output"), "output"]:
            kernel = np.asarray(m[k]["kernel"])
            cols = kernel.any(0) if k != "output" else np.ones(kernel.shape[1], bool)
            if k != "output":
                assert cols.sum() == round(0.5 * cols.size)
                np.testing.assert_array_equal(np.asarray(m[k]["bias"]), cols)
            np.testing.assert_array_equal(kernel, rows[:, None] & cols[None, :], err_msg=k)
            rows = cols
    for i, p in enumerate(res["distances"]):
        want = [np.mean(units[i] != units[j]) for j in range(max(0, i - 4), i)]
        np.testing.assert_allclose(p["distances"], want, atol=1e-12)
    fired = [i for i in range(4, len(steps))
             if all(np.mean(units[i] != units[j]) <= 0.2 for j in range(i - 4, i))]
    assert fired and res["draw_step"] == steps[fired[0]]
    r = here("earlybird", *EB, "--dataset", f"npz:{shared / 'tiny.npz'}", "--structure",
             "layer", "--out", tmp_path / "x")
    assert_one_line_error(r, "--structure", "'layer'")
    assert not (tmp_path / "x").exists()


def _find(tree, key):
    """The first subtree stored under ``key`` in a restored checkpoint."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for v in tree.values():
            if (hit := _find(v, key)) is not None:
                return hit
    if isinstance(tree, list | tuple):
        for v in tree:
            if (hit := _find(v, key)) is not None:
                return hit
    return None


def test_worm_damps_masked_out_gradients_from_the_elbow(shared, here, tmp_path):
    """``--worm``: it starts at the first evaluation whose full FIFO has a mean
    distance below the elbow (numpy over the stored masks); the checkpoint of a
    killed run holds the gradient scale, 1 on that step's mask and χ off it, and
    the run resumes from it; up to the elbow the masks are the plain run's."""
    args = ["earlybird", *EB, "--dataset", f"npz:{shared / 'tiny.npz'}", "--density", "0.3",
            "--save-every", "20"]
    assert here(*args, "--out", tmp_path / "plain").returncode == 0
    d = tmp_path / "worm"
    worm = [*args, "--worm", "--worm-chi", "0.01", "--worm-elbow", "0.1", "--out", d]
    cache = shared / "xla_cache"
    assert_killed(lotto(worm, cache_dir=cache, kill_after="dense/checkpoints/step_00000040"))
    ckpt = ocp.StandardCheckpointer()
    state = ckpt.restore(os.path.abspath(d / "dense" / "checkpoints" / "step_00000040"))
    p = lotto(worm, cache_dir=cache)
    assert_ok(p)
    assert "dense: training from step 40" in engine_lines(p)
    res = json.load(open(d / "results.json"))
    steps = list(range(0, 61, 5))
    stored = [ckpt.restore(os.path.abspath(d / "eb" / "masks" / f"step_{n:08d}")) for n in steps]
    flat = [_kernels(m) for m in stored]
    means = [np.mean([np.mean(flat[i] != flat[j]) for j in range(i - 4, i)]) if i >= 4
             else 1.0 for i in range(len(steps))]
    start = next(i for i, m in enumerate(means) if m < 0.1)
    assert res["worm"] and res["worm_step"] == steps[start] <= 40
    scale = _find(state, "scale")
    for s, m in zip(jax.tree.leaves(scale), jax.tree.leaves(stored[steps.index(40)]),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(s), np.where(np.asarray(m), 1.0, 0.01)
                                      .astype(np.float32))
    plain = [_kernels(ckpt.restore(os.path.abspath(
        tmp_path / "plain" / "eb" / "masks" / f"step_{n:08d}"))) for n in steps]
    for i in range(start + 1):  # up to the elbow WORM trains as plain dense training
        np.testing.assert_array_equal(plain[i], flat[i])
    r = here(*args, "--worm-chi", "0", "--out", tmp_path / "x")
    assert_one_line_error(r, "--worm-chi", "(0, 1]")
