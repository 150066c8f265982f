"""Which weights make one neuron, channel or residual block of each model.

A model's :class:`Topology` lists its *unit groups*: sets of units pruned together,
unit ``j`` being slice ``j`` along an axis of each *member* leaf (the weights that
produce it: kernel slice, bias, normalisation scale and offset) and of each
*consumer* leaf (the next layers' input slices that read it: what compaction deletes
with the unit, and what a removed unit leaves dead). Its *blocks* are the residual
branches that can be removed whole (the block becomes the identity).

Units tied through a residual connection (the stream of a ResNet stage, MNIST-1D's
``h + relu(W h)``) are one group: removing stream unit ``j`` zeroes it in every layer
that writes to the stream. Streams that the input or output layers would have to
change shape for are left out (ResMLP's and ResNet's residual streams).

Paths are :func:`lotto_jax.masks.path_str` strings of the *params* tree
(``"Dense_0/kernel"``). ``structured`` and ``export`` build on this module.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax

from lotto_jax import masks
from lotto_jax.models import (
    MLP,
    MNIST1DMLP,
    VGG,
    CifarResNet,
    ConvNet,
    LeNet5,
    ResMLP,
)

__all__ = ["Block", "Slice", "Topology", "UnitGroup", "check_slices", "topology", "unit_count", "view"]


class Slice(NamedTuple):
    """Slice ``j`` along ``axis`` of leaf ``path`` viewed with ``shape``.

    ``shape`` is ``None`` for the leaf's own shape; a flattened conv output feeding a
    dense kernel ``(h*w*c, out)`` is viewed as ``(h*w, c, out)`` with ``axis=1``
    (channel ``j`` is rows ``j, j+c, j+2c, ...``: NHWC flattening).
    """

    path: str
    axis: int
    shape: tuple[int, ...] | None = None


class UnitGroup(NamedTuple):
    """``size`` units pruned together; unit ``j`` is slice ``j`` of every member."""

    name: str
    size: int
    members: tuple[Slice, ...]
    consumers: tuple[Slice, ...]


class Block(NamedTuple):
    """A residual branch: removing it (every leaf zero) leaves the identity path."""

    name: str
    leaves: tuple[str, ...]


class Topology(NamedTuple):
    units: tuple[UnitGroup, ...]
    blocks: tuple[Block, ...]


def _shape_of(flat: Mapping[str, Any], path: str) -> tuple[int, ...]:
    try:
        return tuple(flat[path].shape)
    except KeyError:
        raise ValueError(
            f"params: expected a leaf at {path!r} for this model's units; the params "
            f"have {sorted(flat)[:8]}{' ...' if len(flat) > 8 else ''}"
        ) from None


def _layer(flat, name: str, extra: tuple[str, ...] = ()) -> list[Slice]:
    """A dense or conv layer's unit members: kernel's last axis, its bias, extras."""
    k = _shape_of(flat, f"{name}/kernel")
    out = [Slice(f"{name}/kernel", len(k) - 1)]
    out += [Slice(p, 0) for p in (f"{name}/bias", *extra) if p in flat]
    return out


def _chain(flat, layers: list[str], norms: Mapping[str, str] | None = None) -> list[UnitGroup]:
    """Units of a feed-forward chain: each layer's outputs feed the next layer
    (a conv feeding a dense layer through NHWC flattening, or a global pool)."""
    norms = norms or {}
    groups = []
    for this, nxt in itertools.pairwise(layers):
        k = _shape_of(flat, f"{this}/kernel")
        c = k[-1]
        extra = tuple(f"{norms[this]}/{leaf}" for leaf in ("scale", "bias")) if this in norms else ()
        nk = _shape_of(flat, f"{nxt}/kernel")
        if len(nk) == 4:  # conv -> conv: the input-channel axis
            consumer = Slice(f"{nxt}/kernel", 2)
        elif nk[0] == c:  # dense -> dense, or conv -> global pool -> dense
            consumer = Slice(f"{nxt}/kernel", 0)
        elif nk[0] % c == 0:  # conv -> flatten -> dense
            consumer = Slice(f"{nxt}/kernel", 1, (nk[0] // c, c, nk[1]))
        else:
            raise ValueError(
                f"params: {nxt}/kernel has {nk[0]} inputs, which {this}'s {c} outputs "
                "cannot feed"
            )
        groups.append(UnitGroup(this, c, tuple(_layer(flat, this, extra)), (consumer,)))
    return groups


def _numbered(flat, prefix: str) -> list[str]:
    names = {p.split("/")[0] for p in flat if p.startswith(prefix)}
    return sorted(names, key=lambda n: int(n[len(prefix):]))


def topology(module: nn.Module, params: Any) -> Topology:
    """The unit groups and removable residual blocks of ``module``'s ``params``.

    Args:
      module: one of the linen models of :mod:`lotto_jax.models` (``MLP`` and
        ``LeNet300``, ``MNIST1DMLP``, ``ResMLP``, ``ConvNet``, ``LeNet5``, ``VGG``,
        ``CifarResNet``).
      params: its params (``variables["params"]``), arrays or shape structs.

    Returns:
      A :class:`Topology`.

    Raises:
      ValueError: a model without a known topology, or params that do not match it
        (naming the missing leaf).
    """
    flat = {masks.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    if isinstance(module, MNIST1DMLP):
        if not module.residual:
            return Topology(tuple(_chain(flat, ["Dense_0", "Dense_1", "output"])), ())
        # h = relu(W0 x); h = h + relu(W1 h): the two layers' outputs share the stream
        n = _shape_of(flat, "Dense_0/kernel")[1]
        members = (*_layer(flat, "Dense_0"), *_layer(flat, "Dense_1"))
        consumers = (Slice("Dense_1/kernel", 0), Slice("output/kernel", 0))
        return Topology((UnitGroup("Dense_0+Dense_1", n, members, consumers),), ())
    if isinstance(module, MLP):  # LeNet300 too
        return Topology(tuple(_chain(flat, [*_numbered(flat, "Dense_"), "output"])), ())
    if isinstance(module, ConvNet | LeNet5):
        layers = [*_numbered(flat, "Conv_"), *_numbered(flat, "Dense_"), "output"]
        return Topology(tuple(_chain(flat, layers)), ())
    if isinstance(module, VGG):
        convs = _numbered(flat, "Conv_")
        norms = {c: f"BatchNorm_{c.split('_')[1]}" for c in convs}
        return Topology(tuple(_chain(flat, [*convs, "output"], norms)), ())
    if isinstance(module, ResMLP):
        blocks = _numbered(flat, "block_")
        units = tuple(
            UnitGroup(f"{b}/fc1", _shape_of(flat, f"{b}/fc1/kernel")[1],
                      tuple(_layer(flat, f"{b}/fc1")), (Slice(f"{b}/fc2/kernel", 0),))
            for b in blocks
        )
        return Topology(units, tuple(
            Block(b, tuple(p for p in flat if p.startswith(f"{b}/"))) for b in blocks))
    if isinstance(module, CifarResNet):
        names = sorted({p.split("/")[0] for p in flat if p.startswith("block")})
        units, blocks = [], []
        for b in names:
            units.append(UnitGroup(
                f"{b}/conv1", _shape_of(flat, f"{b}/conv1/kernel")[3],
                tuple(_layer(flat, f"{b}/conv1", (f"{b}/bn1/scale", f"{b}/bn1/bias"))),
                (Slice(f"{b}/conv2/kernel", 2),)))
            if f"{b}/shortcut_conv/kernel" not in flat and _identity_block(module, b):
                blocks.append(Block(b, tuple(
                    p for p in flat if p.startswith(f"{b}/") and "shortcut" not in p)))
        return Topology(tuple(units), tuple(blocks))
    raise ValueError(
        f"model: no unit topology for {type(module).__name__}; structured pruning and "
        "compaction know MLP, LeNet300, MNIST1DMLP, ResMLP, ConvNet, LeNet5, VGG and "
        "CifarResNet"
    )


def _identity_block(module: CifarResNet, name: str) -> bool:
    """Whether block ``block{stage}_{index}`` has an identity shortcut (zero-pad
    blocks that subsample do not: removing their branch leaves the shortcut)."""
    stage, index = (int(v) for v in name[len("block"):].split("_"))
    return not (stage > 0 and index == 0)


def unit_count(topo: Topology) -> int:
    """Units over all groups."""
    return sum(g.size for g in topo.units)


def view(x, s: Slice):
    """``x`` (a leaf) viewed as ``s.shape`` (or its own shape)."""
    return x if s.shape is None else x.reshape(s.shape)


def check_slices(flat: Mapping[str, Any], group: UnitGroup) -> None:
    """Every member and consumer of ``group`` has ``group.size`` entries on its axis."""
    for s in (*group.members, *group.consumers):
        shape = s.shape or _shape_of(flat, s.path)
        if s.shape is not None and math.prod(s.shape) != math.prod(_shape_of(flat, s.path)):
            raise ValueError(f"params: {s.path} cannot be viewed as {s.shape}")
        if shape[s.axis] != group.size:
            raise ValueError(
                f"params: {s.path} has {shape[s.axis]} entries on axis {s.axis}; "
                f"unit group {group.name!r} has {group.size} units"
            )
