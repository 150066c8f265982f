"""The sources of :func:`lotto_jax.data.load`: raw numpy arrays from MNIST-1D, a
``.npz`` file, TensorFlow Datasets or modular arithmetic, before normalisation and
hold-out.

Nothing is read through pickle; TFDS touches the network only with ``download``.
"""

from __future__ import annotations

import functools
import os
import random
import zipfile
from typing import Any

import numpy as np

_SPECS = ("'mnist1d', 'tfds:NAME[:CONFIG]' (e.g. 'tfds:mnist'), 'npz:PATH' or "
          "'modular:OP:P:FRACTION' (e.g. 'modular:add:67:0.4')")
_OFFLINE = (
    "Offline alternatives: 'npz:PATH' with a .npz file holding x_train, y_train, "
    "x_test, y_test, or 'mnist1d' (generated locally)."
)
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_TFDS_CHUNK = 10_000
_MODULAR_OPS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "x2xyy2": lambda a, b, p: (a * a + a * b + b * b) % p,
}
_MODULAR_MAX_P = 4096  # p (p + 1) / 2 pairs: 8.4 M at the cap



@functools.cache
def _mnist1d_arrays() -> dict[str, np.ndarray]:
    """MNIST-1D from its templates with the reference arguments (seed 42).

    ``make_dataset`` seeds Python's and numpy's global RNGs; their states are saved
    and restored so loading leaves the caller's random streams untouched.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    np_state = np.random.get_state()  # noqa: NPY002 (the legacy global, on purpose)
    py_state = random.getstate()
    try:
        raw = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    out = {k: np.asarray(raw[k]) for k in ("x", "y", "x_test", "y_test")}
    for a in out.values():
        a.flags.writeable = False
    return out


def _npz_arrays(spec: str) -> tuple[np.ndarray, ...]:
    path = os.path.expanduser(spec[len("npz:") :])
    if not path:
        raise ValueError(f"spec: expected 'npz:PATH' with a file path, got {spec!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"spec {spec!r}: no such file {path!r}")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError) as e:  # not a zip, truncated, pickled
        why = e if zipfile.is_zipfile(path) else "not a zip archive"  # numpy: "pickled"
        raise ValueError(
            f"spec {spec!r}: cannot read {path!r} as .npz ({why}); expected an archive "
            f"written by numpy.savez with {list(_NPZ_KEYS)}"
        ) from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(
            f"spec {spec!r}: {path!r} holds a single array, expected a .npz archive "
            f"with {list(_NPZ_KEYS)}"
        )
    with npz:
        missing = [k for k in _NPZ_KEYS if k not in npz.files]
        if missing:
            raise ValueError(
                f"spec {spec!r}: the .npz lacks array(s) {missing}; it must hold "
                f"{list(_NPZ_KEYS)}, found {sorted(npz.files)}"
            )
        arrays = tuple(npz[k] for k in _NPZ_KEYS)
    x_train, _, x_test, _ = arrays
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"spec {spec!r}: x_train examples have shape {x_train.shape[1:]} but "
            f"x_test examples have shape {x_test.shape[1:]}"
        )
    return arrays


def _tfds_arrays(spec: str, *, data_dir: str | None, download: bool):
    """Reads both splits of a TFDS dataset into numpy, never touching the network
    unless ``download``."""
    parts = spec[len("tfds:") :].split(":")
    if not parts[0] or len(parts) > 2 or not all(parts):
        raise ValueError(f"spec: expected 'tfds:NAME[:CONFIG]', got {spec!r}")
    name = parts[0].split("/")[0]
    builder_name = "/".join(parts)

    import tensorflow_datasets as tfds  # slow import, only when needed

    try:
        builder = tfds.builder(builder_name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"spec {spec!r}: TFDS has no dataset named {name!r}; expected {_SPECS}"
        ) from None
    except (AssertionError, ValueError) as e:  # bad config or version
        raise ValueError(f"spec {spec!r}: {e}") from e
    where = f"data_dir={str(builder.data_dir_root)!r}"
    if download:
        try:
            builder.download_and_prepare()
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else ""
            raise FileNotFoundError(
                f"spec {spec!r}: TFDS dataset {builder_name!r} is not prepared "
                f"under {where} and downloading it failed "
                f"({type(e).__name__}: {msg}). {_OFFLINE}"
            ) from None
    try:
        splits = builder.as_dataset(
            split=["train", "test"], as_supervised=True, shuffle_files=False
        )
    except AssertionError:
        raise FileNotFoundError(
            f"spec {spec!r}: TFDS dataset {builder_name!r} is not prepared under "
            f"{where} and download=False. Prepare it on a machine with network "
            f"access (load(..., download=True)) and copy data_dir, or use another "
            f"source. {_OFFLINE}"
        ) from None
    # batch_size=-1 would be simplest, but when split sizes are unknown (tfds mock
    # data) it batches by sys.maxsize, which aborts TF 2.21: read in chunks.
    (x_train, y_train), (x_test, y_test) = (_to_numpy(tfds, ds) for ds in splits)
    label = builder.info.features[builder.info.supervised_keys[1]]
    num_classes = getattr(label, "num_classes", None)
    return x_train, y_train, x_test, y_test, num_classes, name


def _to_numpy(tfds: Any, ds: Any) -> tuple[np.ndarray, np.ndarray]:
    chunks = list(tfds.as_numpy(ds.batch(_TFDS_CHUNK)))
    if not chunks:
        return np.zeros((0,)), np.zeros((0,), np.int64)
    return tuple(np.concatenate(parts) for parts in zip(*chunks, strict=True))


def _parse_modular(spec: str) -> tuple[str, int, float]:
    """``(OP, P, FRACTION)`` of a ``modular:OP:P:FRACTION`` spec, checked (no data
    built: cheap enough for a config's ``__post_init__``)."""
    parts = spec.split(":")
    form = "'modular:OP:P:FRACTION' (e.g. 'modular:add:67:0.4')"
    if len(parts) != 4:
        raise ValueError(f"spec {spec!r}: expected {form}")
    _, op, p_text, frac_text = parts
    if op not in _MODULAR_OPS:
        raise ValueError(
            f"spec {spec!r}: OP: unknown operation {op!r}; expected one of "
            f"{list(_MODULAR_OPS)}"
        )
    try:
        p = int(p_text)
    except ValueError:
        p = None
    if p is None or not 2 <= p <= _MODULAR_MAX_P:
        raise ValueError(
            f"spec {spec!r}: P: expected the modulus, an int in [2, {_MODULAR_MAX_P}], "
            f"got {p_text!r}"
        )
    try:
        fraction = float(frac_text)
    except ValueError:
        fraction = float("nan")
    if not 0 < fraction < 1:
        raise ValueError(
            f"spec {spec!r}: FRACTION: expected the train fraction of the pairs, a "
            f"number in (0, 1), got {frac_text!r}"
        )
    n_pairs = p * (p + 1) // 2
    n_train = int(fraction * n_pairs)
    if not 0 < n_train < n_pairs:
        raise ValueError(
            f"spec {spec!r}: FRACTION: {fraction} of {n_pairs} pairs leaves "
            f"{n_train} train and {n_pairs - n_train} test pairs; both must be > 0"
        )
    return op, p, fraction


def _modular_arrays(spec: str, seed: int) -> tuple[np.ndarray, ...]:
    """``modular:OP:P:FRACTION``: every pair ``(a, b)`` with ``0 <= a <= b < P`` (the
    reference's symmetric input), labelled ``OP(a, b) mod P``; the pairs are shuffled
    by ``random.Random(seed).shuffle`` (the reference's ``random.seed(seed);
    random.shuffle(pairs)``, so a seed gives the reference's split) and the first
    ``int(FRACTION * N)`` are the train split, the rest the test split. Inputs are
    int32 token pairs ``(N, 2)``, labels int32 in ``[0, P)``.

    References:
      Minegishi, Iwasawa & Matsuo, "Grokking Tickets", arXiv:2310.19470
      (gouki510/Grokking-Tickets ``data_module.gen_train_test``); Power et al. 2022,
      "Grokking", arXiv:2201.02177.
    """
    op, p, fraction = _parse_modular(spec)
    pairs = [(a, b) for a in range(p) for b in range(a, p)]
    n_train = int(fraction * len(pairs))
    random.Random(seed).shuffle(pairs)
    x = np.asarray(pairs, np.int32).reshape(-1, 2)
    y = _MODULAR_OPS[op](x[:, 0].astype(np.int64), x[:, 1].astype(np.int64), p)
    y = y.astype(np.int32)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], p
