"""Datasets for the lottery-ticket experiments, as numpy arrays, and seeded batching.

Four sources, chosen by a spec string passed to :func:`load`:

- ``"mnist1d"``: MNIST-1D (Greydanus 2020), generated offline from its templates
  (4,000 train / 1,000 test signals of length 40). Needs no files and no network,
  so it is the default for tests and quick runs.
- ``"tfds:NAME[:CONFIG]"``: any TensorFlow Datasets image classification dataset
  (``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ...). It must already be
  prepared under ``data_dir`` unless ``download=True``.
- ``"npz:PATH"``: a ``.npz`` file holding ``x_train, y_train, x_test, y_test``.
- ``"modular:OP:P:FRACTION"``: modular arithmetic for grokking (Power et al. 2022;
  Minegishi et al.'s grokking tickets): every pair ``a <= b`` of ``[0, P)`` labelled
  ``OP(a, b) mod P`` (``OP``: ``add``, ``sub`` or ``x2xyy2`` = a² + ab + b²), split
  by ``seed`` into ``int(FRACTION * N)`` train pairs and the rest as test. Inputs
  are int32 token pairs ``(N, 2)`` for a model that embeds them (``grok_mlp``);
  ``modular:add:67:0.4`` has 2,278 pairs, 911 of them train.

Every dataset comes back as a frozen :class:`Dataset` of float32, normalised inputs
(images NHWC, channel last) and int32 labels, with the normalisation it used. The
training loop keeps the arrays on device and picks each batch with
:func:`batch_indices`, a pure function of ``(key, step)``: a resumed run sees exactly
the batches it would have seen, and the indices can be computed inside ``jit`` or
``lax.scan``.

Normalisation follows the papers: uint8 images are scaled to [0, 1], then each channel
is standardised with the constants of :data:`NORMALIZATION` for the TFDS datasets
named there, and with the per-channel mean and std of the full train split (before
any validation hold-out) for every other dataset and every ``.npz`` file. Nothing is
read or written through pickle.

References:
  Frankle & Carbin 2019, "The Lottery Ticket Hypothesis", arXiv:1803.03635.
  Greydanus 2020, "Scaling down Deep Learning" (MNIST-1D), arXiv:2011.14439.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax._data_sources import (
    _SPECS,
    _mnist1d_arrays,
    _modular_arrays,
    _npz_arrays,
    _parse_modular,
    _tfds_arrays,
)

__all__ = [
    "NORMALIZATION",
    "Dataset",
    "Split",
    "batch_indices",
    "check_input_shape",
    "check_spec",
    "load",
]

NORMALIZATION: dict[str, dict[str, tuple[float, ...]]] = {
    "mnist": {"mean": (0.1307,), "std": (0.3081,)},
    "fashion_mnist": {"mean": (0.2860,), "std": (0.3530,)},
    "cifar10": {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)},
    "cifar100": {"mean": (0.5071, 0.4865, 0.4409), "std": (0.2673, 0.2564, 0.2762)},
}
"""Per-channel mean and std of the train split, in [0, 1] pixel units, for the TFDS
datasets whose constants the papers use. Other datasets get theirs computed."""

@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split of a dataset.

    Attributes:
      x: float32 inputs, normalised, shape ``(N, *input_shape)``; int32 token
        pairs ``(N, 2)`` for ``modular:`` datasets.
      y: int32 class labels in ``[0, num_classes)``, shape ``(N,)``.
    """

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset held in host memory.

    Attributes:
      name: the spec it was loaded from, e.g. ``"tfds:mnist"``.
      train: the training split (without the validation examples).
      validation: examples held out of train, or ``None``.
      test: the test split.
      input_shape: shape of one example: ``(28, 28, 1)`` for MNIST (NHWC, channel
        last), ``(32, 32, 3)`` for CIFAR, ``(40,)`` for MNIST-1D.
      num_classes: number of classes.
      normalization: ``{"mean": [...], "std": [...]}``, one entry per channel, as
        applied: ``x = (x_raw * s - mean) / std`` with ``s = 1/255`` for uint8
        inputs and ``1`` otherwise.
    """

    name: str
    train: Split
    validation: Split | None
    test: Split
    input_shape: tuple[int, ...]
    num_classes: int
    normalization: dict


def load(
    spec: str,
    *,
    seed: int = 0,
    validation: int | float = 0,
    data_dir: str | None = None,
    download: bool = False,
) -> Dataset:
    """Loads a dataset by spec, normalises it and optionally holds out a validation set.

    Args:
      spec: ``"mnist1d"``, ``"tfds:NAME[:CONFIG]"``, ``"npz:PATH"`` or
        ``"modular:OP:P:FRACTION"``.
      seed: seed of the permutation that picks the validation examples (and, for
        ``modular:``, of the train/test split of the pairs).
      validation: examples held out of train: an int count (Frankle & Carbin hold
        out 5,000 MNIST images), a float fraction in ``[0, 1)``, or 0 for none.
      data_dir: TFDS data directory (TFDS's default when ``None``).
      download: let TFDS download and prepare a missing dataset. Off by default,
        so a missing dataset fails at once instead of retrying the network.

    Returns:
      A :class:`Dataset`; ``validation`` is ``None`` when nothing is held out.

    Raises:
      ValueError: unknown spec, malformed arrays or labels, bad ``validation``.
      FileNotFoundError: the ``.npz`` file is missing, or the TFDS dataset is not
        prepared under ``data_dir`` and cannot be downloaded.

    Examples:
      >>> ds = load("mnist1d", validation=500)
      >>> ds.train.x.shape, ds.validation.x.shape, ds.test.x.shape
      ((3500, 40), (500, 40), (1000, 40))
      >>> ds.input_shape, ds.num_classes, ds.train.y.dtype
      ((40,), 10, dtype('int32'))
      >>> ds = load("modular:add:67:0.4")
      >>> len(ds.train), len(ds.test), ds.num_classes, ds.train.x.dtype
      (911, 1367, 67, dtype('int32'))
    """
    if not isinstance(spec, str):
        raise ValueError(f"spec: expected a string, one of {_SPECS}; got {spec!r}")
    if spec == "mnist1d":
        raw = _mnist1d_arrays()
        norm = {"mean": [0.0], "std": [1.0]}  # make_dataset already standardised
        x_train, x_test = (raw[k].astype(np.float32) for k in ("x", "x_test"))
        y_train, y_test = raw["y"], raw["y_test"]
        num_classes = None
    elif spec.startswith("tfds:"):
        x_train, y_train, x_test, y_test, num_classes, name = _tfds_arrays(
            spec, data_dir=data_dir, download=download
        )
        x_train, x_test, norm = _normalize(x_train, x_test, NORMALIZATION.get(name))
    elif spec.startswith("modular:"):
        x_train, y_train, x_test, y_test, num_classes = _modular_arrays(spec, seed)
        norm = {"mean": [0.0], "std": [1.0]}  # integer tokens, not normalised
    elif spec.startswith("npz:"):
        x_train, y_train, x_test, y_test = _npz_arrays(spec)
        try:
            x_train, x_test, norm = _normalize(x_train, x_test, None)
        except ValueError as e:  # name the file, not just the array
            raise ValueError(f"spec {spec!r}: {e}") from e
        num_classes = None
    else:
        hint = f" (did you mean 'tfds:{spec}'?)" if spec in NORMALIZATION else ""
        raise ValueError(f"spec: unknown dataset {spec!r}{hint}; expected {_SPECS}")

    try:
        y_train = _labels(y_train, "y_train", len(x_train))
        y_test = _labels(y_test, "y_test", len(x_test))
    except ValueError as e:  # name the source, not just the array
        raise ValueError(f"spec {spec!r}: {e}") from e
    max_label = int(max(y_train.max(), y_test.max()))
    if num_classes is None:
        num_classes = max_label + 1
    elif max_label >= num_classes:
        raise ValueError(
            f"{spec}: labels must lie in [0, {num_classes}), found {max_label}"
        )
    train, val = _hold_out(Split(x_train, y_train), validation, seed)
    return Dataset(
        name=spec,
        train=train,
        validation=val,
        test=Split(x_test, y_test),
        input_shape=tuple(x_train.shape[1:]),
        num_classes=num_classes,
        normalization=norm,
    )


def batch_indices(
    key_or_seed: int | jax.Array,
    step: int | jax.Array,
    *,
    num_examples: int,
    batch_size: int,
    shuffle: bool = True,
) -> jax.Array:
    """Indices of the examples in batch ``step``, a pure function of ``(key, step)``.

    With ``shuffle``, epoch ``e = step // (num_examples // batch_size)`` visits the
    examples in the order ``jax.random.permutation(fold_in(key, e), num_examples)``
    and the last partial batch of each epoch is dropped. Without it, batches take
    consecutive examples ``(step * batch_size + i) % num_examples``, wrapping around.
    ``step`` may be traced (inside ``jit`` or ``lax.scan``); ``num_examples`` and
    ``batch_size`` are static.

    Args:
      key_or_seed: a JAX PRNG key (typed or raw uint32) or an integer seed.
      step: the global step, from 0.
      num_examples: number of examples to draw from.
      batch_size: examples per batch, at most ``num_examples``.
      shuffle: reshuffle every epoch; else take examples in order.

    Returns:
      int32 array of shape ``(batch_size,)``.

    Raises:
      ValueError: non-positive sizes, ``batch_size > num_examples``, negative step.

    Examples:
      >>> batch_indices(0, 1, num_examples=10, batch_size=4, shuffle=False).tolist()
      [4, 5, 6, 7]
      >>> batch_indices(0, 2, num_examples=10, batch_size=4, shuffle=False).tolist()
      [8, 9, 0, 1]
      >>> epoch = [batch_indices(7, s, num_examples=6, batch_size=2) for s in range(3)]
      >>> sorted(np.concatenate(epoch).tolist())
      [0, 1, 2, 3, 4, 5]
    """
    for arg, value in (("num_examples", num_examples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"{arg}: expected a positive Python int, got {value!r}")
        if value <= 0:
            raise ValueError(f"{arg}: expected a positive int, got {value}")
    if batch_size > num_examples:
        raise ValueError(
            f"batch_size: {batch_size} is larger than num_examples={num_examples}"
        )
    if isinstance(step, int | np.integer) and step < 0:
        raise ValueError(f"step: expected a non-negative step, got {step}")
    n, b = int(num_examples), int(batch_size)
    step = jnp.asarray(step, dtype=jnp.int32)
    if shuffle:
        steps_per_epoch = n // b
        key = jax.random.fold_in(_as_key(key_or_seed), step // steps_per_epoch)
        perm = jax.random.permutation(key, n).astype(jnp.int32)
        start = (step % steps_per_epoch) * b
        return jax.lax.dynamic_slice(perm, (start,), (b,))
    # (step * b) % n repeats every n // gcd(n, b) steps; reduce step first so the
    # product stays small, and use uint32 so it cannot overflow for n * b < 2**32.
    period = n // math.gcd(n, b)
    if period * b >= 2**32:
        raise ValueError(
            f"num_examples * batch_size too large for shuffle=False: {n} * {b}"
        )
    start = ((step % period).astype(jnp.uint32) * jnp.uint32(b)) % jnp.uint32(n)
    return ((start + jnp.arange(b, dtype=jnp.uint32)) % jnp.uint32(n)).astype(jnp.int32)


def check_spec(spec: str) -> None:
    """Raises at once for a malformed ``modular:`` spec (no data built), so a config
    can refuse it before anything is written; other specs are checked by
    :func:`load`.

    Raises:
      ValueError: the message names the spec and its faulty part (``OP``, ``P``,
        ``FRACTION``).

    Examples:
      >>> check_spec("modular:add:67:0.4")
      >>> check_spec("modular:add:67:1.5")
      Traceback (most recent call last):
      ...
      ValueError: spec 'modular:add:67:1.5': FRACTION: expected the train fraction of the pairs, a number in (0, 1), got '1.5'
    """
    if isinstance(spec, str) and spec.startswith("modular:"):
        _parse_modular(spec)


def check_input_shape(dataset: Dataset, expected_shape: tuple[int, ...]) -> None:
    """Raises if a model expecting ``expected_shape`` cannot take this dataset.

    Args:
      dataset: a loaded :class:`Dataset`.
      expected_shape: the per-example shape the model expects, e.g. ``(28, 28, 1)``.

    Raises:
      ValueError: the shapes differ; the message names both.

    Examples:
      >>> ds = load("mnist1d")
      >>> check_input_shape(ds, (40,))
      >>> check_input_shape(ds, (28, 28, 1))
      Traceback (most recent call last):
      ...
      ValueError: expected_shape: the model expects inputs of shape (28, 28, 1) but dataset 'mnist1d' has input_shape (40,)
    """
    expected = tuple(int(d) for d in expected_shape)
    if expected != tuple(dataset.input_shape):
        raise ValueError(
            f"expected_shape: the model expects inputs of shape {expected} but "
            f"dataset {dataset.name!r} has input_shape {tuple(dataset.input_shape)}"
        )


# ------------------------------------------------------------------------- helpers


def _normalize(
    x_train: np.ndarray, x_test: np.ndarray, constants: dict | None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Adds a channel axis to grey images, scales uint8 to [0, 1], standardises."""
    if len(x_train) == 0 or len(x_test) == 0:
        raise ValueError(
            f"x_train/x_test: expected non-empty arrays, got {len(x_train)} train "
            f"and {len(x_test)} test examples"
        )
    if x_train.ndim == 3:  # (N, H, W) grey images -> NHWC
        x_train, x_test = x_train[..., None], x_test[..., None]
    if x_train.ndim not in (2, 4):
        raise ValueError(
            f"x_train: expected (N, L) signals or (N, H, W[, C]) images, got shape "
            f"{x_train.shape}"
        )
    if not (np.issubdtype(x_train.dtype, np.number) or x_train.dtype == bool):
        raise ValueError(f"x_train: expected a numeric array, got {x_train.dtype}")
    scale = 1 / 255 if x_train.dtype == np.uint8 else 1.0
    channels = x_train.shape[-1] if x_train.ndim == 4 else 1
    if constants is not None and scale != 1.0 and len(constants["mean"]) == channels:
        mean = np.asarray(constants["mean"], np.float64)
        std = np.asarray(constants["std"], np.float64)
    else:  # per-channel stats of the full train split
        axes = tuple(range(x_train.ndim - 1)) if x_train.ndim == 4 else None
        xs = x_train.astype(np.float64) * scale
        mean = np.atleast_1d(xs.mean(axis=axes))
        std = np.atleast_1d(xs.std(axis=axes))
        # a constant channel (std 0 up to rounding) is only centred, not scaled
        std = np.where(std > 1e-6 * np.abs(mean), std, 1.0)

    def apply(x):
        x = x.astype(np.float32) * np.float32(scale)
        return (x - mean.astype(np.float32)) / std.astype(np.float32)

    norm = {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}
    return apply(x_train), apply(x_test), norm


def _labels(y: np.ndarray, name: str, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(
            f"{name}: expected 1-D integer class labels of shape ({n},), got shape "
            f"{y.shape}"
        )
    if len(y) != n:
        raise ValueError(
            f"{name}: has {len(y)} labels but x_{name[2:]} has {n} examples"
        )
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y))):
            raise ValueError(
                f"{name}: expected integer class labels 0..K-1, got dtype {y.dtype}"
            )
    if y.size and y.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0, found {int(y.min())}")
    return y.astype(np.int32)


