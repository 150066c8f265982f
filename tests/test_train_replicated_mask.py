"""``lotto train --mask`` with one mask per replicate (a leading replicate axis, as
``lotto imp --replicates S`` stores its rounds' masks): replicate ``i`` trains
under mask ``i``.

Truths: two different hand-made masks (replicate 0 keeps the first half of every
kernel's rows, replicate 1 a random fifth); replicate ``i`` of the stacked run
against a single-network run of the same seed and data order under mask ``i``
alone (the one-mask path, which the other train tests check against numpy);
pruned weights exactly 0 under each replicate's own mask; the densities by
counting (the stacked run's one density is their mean: the
kernels are the same size). A stack of another size than ``--replicates`` is refused in one line
naming ``--mask`` and ``--replicates``.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from _killrun import assert_ok, here, shared_base, tiny_npz

from lotto_jax import models

# --validation 0: replicate 1 shares data seed 0's validation split, a --data-seed 1
# run would draw another one (and so train on other examples)
ARGS = ["--model", "mlp", "--steps", "20", "--eval-every", "10", "--batch-size", "32",
        "--validation", "0"]


def _save(path, tree):
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(str(path), tree)
    ckpt.wait_until_finished()


def _restore(path):
    return jax.tree.map(np.asarray, ocp.StandardCheckpointer().restore(str(path)))


def _density(mask):
    kernels = [m["kernel"] for m in mask.values()]
    return sum(int(k.sum()) for k in kernels) / sum(k.size for k in kernels)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """``(npz spec, [mask 0, mask 1], stacked mask dir, stacked run dir)``."""
    base = shared_base(tmp_path_factory)
    spec = f"npz:{tiny_npz(base)}"
    d = tmp_path_factory.mktemp("stacked")
    params = models.init(models.build("mlp"), jax.random.key(0), (40,))["params"]
    rng = np.random.default_rng(0)

    def first_rows(a):
        m = np.zeros(a.shape, bool)
        m[: a.shape[0] // 2] = True
        return m

    def kept(make):  # a mask of the kernels; biases (not pruned) all True
        return {layer: {k: make(v) if k == "kernel" else np.ones(v.shape, bool)
                        for k, v in leaves.items()} for layer, leaves in params.items()}

    pair = [kept(first_rows), kept(lambda a: rng.random(a.shape) < 0.2)]
    stacked = jax.tree.map(lambda a, b: np.stack([a, b]), *pair)
    _save(d / "mask", stacked)
    assert_ok(here(["train", "--dataset", spec, *ARGS, "--replicates", "2",
                    "--mask", d / "mask", "--out", d / "run"]))
    return spec, pair, d / "mask", d / "run"


def test_replicate_i_trains_under_mask_i(setup):
    _, pair, _, run = setup
    stored = _restore(run / "mask")
    trained = _restore(run / "train" / "final")["params"]
    result = json.loads((run / "results.json").read_text())
    assert result["replicates"] == 2
    # one density over the replicates' kernels together
    assert result["density"] == pytest.approx(np.mean([_density(m) for m in pair]))
    for i, mask in enumerate(pair):
        for a, b in zip(jax.tree.leaves(stored), jax.tree.leaves(mask), strict=True):
            np.testing.assert_array_equal(a[i], b)
        for layer, m in mask.items():
            w = trained[layer]["kernel"][i]
            assert np.all(w[~m["kernel"]] == 0.0)
            assert np.count_nonzero(w[m["kernel"]]) > 0.9 * m["kernel"].sum()


def test_replicate_1_is_the_single_run_under_mask_1(setup, tmp_path):
    """Seed 1 and data order 1 under mask 1 alone: replicate 1's weights and
    curve (the vmapped step may differ from the single one in the last bits)."""
    spec, pair, _, run = setup
    _save(tmp_path / "mask1", pair[1])
    assert_ok(here(["train", "--dataset", spec, *ARGS, "--seed", "1", "--data-seed", "1",
                    "--mask", tmp_path / "mask1", "--out", tmp_path / "one"]))
    single = _restore(tmp_path / "one" / "train" / "final")["params"]
    stacked = _restore(run / "train" / "final")["params"]
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(stacked), strict=True):
        np.testing.assert_allclose(a, b[1], atol=1e-5, rtol=1e-5)
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    both = json.loads((run / "results.json").read_text())
    assert one["density"] == pytest.approx(_density(pair[1]))
    assert one["final_test_accuracy"] == pytest.approx(both["final_test_accuracy"][1],
                                                       abs=1 / 256 + 1e-9)


def test_a_stack_of_another_size_is_refused(setup, tmp_path, capsys):
    from lotto_jax.runs import cli

    spec, _, mask, _ = setup
    status = cli.main(["train", "--dataset", spec, *ARGS, "--replicates", "3",
                       "--mask", str(mask), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2, err
    (line,) = [x for x in err.splitlines() if x.startswith("lotto: error:")]
    assert "Traceback" not in err
    for name in ("--mask:", "2 replicates", "--replicates is 3", "--replicates 2"):
        assert name in line, (name, line)
