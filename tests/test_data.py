"""Tests for lotto_jax.data: loaders against numpy computed by hand, seeded batching.

No test needs the network or a real dataset file: MNIST-1D is generated offline,
``.npz`` files are synthetic, TFDS datasets are mocked with ``tfds.testing.mock_data``.
"""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lotto_jax import data
from lotto_jax.data import Dataset, batch_indices, check_input_shape, load

# Constants written out here rather than read from data.NORMALIZATION, so a typo in
# the module's table fails the test.
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _npz(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return f"npz:{path}"


def _grey(n_train=50, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        y_train=(np.arange(n_train) % 10).astype(np.uint8),
        x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        y_test=(np.arange(n_test) % 10).astype(np.uint8),
    )


def test_public_names():
    for name in data.__all__:
        assert hasattr(data, name), name


# ------------------------------------------------------------------------ mnist1d


def test_mnist1d_shapes_labels_and_determinism():
    a, b = load("mnist1d"), load("mnist1d")
    assert a.train.x.shape == (4000, 40) and a.test.x.shape == (1000, 40)
    assert a.train.x.dtype == np.float32 and a.train.y.dtype == np.int32
    assert a.input_shape == (40,) and a.num_classes == 10 and a.validation is None
    assert set(np.unique(a.train.y)) == set(range(10))
    assert set(np.unique(a.test.y)) <= set(range(10))
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.test.y, b.test.y)
    # already standardised by make_dataset (over train + test together): ~N(0, 1)
    assert abs(float(a.train.x.mean())) < 0.05
    assert abs(float(a.train.x.std()) - 1.0) < 0.05
    assert a.normalization == {"mean": [0.0], "std": [1.0]}


def test_mnist1d_matches_reference_and_keeps_global_rng():
    from mnist1d.data import get_dataset_args, make_dataset

    data._mnist1d_arrays.cache_clear()  # force a fresh generation
    # make_dataset seeds the legacy global RNGs; load must leave them as they were
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    ds = load("mnist1d")
    np_after, py_after = np.random.rand(), random.random()  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    assert (np_after, py_after) == (np.random.rand(), random.random())  # noqa: NPY002
    ref = make_dataset(get_dataset_args())
    np.testing.assert_array_equal(ds.train.x, ref["x"].astype(np.float32))
    np.testing.assert_array_equal(ds.test.y, ref["y_test"])


# ---------------------------------------------------------------------------- npz


def _rgb():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    x[..., 2] //= 4  # channels with different statistics
    return dict(
        x_train=x,
        y_train=np.arange(40) % 4,
        x_test=rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8),
        y_test=np.arange(10) % 4,
    )


def _signals():
    rng = np.random.default_rng(2)
    return dict(
        x_train=rng.normal(3.0, 2.0, (30, 16)),
        y_train=np.arange(30) % 3,
        x_test=rng.normal(3.0, 2.0, (12, 16)),
        y_test=np.arange(12) % 3,
    )


