"""Tests for lotto_jax.models: shapes, parameter counts, initialisers, BN, nnx.

Parameter counts are checked against hand formulas written here independently of
the model code, and against the papers' figures where they state one. Big conv nets
are only traced (``jax.eval_shape``); real forward passes use batch 2 and small nets.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lotto_jax import models

# ----------------------------------------------------------------------------------
# hand formulas


def dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def conv(k: int, c_in: int, c_out: int, bias: bool = True) -> int:
    return k * k * c_in * c_out + (c_out if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # scale and offset; running stats live in batch_stats


def conv_lth(widths, flat: int) -> int:
    """Conv-2/4/6: 3x3 convs with bias, then dense 256, 256, 10 on ``flat`` inputs."""
    total, c_in = 0, 3
    for c in widths:
        total += conv(3, c_in, c)
        c_in = c
    return total + dense(flat, 256) + dense(256, 256) + dense(256, 10)


def vgg_count(plan, num_classes=10) -> int:
    total, c_in = 0, 3
    for c in plan:
        if c != "M":
            total += conv(3, c_in, c) + bn(c)
            c_in = c
    return total + dense(512, num_classes)


def resnet20_count(projection: bool) -> int:
    total = conv(3, 3, 16, bias=False) + bn(16)
    c_in = 16
    for c in (16, 32, 64):
        for i in range(3):
            total += conv(3, c_in, c, bias=False) + bn(c)
            total += conv(3, c, c, bias=False) + bn(c)
            if i == 0 and c != c_in and projection:
                total += conv(1, c_in, c, bias=False) + bn(c)
            c_in = c
    return total + dense(64, 10)


VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512)
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512)  # fmt: skip

EXPECTED_COUNTS = {
    "lenet300": dense(784, 300) + dense(300, 100) + dense(100, 10),
    "lenet5": conv(5, 1, 6)
    + conv(5, 6, 16)
    + dense(5 * 5 * 16, 120)
    + dense(120, 84)
    + dense(84, 10),
    "conv2": conv_lth((64, 64), 16 * 16 * 64),
    "conv4": conv_lth((64, 64, 128, 128), 8 * 8 * 128),
    "conv6": conv_lth((64, 64, 128, 128, 256, 256), 4 * 4 * 256),
    "vgg11": vgg_count(VGG11),
    "vgg16": vgg_count(VGG16),
    "resnet20": resnet20_count(projection=True),
    "mnist1d_mlp": dense(40, 500) + dense(500, 500) + dense(500, 10),
    "mlp": dense(784, 100) + dense(100, 100) + dense(100, 10),
    # input, 8 blocks of (LayerNorm, fc1, fc2), the final LayerNorm, output
    "resmlp": dense(40, 128) + 8 * (2 * 128 + 2 * dense(128, 128)) + 2 * 128 + dense(128, 10),
    # embedding 10 x 500, 500 -> 48 -> 500, unembedding 500 x 10; no biases
    "grok_mlp": 10 * 500 + 500 * 48 + 48 * 500 + 500 * 10,
}

# ----------------------------------------------------------------------------------
# helpers


def abstract_variables(name: str, **kwargs):
    model = models.build(name, **kwargs)
    return model, jax.eval_shape(
        lambda k: models.init(model, k, models.input_shape(name)), jax.random.key(0)
    )


def leaf_paths(tree) -> dict[str, tuple[int, ...]]:
    """``{'Dense_0/kernel': shape}``; drops nnx's trailing ``.value`` attribute."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = [p.key for p in path if isinstance(p, jax.tree_util.DictKey)]
        out["/".join(map(str, keys))] = tuple(leaf.shape)
    return out


def np_conv(x, kernel, bias, padding):
    """NHWC x HWIO convolution, stride 1, in float64: a sum over the kernel window
    written with numpy (independent of XLA). SAME pads (k - 1) // 2 each side."""
    kh, kw = kernel.shape[:2]
    if padding == "SAME":
        x = np.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    # win: [n, h_out, w_out, c_in, kh, kw]
    return np.einsum("nhwcij,ijco->nhwo", win, kernel) + bias


