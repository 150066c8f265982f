"""lotto_jax.export (compaction, sparse inference) and ``lotto export``.

The truth is the masked network itself, ``module.apply({"params": masks.apply(params,
mask)}, x)`` on random inputs (float32 tolerance 1e-5 absolute on O(1) logits), and
hand counts of units and parameters for hand-built masks.
"""

from __future__ import annotations

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_cli_errors import assert_one_line_error, finished_imp, shared
from test_readme import _block

from lotto_jax import export, models
from lotto_jax.runs import cli

__all__ = ["finished_imp", "shared"]  # the fixtures, imported

ATOL = 1e-5


def _init(module, shape, seed=0):
    """Random params of ``module`` as numpy arrays (kernels N(0, 1/fan_in), biases
    N(0, 0.25): nonzero, so bias-only units have constants); its shapes from
    ``jax.eval_shape``, so no initialiser is compiled."""
    tree = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, *shape)))["params"]
    rng = np.random.default_rng(seed)

    def draw(x):
        scale = 0.5 if len(x.shape) == 1 else math.prod(x.shape[:-1]) ** -0.5
        return (scale * rng.normal(size=x.shape)).astype(np.float32)

    return jax.tree.map(draw, tree)


def _ones(params):
    return jax.tree.map(lambda p: np.ones(p.shape, bool), params)


def _masked(params, mask):
    return jax.tree.map(lambda p, m: np.where(m, p, np.float32(0)), params, mask)


def _set(tree, path, fn):
    """A copy of ``tree`` (nested dicts) with leaf ``path`` replaced by ``fn(leaf)``."""
    head, _, rest = path.partition("/")
    out = dict(tree)
    out[head] = fn(tree[head]) if not rest else _set(tree[head], rest, fn)
    return out


def _at(index, value):
    def f(x):
        x = np.array(x)
        x[index] = value
        return x
    return f


def _off(mask, path, index):
    """``mask`` with entries ``index`` (a numpy index) of leaf ``path`` False."""
    return _set(mask, path, _at(index, False))


def _random_mask(params, density, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: rng.random(p.shape) < density
                        if p.ndim >= 2 else np.ones(p.shape, bool), params)


def _x(shape, seed=1, n=7):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


def assert_same(module, params, mask, c, shape, seed=1):
    x = _x(shape, seed)
    want = jax.jit(module.apply)({"params": _masked(params, mask)}, x)
    got = jax.jit(c.module.apply)({"params": c.params}, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=ATOL, rtol=1e-5)
    assert models.count_params(c.params) == c.report["params_after"]


def test_hand_built_mlp_counts_and_fold():
    """MLP 2 -> 4 -> 3 -> 2. Dense_0 unit 1: its row of Dense_1 masked (read by
    nothing); unit 2: its column masked (constant relu(b), folded into Dense_1's
    bias); Dense_1 unit 0: its row of output masked. Kept: Dense_0 {0, 3}, Dense_1
    {1, 2}: 2*2+2 + 2*2+2 + 2*2+2 = 18 params of 2*4+4 + 4*3+3 + 3*2+2 = 35."""
    model = models.MLP(features=(4, 3), num_classes=2)
    params = _init(model, (2,))
    params = _set(params, "Dense_0/bias", _at(2, 0.7))  # relu(b) > 0
    mask = _ones(params)
    mask = _off(mask, "Dense_1/kernel", np.s_[1, :])
    mask = _off(mask, "Dense_0/kernel", np.s_[:, 2])
    mask = _off(mask, "output/kernel", np.s_[0, :])
    c = export.compact(model, params, mask)
    r = c.report
    assert c.module.features == (2, 2) and type(c.module) is models.MLP
    assert (r["params_before"], r["params_after"]) == (35, 18)
    assert (r["units_before"], r["units_after"]) == (7, 4)
    assert r["kept_before"] == 35 - 3 - 2 - 2
    assert r["groups"]["Dense_0"] == {"units_before": 4, "units_after": 2, "kept": [0, 3]}
    assert r["groups"]["Dense_1"]["kept"] == [1, 2]
    assert r["layers"]["Dense_1"] == {"params_before": 15, "params_after": 6}
    # the fold by hand: Dense_1's bias gains relu(0.7) * W1[2, kept]
    w1, b1 = np.asarray(params["Dense_1"]["kernel"]), np.asarray(params["Dense_1"]["bias"])
    np.testing.assert_allclose(np.asarray(c.params["Dense_1"]["bias"]),
                               (b1 + 0.7 * w1[2])[[1, 2]], atol=1e-6)
    assert_same(model, params, mask, c, (2,))