@pytest.mark.parametrize(
    "arrays, shape, scale, axes",
    [
        (_grey(), (28, 28, 1), 255.0, (0, 1, 2, 3)),  # channel axis added
        (_rgb(), (8, 8, 3), 255.0, (0, 1, 2)),  # per-channel stats
        (_signals(), (16,), 1.0, (0, 1)),  # floats: no /255, stay (N, L)
    ],
    ids=["grey28", "rgb8", "signal16"],
)
def test_npz_shapes_and_normalisation(tmp_path, arrays, shape, scale, axes):
    ds = load(_npz(tmp_path, **arrays))
    n_train, n_test = len(arrays["y_train"]), len(arrays["y_test"])
    assert ds.train.x.shape == (n_train, *shape)
    assert ds.test.x.shape == (n_test, *shape)
    assert ds.input_shape == shape
    assert ds.num_classes == int(arrays["y_train"].max()) + 1
    assert ds.train.x.dtype == np.float32 and ds.test.y.dtype == np.int32
    # truth: scale, then mean/std of the train split per channel, in float64
    xtr = arrays["x_train"].astype(np.float64).reshape(n_train, *shape) / scale
    xte = arrays["x_test"].astype(np.float64).reshape(n_test, *shape) / scale
    mean = xtr.mean(axis=axes)
    std = xtr.std(axis=axes)
    np.testing.assert_allclose(ds.normalization["mean"], np.atleast_1d(mean), rtol=1e-9)
    np.testing.assert_allclose(ds.normalization["std"], np.atleast_1d(std), rtol=1e-9)
    np.testing.assert_allclose(ds.train.x, (xtr - mean) / std, atol=1e-5)
    np.testing.assert_allclose(ds.test.x, (xte - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(ds.test.y, arrays["y_test"])


def test_npz_constant_channel_does_not_divide_by_zero(tmp_path):
    arrays = _grey()
    arrays["x_train"][:] = 7
    ds = load(_npz(tmp_path, **arrays))
    assert ds.normalization["std"] == [1.0]
    np.testing.assert_allclose(ds.train.x, 0.0, atol=1e-6)  # centred, not blown up


# --------------------------------------------------------------------------- tfds


@pytest.mark.parametrize(
    "name, shape, classes, mean, std",
    [
        ("mnist", (28, 28, 1), 10, MNIST_MEAN, MNIST_STD),
        ("cifar10", (32, 32, 3), 10, CIFAR10_MEAN, CIFAR10_STD),
    ],
)
def test_tfds_mock(tmp_path, name, shape, classes, mean, std):
    tfds = pytest.importorskip("tensorflow_datasets")
    n = 12
    with tfds.testing.mock_data(num_examples=n):
        ds = load(f"tfds:{name}", data_dir=str(tmp_path))
        # independent read: example by example through tfds itself
        ref = list(
            tfds.as_numpy(
                tfds.load(name, split="train", as_supervised=True, data_dir=tmp_path)
            )
        )
    x_ref = np.stack([x for x, _ in ref]).astype(np.float64) / 255
    y_ref = np.array([y for _, y in ref])
    assert ds.train.x.shape == (n, *shape) and ds.test.x.shape == (n, *shape)
    assert ds.input_shape == shape and ds.num_classes == classes
    assert ds.normalization == {"mean": list(mean), "std": list(std)}
    assert ds.train.x.dtype == np.float32 and ds.train.y.dtype == np.int32
    np.testing.assert_allclose(ds.train.x, (x_ref - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(ds.train.y, y_ref)
    assert 0 <= ds.test.y.min() and ds.test.y.max() < classes


def test_tfds_not_prepared_offline_fails_fast_and_clearly(tmp_path, monkeypatch):
    """Behaviour, not timing: no download is attempted and no Python socket
    connects (either raises here instead of hanging); the error names the way out."""
    import socket

    tfds = pytest.importorskip("tensorflow_datasets")
    attempts = []

    def refuse(what):
        def fn(*args, **kwargs):
            attempts.append(what)
            raise OSError(f"test: {what} attempted")
        return fn

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse("download"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    with pytest.raises(
        FileNotFoundError, match=r"'mnist'.*not prepared.*npz:PATH.*mnist1d"
    ):
        load("tfds:mnist", data_dir=str(tmp_path), download=False)
    assert attempts == []


@pytest.mark.parametrize(
    "spec, match",
    [
        ("tfds:no_such_dataset_xyz", "no_such_dataset_xyz"),
        ("tfds:", "tfds:NAME"),
        ("tfds:mnist:no_such_config", "no_such_config"),
    ],
)
def test_tfds_bad_spec(tmp_path, spec, match):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match=match):
        load(spec, data_dir=str(tmp_path))


# --------------------------------------------------------------------- validation


def _indexed(tmp_path, n=100):
    """Signals whose first value is the example's index, so it survives shuffling."""
    x = np.tile(np.arange(n, dtype=np.float64)[:, None], (1, 5))
    return _npz(
        tmp_path,
        x_train=x,
        y_train=np.arange(n) % 7,
        x_test=x[:10],
        y_test=np.arange(10) % 7,
    )


def _ids(split, norm):
    return np.rint(split.x[:, 0] * norm["std"][0] + norm["mean"][0]).astype(int)


@pytest.mark.parametrize("validation, k", [(30, 30), (0.25, 25), (1, 1)])
def test_validation_split(tmp_path, validation, k):
    spec = _indexed(tmp_path)
    ds = load(spec, validation=validation, seed=3)
    assert len(ds.train) == 100 - k and len(ds.validation) == k
    tr, va = _ids(ds.train, ds.normalization), _ids(ds.validation, ds.normalization)
    assert not set(tr) & set(va)
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(100))
    np.testing.assert_array_equal(ds.validation.y, va % 7)  # labels follow inputs
    again = load(spec, validation=validation, seed=3)
    np.testing.assert_array_equal(again.validation.x, ds.validation.x)
    other = load(spec, validation=validation, seed=4)
    if k > 1:
        assert set(_ids(other.validation, other.normalization)) != set(va)
    # normalisation comes from the whole train split, whatever is held out
    assert ds.normalization == load(spec).normalization


def test_validation_zero_is_none(tmp_path):
    assert load(_indexed(tmp_path), validation=0.0).validation is None


# ------------------------------------------------------------------ batch_indices


def test_batch_indices_reproducible_from_seed_and_step():
    kw = dict(num_examples=50, batch_size=8)
    a = batch_indices(5, 13, **kw)
    assert a.dtype == jnp.int32 and a.shape == (8,)
    np.testing.assert_array_equal(a, batch_indices(5, 13, **kw))
    np.testing.assert_array_equal(a, batch_indices(jax.random.key(5), 13, **kw))
    np.testing.assert_array_equal(a, batch_indices(jax.random.PRNGKey(5), 13, **kw))
    assert not np.array_equal(a, batch_indices(6, 13, **kw))
    assert not np.array_equal(a, batch_indices(5, 14, **kw))


@pytest.mark.parametrize("n, b", [(100, 10), (103, 10), (7, 7)])
def test_batch_indices_epoch_is_a_permutation(n, b):
    spe = n // b
    for epoch in range(3):
        idx = np.concatenate(
            [
                np.asarray(
                    batch_indices(1, epoch * spe + s, num_examples=n, batch_size=b)
                )
                for s in range(spe)
            ]
        )
        assert len(np.unique(idx)) == spe * b  # no repeats within an epoch
        assert idx.min() >= 0 and idx.max() < n
        if n % b == 0:
            np.testing.assert_array_equal(np.sort(idx), np.arange(n))
        # the documented order: permutation of fold_in(key, epoch), partial batch dropped
        perm = np.asarray(
            jax.random.permutation(jax.random.fold_in(jax.random.key(1), epoch), n)
        )
        np.testing.assert_array_equal(idx, perm[: spe * b])


@pytest.mark.parametrize("shuffle", [True, False])
def test_batch_indices_traced_step_matches_eager(shuffle):
    kw = dict(num_examples=37, batch_size=5, shuffle=shuffle)
    key = jax.random.key(2)
    steps = jnp.arange(20)
    eager = np.stack([np.asarray(batch_indices(key, int(s), **kw)) for s in steps])
    jitted = jax.jit(lambda k, s: batch_indices(k, s, **kw))
    np.testing.assert_array_equal(np.stack([jitted(key, s) for s in steps]), eager)

    def body(carry, s):
        return carry, batch_indices(key, s, **kw)

    _, scanned = jax.lax.scan(body, None, steps)
    np.testing.assert_array_equal(scanned, eager)


def test_batch_indices_no_shuffle_is_consecutive_and_wraps():
    n, b = 10, 4
    for step in [*range(12), 10**6 + 3]:
        got = batch_indices(0, step, num_examples=n, batch_size=b, shuffle=False)
        np.testing.assert_array_equal(got, (step * b + np.arange(b)) % n)
    # a large n*b that would overflow int32 if multiplied naively
    n, b = 60_000, 59_999
    step = 123_457
    got = batch_indices(0, step, num_examples=n, batch_size=b, shuffle=False)
    np.testing.assert_array_equal(got[:3], (step * b + np.arange(3)) % n)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_examples=10, batch_size=11), "batch_size.*larger than num_examples"),
        (dict(num_examples=10, batch_size=0), "batch_size"),
        (dict(num_examples=0, batch_size=1), "num_examples"),
        (dict(num_examples=10.0, batch_size=2), "num_examples"),
        (dict(num_examples=10, batch_size=2, step=-1), "step"),
        (dict(num_examples=10, batch_size=2, key=jnp.zeros(3)), "key_or_seed"),
    ],
)
def test_batch_indices_bad_input(kwargs, match):
    key, step = kwargs.pop("key", 0), kwargs.pop("step", 0)
    with pytest.raises(ValueError, match=match):
        batch_indices(key, step, **kwargs)