def _hold_out(train: Split, validation: int | float, seed: int):
    n = len(train)
    if isinstance(validation, bool) or not isinstance(
        validation, int | float | np.integer | np.floating
    ):
        raise ValueError(
            f"validation: expected an int count or a float fraction, got {validation!r}"
        )
    if isinstance(validation, float | np.floating):
        if not 0.0 <= validation < 1.0:
            raise ValueError(
                f"validation: a fraction must lie in [0, 1), got {validation}"
            )
        k = round(validation * n)
    else:
        k = int(validation)
    if k < 0:
        raise ValueError(f"validation: expected a count >= 0, got {k}")
    if k >= n:
        raise ValueError(
            f"validation: {k} examples requested but train has only {n}; at least "
            f"one must stay in train"
        )
    if k == 0:
        return train, None
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(perm[:k]), np.sort(perm[k:])
    return (
        Split(train.x[train_idx], train.y[train_idx]),
        Split(train.x[val_idx], train.y[val_idx]),
    )


def _as_key(key_or_seed: int | jax.Array) -> jax.Array:
    if isinstance(key_or_seed, int | np.integer) and not isinstance(key_or_seed, bool):
        return jax.random.key(int(key_or_seed))
    key = (
        key_or_seed if isinstance(key_or_seed, jax.Array) else jnp.asarray(key_or_seed)
    )
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if key.shape == () and jnp.issubdtype(key.dtype, jnp.integer):
        return jax.random.key(key)
    if key.shape == (2,) and key.dtype == jnp.uint32:
        return key
    raise ValueError(
        f"key_or_seed: expected an int seed or a PRNG key, got "
        f"{type(key_or_seed).__name__} of shape {key.shape} and dtype {key.dtype}"
    )