def test_bias_only_units_fold_exactly():
    """Half of LeNet-300-shaped Dense_0's units keep only their bias (positive and
    negative): all go, and the outputs agree to float rounding."""
    model = models.LeNet300(features=(30, 10), num_classes=4)
    params = _init(model, (12,))
    mask = _off(_ones(params), "Dense_0/kernel", np.s_[:, ::2])
    c = export.compact(model, params, mask)
    assert c.module.features == (15, 10) and type(c.module) is models.LeNet300
    assert c.report["groups"]["Dense_0"]["kept"] == list(range(1, 30, 2))
    assert_same(model, params, mask, c, (12,))


@pytest.mark.parametrize("density", [0.05, 0.15])
def test_random_unstructured_masks_on_a_lenet300_shaped_mlp(density):
    """Random masks leave dead units (no outgoing or no incoming weight); whole units
    pruned on top (Dense_1 units 0-4 by their incoming columns and biases)."""
    model = models.MLP(features=(40, 20), num_classes=5)
    params = _init(model, (16,))
    mask = _random_mask(params, density, seed=int(density * 100))
    mask = _off(_off(mask, "Dense_1/kernel", np.s_[:, :5]), "Dense_1/bias", np.s_[:5])
    c = export.compact(model, params, mask)
    assert c.report["units_after"] < c.report["units_before"]
    assert not set(range(5)) & set(c.report["groups"]["Dense_1"]["kept"])
    assert_same(model, params, mask, c, (16,))


def test_resmlp_inner_units_and_whole_blocks():
    """block_1: every leaf masked; block_2: fc2's kernel and bias masked (adds 0);
    block_0: fc1 units 0-1 bias-only (folded into fc2's bias), units 4-5 without
    fc2 rows (read by nothing). Two blocks remain, renumbered: block_1 is block_3."""
    model = models.build("resmlp", blocks=4, width=8, hidden=6, num_classes=3)
    params = _init(model, (5,))
    mask = _ones(params)
    for leaf in ("norm/scale", "norm/bias", "fc1/kernel", "fc1/bias", "fc2/kernel",
                 "fc2/bias"):
        mask = _off(mask, f"block_1/{leaf}", np.s_[...])
    mask = _off(_off(mask, "block_2/fc2/kernel", np.s_[...]), "block_2/fc2/bias", np.s_[...])
    mask = _off(mask, "block_0/fc1/kernel", np.s_[:, :2])
    mask = _off(mask, "block_0/fc2/kernel", np.s_[4:, :])
    c = export.compact(model, params, mask)
    r = c.report
    assert (c.module.blocks, c.module.hiddens) == (2, (2, 6))
    assert r["removed_blocks"] == ["block_1", "block_2"]
    assert (r["blocks_before"], r["blocks_after"]) == (4, 2)
    assert r["groups"]["block_0/fc1"]["kept"] == [2, 3]
    assert r["groups"]["block_1/fc1"]["units_after"] == 0
    assert r["layers"]["block_2/fc2"]["params_after"] == 0
    np.testing.assert_array_equal(np.asarray(c.params["block_1"]["fc1"]["kernel"]),
                                  np.asarray(params["block_3"]["fc1"]["kernel"]))
    assert_same(model, params, mask, c, (5,))
    # every block adds 0: one stays (a ResMLP has >= 1 block)
    zero = _ones(params)
    for b in range(4):
        zero = _off(_off(zero, f"block_{b}/fc2/kernel", np.s_[...]), f"block_{b}/fc2/bias",
                    np.s_[...])
    c = export.compact(model, params, zero)
    assert c.module.blocks == 1 and c.module.hiddens == (1,)
    assert_same(model, params, zero, c, (5,))