def np_pool(x):
    """2x2 max pool, stride 2, by reshape."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def np_relu(z):
    return np.maximum(z, 0.0)


def as_f64(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def numpy_variables(model, shape, seed=0):
    """Variables of ``model``'s structure (traced, not compiled: the initialisers'
    compilation is slow on CPU and not under test here) filled with numpy draws:
    kernels N(0, 1 / fan_in), every other leaf N(0, 0.1^2)."""
    abstract = jax.eval_shape(lambda k: models.init(model, k, shape), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path, a):
        std = 1 / math.sqrt(math.prod(a.shape[:-1])) if path[-1].key == "kernel" else 0.1
        return (std * rng.standard_normal(a.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract)


@pytest.fixture(scope="module")
def resnet20():
    model = models.build("resnet20")
    return model, models.init(model, jax.random.key(0), (32, 32, 3))


# ----------------------------------------------------------------------------------
# registry


def test_names_and_public_api():
    assert set(models.NAMES) == set(EXPECTED_COUNTS)
    assert models.OUTPUT_LAYER == "output"
    for name in models.__all__:
        assert hasattr(models, name), name


def test_unknown_name_lists_names():
    with pytest.raises(ValueError, match="unknown model name 'lenet7'") as info:
        models.build("lenet7")
    for name in models.NAMES:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="resnet20"):
        models.input_shape("nope")


def test_unknown_kwarg_raises_type_error():
    with pytest.raises(TypeError):
        models.build("lenet300", nope=1)


def test_input_shapes():
    assert models.input_shape("lenet300") == (28, 28, 1)
    assert models.input_shape("lenet5") == (28, 28, 1)
    assert models.input_shape("mlp") == (28, 28, 1)
    for name in ("conv2", "conv4", "conv6", "vgg11", "vgg16", "resnet20"):
        assert models.input_shape(name) == (32, 32, 3)
    assert models.input_shape("mnist1d_mlp") == (40,)
    assert models.input_shape("resmlp") == (40,)


def test_resmlp_zero_block_is_the_identity():
    """A ResMLP block whose params are all 0 adds exactly 0: the network equals the
    one with that block deleted (blocks renumbered)."""
    model = models.build("resmlp", blocks=3, width=8, hidden=6)
    params = models.init(model, jax.random.key(0), (5,))["params"]
    x = jax.random.normal(jax.random.key(1), (4, 5))
    zeroed = {**params, "block_1": jax.tree.map(jnp.zeros_like, params["block_1"])}
    short = models.build("resmlp", blocks=2, width=8, hidden=6)
    deleted = {k: v for k, v in params.items() if k != "block_1"}
    deleted["block_1"] = deleted.pop("block_2")
    np.testing.assert_array_equal(
        np.asarray(model.apply({"params": zeroed}, x)),
        np.asarray(short.apply({"params": deleted}, x)),
    )
    assert not np.allclose(model.apply({"params": params}, x), short.apply({"params": deleted}, x))


# ----------------------------------------------------------------------------------
# shapes and counts (traced only: no compilation of the big nets)


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_output_shape_count_and_output_layer(name):
    model, variables = abstract_variables(name)
    params = variables["params"]
    assert models.count_params(variables) == EXPECTED_COUNTS[name]
    assert models.count_params(params) == EXPECTED_COUNTS[name]
    assert params["output"]["kernel"].shape[-1] == 10
    assert ("bias" in params["output"]) == (name != "grok_mlp")
    has_bn = name in ("vgg11", "vgg16", "resnet20")
    assert ("batch_stats" in variables) == has_bn
    x = jax.ShapeDtypeStruct((2, *models.input_shape(name)), jnp.float32)
    for train in (False, True):
        mutable = ["batch_stats"] if train and has_bn else False
        out = jax.eval_shape(
            lambda v, x, t=train, m=mutable: model.apply(v, x, train=t, mutable=m),
            variables,
            x,
        )
        logits = out[0] if mutable else out
        assert logits.shape == (2, 10)
        assert logits.dtype == jnp.float32


def test_counts_match_papers():
    # Frankle & Carbin 2019, Figure 2: LeNet 266K, Conv-2 4.3M, Conv-4 2.4M.
    assert EXPECTED_COUNTS["lenet300"] == 266_610
    assert EXPECTED_COUNTS["lenet300"] // 1000 == 266
    assert EXPECTED_COUNTS["conv2"] == 4_301_642
    assert round(EXPECTED_COUNTS["conv2"] / 1e6, 1) == 4.3
    assert EXPECTED_COUNTS["conv4"] == 2_425_930
    assert round(EXPECTED_COUNTS["conv4"] / 1e6, 1) == 2.4
    # Conv-6: the paper's "1.7M" cannot come from its own architecture (the
    # 4x4x256 -> 256 dense layer alone is 1.05M); its conv-weight figure 1.1M holds.
    assert EXPECTED_COUNTS["conv6"] == 2_262_602
    _, variables = abstract_variables("conv6")
    conv_weights = sum(
        math.prod(leaf.shape)
        for leaf in jax.tree_util.tree_leaves(variables["params"])
        if leaf.ndim == 4
    )
    assert conv_weights == 1_144_512
    assert round(conv_weights / 1e6, 1) == 1.1
    assert EXPECTED_COUNTS["lenet5"] == 61_706
    # open_lth cifar_vgg_16 ~ 14.7M; He et al. 2016 ResNet-20 0.27M.
    assert EXPECTED_COUNTS["vgg16"] == 14_728_266
    assert round(EXPECTED_COUNTS["vgg16"] / 1e6, 1) == 14.7
    assert EXPECTED_COUNTS["vgg11"] == 9_231_114
    assert EXPECTED_COUNTS["resnet20"] == 272_474
    assert round(EXPECTED_COUNTS["resnet20"] / 1e6, 2) == 0.27


def test_resnet20_zero_pad_shortcut_count():
    _, variables = abstract_variables("resnet20", shortcut="zero_pad")
    assert models.count_params(variables) == resnet20_count(projection=False) == 269_722
    assert "shortcut_conv" not in variables["params"]["block1_0"]


def test_build_kwargs():
    _, variables = abstract_variables("mlp", features=(32, 16, 8), num_classes=7)
    expected = dense(784, 32) + dense(32, 16) + dense(16, 8) + dense(8, 7)
    assert models.count_params(variables) == expected
    assert variables["params"]["output"]["kernel"].shape == (8, 7)
    _, variables = abstract_variables("mnist1d_mlp", hidden=100, residual=False)
    assert models.count_params(variables) == dense(40, 100) + dense(100, 100) + dense(
        100, 10
    )
    _, variables = abstract_variables("resnet20", num_classes=100)
    assert variables["params"]["output"]["kernel"].shape == (64, 100)


def test_count_params_on_concrete_and_nnx():
    params = {"a": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}}
    assert models.count_params(params) == 16
    assert models.count_params({"params": params, "batch_stats": params}) == 16
    _, state = nnx.split(models.LeNet300NNX(rngs=nnx.Rngs(0)), nnx.Param)
    assert models.count_params(state) == EXPECTED_COUNTS["lenet300"]


# ----------------------------------------------------------------------------------
# real forward passes on the small nets (batch 2)


def np_lenet5(p, x):
    h = np_pool(np_relu(np_conv(x, p["Conv_0"]["kernel"], p["Conv_0"]["bias"], "SAME")))
    h = np_pool(np_relu(np_conv(h, p["Conv_1"]["kernel"], p["Conv_1"]["bias"], "VALID")))
    h = h.reshape(len(h), -1)  # NHWC order
    h = np_relu(h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    h = np_relu(h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"])
    return h @ p["output"]["kernel"] + p["output"]["bias"]


def np_conv2(p, x):
    h = np_relu(np_conv(x, p["Conv_0"]["kernel"], p["Conv_0"]["bias"], "SAME"))
    h = np_pool(np_relu(np_conv(h, p["Conv_1"]["kernel"], p["Conv_1"]["bias"], "SAME")))
    h = h.reshape(len(h), -1)
    h = np_relu(h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    h = np_relu(h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"])
    return h @ p["output"]["kernel"] + p["output"]["bias"]


@pytest.mark.parametrize(
    ("name", "shape", "reference"),
    # LeNet-5 on its 28x28 input; Conv-2 on 8x8x3 (same code path, small dense layer)
    [("lenet5", (28, 28, 1), np_lenet5), ("conv2", (8, 8, 3), np_conv2)],
)
def test_forward_matches_numpy(name, shape, reference):
    """Truth: the layer stack written in numpy (window-sum convolutions, reshape
    max pools, NHWC flatten) on the same params (numpy draws, non-zero biases).
    Tolerance: float32 against float64, rtol 1e-4 / atol 1e-5."""
    model = models.build(name)
    params = numpy_variables(model, shape)["params"]
    x = np.random.default_rng(1).standard_normal((2, *shape)).astype(np.float32)
    logits = jax.jit(model.apply)({"params": params}, x)
    assert logits.shape == (2, 10)
    np.testing.assert_allclose(logits, reference(as_f64(params), x.astype(np.float64)),
                               rtol=1e-4, atol=1e-5)


def test_init_with_unhashable_fields():
    model = models.build("mlp", features=[8, 4], num_classes=3)  # a list: no hash
    variables = models.init(model, jax.random.key(0), (5,))
    assert models.count_params(variables) == dense(5, 8) + dense(8, 4) + dense(4, 3)


def test_mlps_flatten_images_and_flat_inputs_alike():
    model = models.build("lenet300")
    variables = models.init(model, jax.random.key(0), (28, 28, 1))
    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
    np.testing.assert_allclose(
        model.apply(variables, x), model.apply(variables, x.reshape(2, 784)), rtol=1e-6
    )


# ----------------------------------------------------------------------------------
# initialisers


def test_lenet300_glorot_normal_std():
    variables = models.init(models.build("lenet300"), jax.random.key(0), (28, 28, 1))
    params = variables["params"]
    for layer, (fan_in, fan_out) in {
        "Dense_0": (784, 300),
        "Dense_1": (300, 100),
    }.items():
        w = np.asarray(params[layer]["kernel"])
        std = math.sqrt(2.0 / (fan_in + fan_out))
        # 30k-235k samples: sampling error of the std < 0.5 %; allow 3 %.
        assert abs(w.std() / std - 1) < 0.03, (layer, w.std(), std)
        assert abs(w.mean()) < 0.05 * std
        # TF1-style truncation at 2 sigma of the unscaled normal (std / 0.8796).
        assert np.abs(w).max() <= 2 * std / 0.87962566103423978 + 1e-6
        np.testing.assert_array_equal(params[layer]["bias"], 0.0)
    assert params["output"]["kernel"].std() == pytest.approx(
        math.sqrt(2 / 110), rel=0.1
    )


def test_mnist1d_mlp_pytorch_uniform_init():
    model = models.build("mnist1d_mlp")
    params = models.init(model, jax.random.key(0), (40,))["params"]
    for layer, fan_in in {"Dense_0": 40, "Dense_1": 500, "output": 500}.items():
        bound = 1 / math.sqrt(fan_in)
        for kind in ("kernel", "bias"):
            u = np.asarray(params[layer][kind]).ravel() / bound
            assert np.all(np.abs(u) <= 1.0), (layer, kind)
            if u.size >= 100:  # spans the whole range (right fan-in), not less
                assert np.abs(u).max() > 0.9, (layer, kind)
        u = np.asarray(params[layer]["kernel"]).ravel() / bound
        # Uniform on [-1, 1]: std 1/sqrt(3); every tenth of the range ~10 % of draws.
        assert u.std() == pytest.approx(1 / math.sqrt(3), rel=0.05)
        hist = np.histogram(u, bins=10, range=(-1, 1))[0] / u.size
        np.testing.assert_allclose(hist, 0.1, atol=0.03)


def test_pytorch_uniform_needs_fan_in_for_vectors():
    with pytest.raises(ValueError, match="fan_in"):
        models.pytorch_uniform()(jax.random.key(0), (10,))


def test_resnet20_kaiming_normal_untruncated(resnet20):
    _, variables = resnet20
    w = np.asarray(variables["params"]["block2_1"]["conv2"]["kernel"])  # 36,864 draws
    std = math.sqrt(2.0 / (3 * 3 * 64))
    assert abs(w.std() / std - 1) < 0.03
    assert np.abs(w).max() > 3 * std  # a truncated (2 sigma) normal never gets here
    np.testing.assert_array_equal(variables["params"]["bn"]["scale"], 1.0)


# ----------------------------------------------------------------------------------
# mnist1d_mlp against a hand forward pass


@pytest.mark.parametrize("residual", [True, False])
def test_mnist1d_mlp_matches_numpy(residual):
    # Params from the default (residual) model: its init is already compiled.
    params = models.init(models.build("mnist1d_mlp"), jax.random.key(3), (40,))
    params = params["params"]
    model = models.build("mnist1d_mlp", residual=residual)
    x = np.asarray(jax.random.normal(jax.random.key(4), (2, 40)))
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)

    def relu(z):
        return np.maximum(z, 0.0)

    h = relu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    z = relu(h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"])
    h = h + z if residual else z
    expected = h @ p["output"]["kernel"] + p["output"]["bias"]
    np.testing.assert_allclose(
        model.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-5
    )


# ----------------------------------------------------------------------------------
# BatchNorm models


def test_resnet20_train_updates_batch_stats(resnet20):
    model, variables = resnet20
    x = jax.random.normal(jax.random.key(5), (2, 32, 32, 3))
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (2, 10)
    stats = updates["batch_stats"]
    assert set(stats) == set(variables["batch_stats"])
    # Stem BN: running mean <- 0.9 * 0 + 0.1 * batch mean (PyTorch momentum 0.1).
    y = jax.lax.conv_general_dilated(
        x, variables["params"]["conv"]["kernel"], (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip
    np.testing.assert_allclose(
        stats["bn"]["mean"], 0.1 * y.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
    )
    assert not np.allclose(stats["block2_0"]["shortcut_bn"]["var"], 1.0)
    # Inference mode uses the running averages and needs nothing mutable.
    eval_logits = model.apply(variables, x, train=False)
    assert eval_logits.shape == (2, 10)
    assert not np.allclose(eval_logits, logits)


def test_vgg_batchnorm_train_and_eval_match_numpy():
    """The VGG class on a tiny plan (conv 8, pool, conv 16; 8x8 inputs), against
    numpy: train mode normalises with the batch statistics (mean and biased variance
    over N, H, W; eps 1e-5) and updates ``ra = 0.9 ra + 0.1 batch`` (flax momentum
    0.9); eval mode normalises with the running statistics and returns nothing
    mutable. Random (numpy) BN scales, offsets, conv biases and running statistics
    make every term count. Tolerance: float32 against float64, rtol 1e-4 / atol 1e-5."""
    model = models.VGG(plan=(8, "M", 16), num_classes=3)
    variables = numpy_variables(model, (8, 8, 3))
    params = variables["params"]
    assert count_bn(params) == 2
    rng = np.random.default_rng(1)
    for i in (0, 1):  # BN scales around 1, running variances positive
        params[f"BatchNorm_{i}"]["scale"] = 1 + params[f"BatchNorm_{i}"]["scale"]
    stats = {k: {"mean": v["mean"], "var": rng.uniform(0.5, 2.0, v["var"].shape).astype(np.float32)}
             for k, v in variables["batch_stats"].items()}
    x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    p, st = as_f64(params), as_f64(stats)

    def reference(train):
        h, new_stats = x.astype(np.float64), {}
        for i in (0, 1):
            h = np_conv(h, p[f"Conv_{i}"]["kernel"], p[f"Conv_{i}"]["bias"], "SAME")
            bn, ra = p[f"BatchNorm_{i}"], st[f"BatchNorm_{i}"]
            if train:
                mu, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
                new_stats[f"BatchNorm_{i}"] = {"mean": 0.9 * ra["mean"] + 0.1 * mu,
                                               "var": 0.9 * ra["var"] + 0.1 * var}
            else:
                mu, var = ra["mean"], ra["var"]
            h = np_relu((h - mu) / np.sqrt(var + 1e-5) * bn["scale"] + bn["bias"])
            if i == 0:
                h = np_pool(h)
        h = h.mean(axis=(1, 2))
        return h @ p["output"]["kernel"] + p["output"]["bias"], new_stats

    v = {"params": params, "batch_stats": stats}
    logits, updates = model.apply(v, x, train=True, mutable=["batch_stats"])
    want_logits, want_stats = reference(train=True)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-5)
    for layer, kinds in want_stats.items():
        for kind, want in kinds.items():
            np.testing.assert_allclose(updates["batch_stats"][layer][kind], want,
                                       rtol=1e-4, atol=1e-5, err_msg=f"{layer}/{kind}")
    eval_logits = model.apply(v, x)
    np.testing.assert_allclose(eval_logits, reference(train=False)[0], rtol=1e-4, atol=1e-5)


def count_bn(params) -> int:
    return sum(1 for k in params if k.startswith("BatchNorm_"))


def test_resnet_bad_depth():
    model = models.CifarResNet(depth=21)
    with pytest.raises(ValueError, match="6n\\+2"):
        jax.eval_shape(lambda k: models.init(model, k, (8, 8, 3)), jax.random.key(0))


# ----------------------------------------------------------------------------------
# nnx


def test_lenet300_nnx_matches_linen():
    nnx_model = models.LeNet300NNX(rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(nnx_model, nnx.Param)
    linen_model = models.build("lenet300")
    params = models.init(linen_model, jax.random.key(0), (28, 28, 1))["params"]
    assert leaf_paths(state) == leaf_paths(params)
    assert models.count_params(state) == models.count_params(params) == 266_610
    # nnx draws the same kind of weights (Glorot normal, zero bias).
    w = np.asarray(state["Dense_0"]["kernel"][...])
    assert abs(w.std() / math.sqrt(2 / 1084) - 1) < 0.03
    np.testing.assert_array_equal(state["output"]["bias"][...], 0.0)

    # Same weights -> same outputs; and the state's leaves can be masked.
    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
    nnx.replace_by_pure_dict(state, params)
    np.testing.assert_allclose(
        nnx.merge(graphdef, state)(x),
        linen_model.apply({"params": params}, x),
        rtol=1e-5,
        atol=1e-6,
    )
    mask = jax.tree_util.tree_map(
        lambda p: jax.random.bernoulli(jax.random.key(2), 0.5, p.shape), params
    )
    masked = jax.tree_util.tree_map(lambda p, m: p * m, params, mask)
    masked_state = jax.tree_util.tree_map(lambda p: p, state)
    nnx.replace_by_pure_dict(masked_state, masked)
    np.testing.assert_allclose(
        nnx.merge(graphdef, masked_state)(x),
        linen_model.apply({"params": masked}, x),
        rtol=1e-5,
        atol=1e-6,
    )


def test_models_are_linen_modules():
    for name in models.NAMES:
        assert isinstance(models.build(name), nn.Module)
