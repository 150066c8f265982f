"""Meshes and shardings for params, masks, optimizer state and batches.

lotto_jax scales through JAX's own sharding: place the arrays, and ``jit`` compiles
the same train step for one device or many. The conventions:

* a :class:`jax.sharding.Mesh` with a ``"data"`` axis (batches are split over it) and
  optionally a ``"model"`` axis (FSDP-style: each large param is split over it along
  its largest divisible dimension);
* params, masks and optimizer state are replicated by default; masks always follow
  their params' sharding (:func:`lotto_jax.masks.init` uses ``ones_like``, and
  :func:`place_state` puts every param-shaped leaf of a state where its param is);
* the training data stays replicated on every device and each step's batch is
  constrained to the ``"data"`` axis inside the compiled step
  (``make_trainer(..., mesh=mesh)``).

Multi-host: call ``jax.distributed.initialize()`` at the start of every process, then
build the mesh from ``jax.devices()`` as here; the single-process path is the one the
test suite runs (with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lotto_jax._types import Params

__all__ = [
    "DATA",
    "MODEL",
    "batch_sharding",
    "make_mesh",
    "param_shardings",
    "parse_mesh",
    "place",
    "place_state",
    "replicated",
]

DATA = "data"
MODEL = "model"


def parse_mesh(spec: str | None) -> dict[str, int]:
    """Parses ``"data=4,model=2"`` into ``{"data": 4, "model": 2}``.

    ``None`` or ``""`` means every device on the data axis. One size may be ``-1``
    (the remaining devices).

    Examples:
      >>> parse_mesh("data=4,model=2")
      {'data': 4, 'model': 2}
    """
    if not spec:
        return {DATA: -1}
    out: dict[str, int] = {}
    for part in spec.split(","):
        name, sep, size = part.partition("=")
        name = name.strip()
        if not sep or name not in (DATA, MODEL):
            raise ValueError(
                f"mesh: expected 'data=N[,model=M]', got {spec!r} (bad part {part!r})"
            )
        try:
            out[name] = int(size)
        except ValueError:
            raise ValueError(f"mesh: size of {name!r} must be an int, got {size!r}") from None
        if out[name] == 0 or out[name] < -1:
            raise ValueError(f"mesh: size of {name!r} must be positive or -1, got {size}")
    return out


def make_mesh(spec: str | Mapping[str, int] | None = None, *, devices=None) -> Mesh:
    """A mesh over ``devices`` (default: all) with a ``data`` and a ``model`` axis.

    Args:
      spec: ``"data=N[,model=M]"`` or a dict; missing axes have size 1, and one
        size may be ``-1`` for "the rest".
      devices: the devices to use (default ``jax.devices()``).

    Returns:
      A ``Mesh`` with axis names ``("data", "model")``.

    Raises:
      ValueError: the sizes do not multiply to the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = dict(parse_mesh(spec) if spec is None or isinstance(spec, str) else spec)
    sizes.setdefault(DATA, 1 if MODEL in sizes and sizes[MODEL] == -1 else -1)
    sizes.setdefault(MODEL, 1)
    known = math.prod(s for s in sizes.values() if s != -1)
    for name, s in sizes.items():
        if s == -1:
            if len(devices) % known:
                raise ValueError(
                    f"mesh: {len(devices)} devices cannot be split into {known} x N"
                )
            sizes[name] = len(devices) // known
    if sizes[DATA] * sizes[MODEL] != len(devices):
        raise ValueError(
            f"mesh: data={sizes[DATA]} x model={sizes[MODEL]} needs "
            f"{sizes[DATA] * sizes[MODEL]} devices, found {len(devices)} (expected axis "
            "sizes whose product is the device count; -1 takes the rest)"
        )
    grid = np.array(devices).reshape(sizes[DATA], sizes[MODEL])
    return Mesh(grid, (DATA, MODEL))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that keeps a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches split over the ``data`` axis on their first dimension."""
    return NamedSharding(mesh, P(DATA))


def param_shardings(params: Params, mesh: Mesh, *, fsdp: bool = False, min_size: int = 1024):
    """Shardings for ``params``: replicated, or FSDP-style over the ``model`` axis.

    With ``fsdp``, each leaf with at least ``min_size`` elements is split over
    ``model`` along its largest dimension divisible by the axis size; smaller or
    indivisible leaves stay replicated.

    Returns:
      A pytree of ``NamedSharding`` like ``params``.
    """
    n_model = mesh.shape[MODEL]

    def one(leaf):
        shape = np.shape(leaf)
        if not fsdp or n_model == 1 or math.prod(shape) < min_size:
            return replicated(mesh)
        dims = sorted(range(len(shape)), key=lambda d: -shape[d])
        for d in dims:
            if shape[d] % n_model == 0:
                spec = [None] * len(shape)
                spec[d] = MODEL
                return NamedSharding(mesh, P(*spec))
        return replicated(mesh)

    return jax.tree.map(one, params)


def place(tree: Any, shardings: Any) -> Any:
    """``jax.device_put`` of a pytree with a matching pytree of shardings."""
    return jax.tree.map(jax.device_put, tree, shardings)


def place_state(state, mesh: Mesh, *, fsdp: bool = False, tx=None):
    """Places a :class:`lotto_jax.train.TrainState` on ``mesh``.

    Params get :func:`param_shardings`; every param-shaped leaf of the optimizer
    state (moments) gets its param's sharding (``optax.tree_utils.tree_map_params``
    with ``tx``, the trainer's transformation); everything else is replicated.
    """
    shardings = param_shardings(state.params, mesh, fsdp=fsdp)
    params = place(state.params, shardings)
    rep = replicated(mesh)
    if tx is None:
        opt_state = jax.tree.map(lambda x: jax.device_put(x, rep), state.opt_state)
    else:
        opt_state = optax.tree_utils.tree_map_params(
            tx,
            lambda x, s: jax.device_put(x, s),
            state.opt_state,
            shardings,
            transform_non_params=lambda x: jax.device_put(x, rep),
        )
    if state.dst is not None:  # a DST mask follows its params
        state = state.replace(dst=state.dst._replace(
            mask=place(state.dst.mask, shardings),
            inner=jax.tree.map(lambda x: jax.device_put(x, rep), state.dst.inner)))
    return state.replace(
        step=jax.device_put(state.step, rep),
        params=params,
        model_state=jax.tree.map(lambda x: jax.device_put(x, rep), state.model_state),
        opt_state=opt_state,
    )