def test_resmlp_default_param_tree_is_unchanged():
    def shapes(model):
        tree = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 40)))
        return jax.tree.map(lambda x: x.shape, tree)

    assert shapes(models.build("resmlp")) == shapes(models.build("resmlp", hiddens=(128,) * 8))
    assert shapes(models.build("resmlp", hiddens=(3, 5)[:1] * 8))["params"]["block_7"][
        "fc1"]["kernel"] == (128, 3)
    with pytest.raises(ValueError, match=r"ResMLP\.hiddens: expected 8 widths"):
        shapes(models.build("resmlp", hiddens=(4, 4)))


@pytest.mark.parametrize("residual", [True, False])
def test_mnist1d_mlp(residual):
    """The residual stream's units go when neither Dense_1 nor output reads them
    (units 0-2) or when both layers writing them are bias-only (units 3-5: the
    constant relu(b0) + relu(b1) folds into Dense_1's and output's biases)."""
    model = models.MNIST1DMLP(hidden=16, residual=residual, num_classes=3)
    params = _init(model, (10,))
    mask = _ones(params)
    mask = _off(_off(mask, "Dense_1/kernel", np.s_[:3, :]), "output/kernel", np.s_[:3, :])
    mask = _off(_off(mask, "Dense_0/kernel", np.s_[:, 3:6]), "Dense_1/kernel", np.s_[:, 3:6])
    c = export.compact(model, params, mask)
    if residual:
        assert c.module.hidden == 10 and type(c.module) is models.MNIST1DMLP
        assert c.report["groups"]["Dense_0+Dense_1"]["kept"] == list(range(6, 16))
    else:  # two groups: Dense_0's units 0-2 unread, 3-5 constant; Dense_1's 3-5 constant
        assert type(c.module) is models.MLP and c.module.features == (10, 10)
    assert_same(model, params, mask, c, (10,))


def test_convnet_channels():
    """ConvNet (4, "M", 8), dense (6,), on 8x8x2. Conv_0 channel 1: unread (its
    input slice of Conv_1 masked); channel 2: bias-only with relu(b) > 0 feeding a
    conv (zero padding: no exact fold): stays; channel 3: kernel and bias masked
    (constant 0): goes. Conv_1 channel 5: bias-only into the dense layer (folded
    over its 4x4 rows); channel 6: its rows of Dense_0 masked."""
    model = models.ConvNet(plan=(4, "M", 8), dense=(6,), num_classes=3)
    params = _init(model, (8, 8, 2))
    params = _set(params, "Conv_0/bias", _at(2, 0.6))
    params = _set(params, "Conv_1/bias", _at(5, 0.4))
    mask = _ones(params)
    mask = _off(mask, "Conv_1/kernel", np.s_[:, :, 1, :])
    mask = _off(mask, "Conv_0/kernel", np.s_[..., 2:4])
    mask = _off(mask, "Conv_0/bias", np.s_[3])
    mask = _off(mask, "Conv_1/kernel", np.s_[..., 5])
    mask = _off(mask, "Dense_0/kernel", np.s_[6::8, :])
    c = export.compact(model, params, mask)
    assert c.module.plan == (2, "M", 6) and c.module.dense == (6,)
    assert c.report["groups"]["Conv_0"]["kept"] == [0, 2]
    assert c.report["groups"]["Conv_1"]["kept"] == [0, 1, 2, 3, 4, 7]
    assert_same(model, params, mask, c, (8, 8, 2))