# ------------------------------------------------------------------- bad inputs


def _bad(arrays, **changes):
    out = dict(arrays)
    for k, v in changes.items():
        if v is None:
            del out[k]
        else:
            out[k] = v
    return out


G = _grey()


@pytest.mark.parametrize(
    "arrays, kwargs, exc, match",
    [
        (_bad(G, y_test=None), {}, ValueError, r"lacks array\(s\) \['y_test'\]"),
        (
            _bad(G, y_train=G["y_train"].astype(np.int64) - 1),
            {},
            ValueError,
            "y_train: labels must be >= 0",
        ),
        (_bad(G, y_train=G["y_train"] + 0.5), {}, ValueError, "y_train.*integer"),
        (
            _bad(G, y_train=G["y_train"][:-1]),
            {},
            ValueError,
            "y_train: has 49 labels but x_train has 50",
        ),
        (_bad(G, y_test=np.eye(10)[G["y_test"]]), {}, ValueError, "y_test.*1-D"),
        (_bad(G, x_test=G["x_test"][:, :20]), {}, ValueError, "x_test"),
        (G, dict(validation=50), ValueError, "validation: 50 examples.*only 50"),
        (G, dict(validation=-1), ValueError, "validation"),
        (G, dict(validation=1.0), ValueError, r"validation: a fraction.*\[0, 1\)"),
        (G, dict(validation="10"), ValueError, "validation"),
    ],
    ids=[
        "missing-array",
        "negative-label",
        "float-label",
        "length-mismatch",
        "one-hot",
        "shape-mismatch",
        "val-too-big",
        "val-negative",
        "val-frac",
        "val-type",
    ],
)
def test_load_bad_input(tmp_path, arrays, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        load(_npz(tmp_path, **arrays), **kwargs)


def test_load_integral_float_labels_are_accepted(tmp_path):
    ds = load(_npz(tmp_path, **_bad(G, y_train=G["y_train"].astype(np.float32))))
    np.testing.assert_array_equal(ds.train.y, G["y_train"])


@pytest.mark.parametrize(
    "spec, exc, match",
    [
        ("cifar", ValueError, r"spec: unknown dataset 'cifar'.*npz:PATH"),
        ("mnist", ValueError, r"did you mean 'tfds:mnist'"),
        ("npz:/no/such/file.npz", FileNotFoundError, "no such file"),
        ("npz:", ValueError, "npz:PATH"),
        (3, ValueError, "spec"),
    ],
)
def test_load_bad_spec(spec, exc, match):
    with pytest.raises(exc, match=match):
        load(spec)


def test_load_rejects_a_non_npz_file(tmp_path):
    path = tmp_path / "x.npz"
    path.write_text("not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        load(f"npz:{path}")


def test_check_input_shape(tmp_path):
    ds = load(_npz(tmp_path, **G))
    assert isinstance(ds, Dataset)
    check_input_shape(ds, (28, 28, 1))
    with pytest.raises(ValueError, match=r"\(32, 32, 3\).*\(28, 28, 1\)"):
        check_input_shape(ds, (32, 32, 3))