def test_vgg_channels_with_batchnorm():
    """VGG (4, "M", 6) on 4x4x2, in inference mode (random running statistics).
    Conv_0 channel 1: unread; channel 2: BatchNorm scale masked, so it outputs
    relu(beta) > 0 into a conv: stays; channel 3: scale and offset masked (0): goes.
    Conv_1 channel 4: kernel masked, a constant through BN into the global mean and
    ``output`` (folded); channel 5: its row of ``output`` masked."""
    model = models.VGG(plan=(4, "M", 6), num_classes=3)
    params = _init(model, (4, 4, 2))
    params = _set(params, "BatchNorm_0/bias", _at(2, 0.5))
    rng = np.random.default_rng(7)
    stats = {"batch_stats": {f"BatchNorm_{i}": {
        "mean": rng.normal(size=n).astype(np.float32),
        "var": rng.uniform(0.5, 1.5, n).astype(np.float32)} for i, n in ((0, 4), (1, 6))}}
    mask = _ones(params)
    mask = _off(mask, "Conv_1/kernel", np.s_[:, :, 1, :])
    mask = _off(mask, "BatchNorm_0/scale", np.s_[2:4])
    mask = _off(mask, "BatchNorm_0/bias", np.s_[3])
    mask = _off(mask, "Conv_1/kernel", np.s_[..., 4])
    mask = _off(mask, "output/kernel", np.s_[5, :])
    c = export.compact(model, params, mask, model_state=stats)
    assert c.module.plan == (2, "M", 4)
    assert c.report["groups"]["Conv_0"]["kept"] == [0, 2]
    assert c.report["groups"]["Conv_1"]["kept"] == [0, 1, 2, 3]
    np.testing.assert_array_equal(np.asarray(c.model_state["batch_stats"]["BatchNorm_1"][
        "var"]), stats["batch_stats"]["BatchNorm_1"]["var"][:4])
    x = _x((4, 4, 2), seed=8)
    want = jax.jit(model.apply)({"params": _masked(params, mask), **stats}, x)
    got = jax.jit(c.module.apply)({"params": c.params, **c.model_state}, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=ATOL, rtol=1e-5)
    with pytest.raises(ValueError, match="model_state: expected"):
        export.compact(model, params, mask)


def test_lenet5_random_mask():
    """On 12x12 images (Conv_1's output is 1x1x16: the flatten is the channels)."""
    model = models.LeNet5(num_classes=4)
    params = _init(model, (12, 12, 1))
    mask = _off(_random_mask(params, 0.3, seed=3), "Conv_1/kernel", np.s_[..., :8])
    c = export.compact(model, params, mask)
    assert c.module.widths[1] <= 8
    assert_same(model, params, mask, c, (12, 12, 1))


@pytest.mark.parametrize("name", ["mlp", "mnist1d_mlp", "resmlp"])
def test_sparse_inference_equals_the_masked_network(name):
    kwargs = {"mlp": {"features": (24, 12)}, "mnist1d_mlp": {"hidden": 16},
              "resmlp": {"blocks": 2, "width": 8, "hidden": 6}}[name]
    model = models.build(name, num_classes=5, **kwargs)
    params = _init(model, (10,))
    mask = _random_mask(params, 0.2, seed=4)
    x = _x((10,), seed=2, n=3)
    want = jax.jit(model.apply)({"params": _masked(params, mask)}, x)
    for fmt in export.FORMATS:
        sp = export.to_sparse(params, mask, format=fmt)
        got = jax.jit(functools.partial(export.sparse_apply, model))(sp, x)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=ATOL,
                                   rtol=1e-5, err_msg=fmt)
    kernel = export.to_bcoo(params, mask)["output"]["kernel"]
    np.testing.assert_array_equal(np.asarray(kernel.todense()),
                                  _masked(params, mask)["output"]["kernel"])
    assert kernel.nse == int(np.sum(mask["output"]["kernel"]))


def test_bad_input():
    resnet = models.build("resnet20")
    with pytest.raises(ValueError, match=r"model: compact covers .* not CifarResNet"):
        export.compact(resnet, {}, {})
    model = models.MLP(features=(4,), num_classes=2)
    params = _init(model, (3,))
    with pytest.raises(ValueError, match="mask"):
        export.compact(model, params, {"Dense_0": _ones(params)["Dense_0"]})
    with pytest.raises(ValueError, match="model_state: expected"):
        export.compact(model, params, _ones(params),
                       model_state={"batch_stats": {"mean": jnp.zeros(4)}})
    with pytest.raises(ValueError, match="format: expected one of"):
        export.to_sparse(params, _ones(params), format="csr")
    with pytest.raises(ValueError, match="model: sparse_apply runs"):
        export.sparse_apply(models.build("lenet5"), {}, jnp.zeros((1, 28, 28, 1)))


# ------------------------------------------------------------------ lotto export
def _run_cli(capsys, *argv):
    capsys.readouterr()
    status = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return status, out


def _masked_round(run, unit):
    path = os.path.join(str(run), unit)
    final = ocp.StandardCheckpointer().restore(f"{path}/final")
    mask = ocp.StandardCheckpointer().restore(f"{path}/mask")
    return _masked(final["params"], jax.tree.map(lambda m: np.asarray(m, bool), mask))


def test_lotto_export_compact_and_bcoo_reload_with_plain_orbax(finished_imp, tmp_path,
                                                                capsys, monkeypatch):
    run, _ = finished_imp
    masked = _masked_round(run, "round_002")
    model = models.build("mlp")
    x = _x((40,), seed=0, n=5)
    want = np.asarray(jax.jit(model.apply)({"params": masked}, x))
    out = tmp_path / "ticket"
    status, o = _run_cli(capsys, "export", run, "--round", 2, "--out", out)
    assert status == 0, o.err
    status, o = _run_cli(capsys, "export", run, "--format", "bcoo", "--out",
                         tmp_path / "ticket_bcoo")
    assert status == 0, o.err
    meta = json.loads((out / "export.json").read_text())
    assert meta["model"] == "mlp" and meta["source"]["unit"] == "round_002"
    params = ocp.StandardCheckpointer().restore(str(out / "params"))
    small = models.build(meta["model"], num_classes=meta["num_classes"],
                         **meta["model_kwargs"])
    assert list(small.features) == [params["Dense_0"]["kernel"].shape[1],
                                    params["Dense_1"]["kernel"].shape[1]]
    assert models.count_params(params) == meta["report"]["params_after"]
    np.testing.assert_allclose(np.asarray(small.apply({"params": params}, x)), want,
                               atol=ATOL)
    # the README's loading example, run as written on this export
    env = {"x": x}
    monkeypatch.chdir(tmp_path)
    with jax.numpy_rank_promotion("allow"):  # the README is user code: JAX's default
        exec(_block("export.json"), env)
    np.testing.assert_allclose(np.asarray(env["logits"]), want, atol=ATOL)
    np.testing.assert_allclose(np.asarray(env["sparse_logits"]), want, atol=ATOL)


def test_lotto_export_of_a_control_unit_with_overwrite(finished_imp, tmp_path, capsys):
    run, _ = finished_imp
    unit = "controls/shuffle/round_002"
    masked = _masked_round(run, unit)
    x = _x((40,), seed=3, n=4)
    want = np.asarray(jax.jit(models.build("mlp").apply)({"params": masked}, x))
    out = tmp_path / "c"
    for extra in ([], ["--overwrite"]):  # the second replaces the first
        status, o = _run_cli(capsys, "export", run, "--unit", unit, "--out", out, *extra)
        assert status == 0, o.err
    meta = json.loads((out / "export.json").read_text())
    assert meta["source"]["unit"] == unit and not (tmp_path / "c.tmp").exists()
    params = ocp.StandardCheckpointer().restore(str(out / "params"))
    small = models.build("mlp", num_classes=10, **meta["model_kwargs"])
    np.testing.assert_allclose(np.asarray(jax.jit(small.apply)({"params": params}, x)),
                               want, atol=ATOL)


@pytest.mark.parametrize("kind", ["train", "dst", "supermask"])
def test_lotto_export_finds_the_mask_of_train_and_dst_runs(kind, tmp_path, capsys):
    """Runs written by hand through the store: ``lotto train`` keeps its mask at the
    run's top (``mask``), ``lotto dst`` inside the final (``{"params",
    "model_state", "mask"}``), ``lotto supermask`` (sign method) its found network in
    ``export/`` (weights times signs, under the mask: the signed weights here are
    ±reps[1], so the network is reps[1] masked); a 2-replicate train run exports
    replicate 1."""
    from lotto_jax.runs.store import RunStore

    model = models.MLP(features=(12, 8), num_classes=3)
    reps = [_init(model, (6,), seed=s) for s in (0, 1)]
    mask = _random_mask(reps[1], 0.3, seed=5)
    mask = _off(mask, "Dense_1/kernel", np.s_[:, :3])  # dead units: compaction shows
    stacked = jax.tree.map(lambda *a: np.stack(a), *reps)
    config = {"train": {"run": {"model": "mlp", "replicates": 2}, "mask": "m"},
              "dst": {"run": {"model": "mlp"}, "method": "set", "density": 0.3,
                      "update_every": 10},
              "supermask": {"run": {"model": "mlp"}, "method": "sign", "keep": 0.3}}[kind]
    signs = jax.tree.map(lambda p: np.where(np.arange(p.size).reshape(p.shape) % 3, 1.0,
                                            -1.0).astype(np.float32), reps[1])
    run = tmp_path / kind
    with RunStore.open(str(run), config) as store:
        if kind == "train":
            store.save("mask", jax.tree.map(lambda m: np.stack([m, m]), mask))
            store.save("train/final", {"params": stacked, "model_state": {}})
        elif kind == "dst":
            store.save("dst/final", {"params": reps[1], "model_state": {}, "mask": mask})
        else:  # the found network is weights * signs under the mask
            store.save("export/mask", mask)
            store.save("export/signs", signs)
            store.save("export/weights", jax.tree.map(np.multiply, reps[1], signs))
    extra = ["--replicate", 1] if kind == "train" else []
    status, o = _run_cli(capsys, "export", run, "--out", tmp_path / "e", *extra)
    assert status == 0, o.err
    meta = json.loads((tmp_path / "e" / "export.json").read_text())
    assert meta["source"]["unit"] == {"supermask": "export"}.get(kind, kind)
    assert meta["model_kwargs"]["features"][1] <= 5
    params = ocp.StandardCheckpointer().restore(str(tmp_path / "e" / "params"))
    big = models.build("mlp", features=(12, 8), num_classes=3)
    small = models.build("mlp", num_classes=3, **meta["model_kwargs"])
    x = _x((6,), seed=6, n=4)
    np.testing.assert_allclose(
        np.asarray(jax.jit(small.apply)({"params": params}, x)),
        np.asarray(jax.jit(big.apply)({"params": _masked(reps[1], mask)}, x)), atol=ATOL)


def test_lotto_export_errors(finished_imp, tmp_path, capsys):
    run, _ = finished_imp
    status, o = _run_cli(capsys, "export", tmp_path / "nope", "--out", tmp_path / "o")
    assert_one_line_error(_Result(status, o.err), "no such run directory", "nope")
    status, o = _run_cli(capsys, "export", run, "--round", 7, "--out", tmp_path / "o")
    assert_one_line_error(_Result(status, o.err), "--round", "round 7", "0, 1, 2")
    status, o = _run_cli(capsys, "export", run, "--unit", "variants/x", "--out",
                         tmp_path / "o")
    assert_one_line_error(_Result(status, o.err), "--unit", "controls/shuffle/round_001")
    (tmp_path / "o").mkdir()
    status, o = _run_cli(capsys, "export", run, "--out", tmp_path / "o")
    assert_one_line_error(_Result(status, o.err), "--out", "exists", "--overwrite")
    status, o = _run_cli(capsys, "export", run, "--replicate", 1, "--out", tmp_path / "o3")
    assert_one_line_error(_Result(status, o.err), "--replicate", "one replicate")
    status, o = _run_cli(capsys, "export", run, "--format", "csr", "--out", tmp_path / "o3")
    assert_one_line_error(_Result(status, o.err), "--format", "'csr'")
    assert not (tmp_path / "o3").exists()
    unexported = tmp_path / "sm"
    unexported.mkdir()
    (unexported / "config.json").write_text(json.dumps(
        {"run": {"model": "mlp"}, "method": "sign", "keep": 0.5}))
    status, o = _run_cli(capsys, "export", unexported, "--out", tmp_path / "o3")
    assert_one_line_error(_Result(status, o.err), "--unit", "not exported", "export/mask")
    fake = tmp_path / "vgg"
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps(
        {"rounds": 1, "rewind": "init", "run": {"model": "resnet20"}}))
    status, o = _run_cli(capsys, "export", fake, "--out", tmp_path / "o2")
    assert_one_line_error(_Result(status, o.err), "model", "resnet20")
    status, o = _run_cli(capsys, "export", fake, "--format", "bcoo", "--out", tmp_path / "o2")
    assert_one_line_error(_Result(status, o.err), "--format", "resnet20")
    assert not (tmp_path / "o2").exists()


class _Result:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr
