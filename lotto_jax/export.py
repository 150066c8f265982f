"""A masked network as a smaller dense network, or as sparse matrices for inference.

Masks on dense weights run at dense speed. Two ways to real speed:

* :func:`compact`: delete every unit (neuron, channel, residual block) that the mask
  made useless and return a smaller *dense* network, the same model class with
  smaller widths, whose outputs equal the masked network's. Structured tickets
  (whole units pruned) shrink most; unstructured tickets lose the units that
  pruning left dead.
* :func:`to_sparse` / :func:`to_bcoo` and :func:`sparse_apply`: the kept weights of
  every dense kernel as a sparse matrix, and the forward pass of the MLPs over them.

Which sparse format is fastest: :data:`DEFAULT_FORMAT` (the figures there). What it
all buys in time, and where it buys nothing (batch 1 on CPU is bound by the cost of
a call, not by arithmetic): BENCHMARKS.md, ``benchmarks/inference.py``.

Everything here is pure (no I/O); compaction works on host copies (numpy) since
it decides shapes.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import _topology, masks
from lotto_jax._export_sparse import (
    DEFAULT_FORMAT,
    FORMATS,
    GatherKernel,
    sparse_apply,
    to_bcoo,
    to_sparse,
)
from lotto_jax._types import Mask, Params
from lotto_jax.models import MLP, MNIST1DMLP, VGG, ConvNet, LeNet5, ResMLP

__all__ = [
    "DEFAULT_FORMAT",
    "FORMATS",
    "Compacted",
    "GatherKernel",
    "compact",
    "sparse_apply",
    "to_bcoo",
    "to_sparse",
]

_COMPACTABLE = (MLP, MNIST1DMLP, ResMLP, ConvNet, LeNet5, VGG)
_BN_EPS = 1e-5  # VGG's BatchNorm epsilon


class Compacted(NamedTuple):
    """A compacted network (:func:`compact`).

    Attributes:
      module: the smaller model (same class with smaller widths; see :func:`compact`).
      params: its dense params (nested dicts).
      model_state: its other collections (VGG's ``batch_stats``; else ``{}``).
      report: units and parameters before and after (:func:`compact`).
    """

    module: nn.Module
    params: Params
    model_state: dict[str, Any]
    report: dict[str, Any]


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, x in flat.items():
        *heads, last = path.split("/")
        d = out
        for h in heads:
            d = d.setdefault(h, {})
        d[last] = x
    return out


def _flat(tree: Any) -> dict[str, Any]:
    return {masks.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _rows(flat: dict[str, np.ndarray], s: _topology.Slice) -> np.ndarray:
    """The leaf of ``s`` with the unit axis first, one row per unit."""
    x = np.moveaxis(_topology.view(flat[s.path], s), s.axis, 0)
    return x.reshape(x.shape[0], -1)


def _bias_of(path: str) -> str:
    return path.rsplit("/", 1)[0] + "/bias"


def _classify(flat, g: _topology.UnitGroup, stats):
    """``(dead_out, constant, values, foldable)`` per unit of group ``g``.

    ``dead_out``: every consumer slice is zero (the unit is read by nothing).
    ``constant``: every member kernel slice is zero, so the unit outputs a
    constant: ``values[i]`` is what consumer ``i`` reads, ``relu`` of the biases of
    the member layers before it (a tied stream: MNIST-1D's ``Dense_1`` reads
    ``relu(b0)``, ``output`` reads ``relu(b0) + relu(b1)``). A BatchNorm member (VGG;
    inference mode, ``stats`` its running mean and variance) makes a unit constant
    also when its scale is 0. ``foldable``: every
    consumer is a dense kernel (a constant input folds exactly into its bias; a
    conv's zero padding makes that inexact).
    """
    live_out = np.zeros(g.size, bool)
    for s in g.consumers:
        live_out |= (_rows(flat, s) != 0).any(1)
    live_in = np.zeros(g.size, bool)
    layers = []  # (layer, bias) of the member layers, in order
    for s in g.members:
        if s.path.endswith("/kernel"):
            live_in |= (_rows(flat, s) != 0).any(1)
            bias = flat.get(_bias_of(s.path))
            layers.append((s.path.rsplit("/", 1)[0], np.zeros(g.size) if bias is None
                           else np.asarray(bias, np.float64)))
    norms = [s.path[: -len("/scale")] for s in g.members if s.path.endswith("/scale")]
    constant = ~live_in
    if norms:  # conv -> BatchNorm -> relu: its output when constant
        (norm,), ((layer, z),) = norms, layers
        scale, beta = (np.asarray(flat[f"{norm}/{k}"], np.float64) for k in ("scale", "bias"))
        mean, var = (np.asarray(stats[f"{norm}/{k}"], np.float64) for k in ("mean", "var"))
        constant |= scale == 0
        layers = [(layer, np.where(scale == 0, beta,
                                   (z - mean) * scale / np.sqrt(var + _BN_EPS) + beta))]
    layers = [(name, np.maximum(b, 0.0)) for name, b in layers]
    values = []
    for s in g.consumers:
        names = [name for name, _ in layers]
        layer = s.path.rsplit("/", 1)[0]
        before = layers[: names.index(layer)] if layer in names else layers
        values.append(sum((v for _, v in before), np.zeros(g.size)))
    foldable = all(
        flat[s.path].ndim == 2 and _bias_of(s.path) in flat for s in g.consumers
    )
    return ~live_out, constant, np.stack(values), foldable


def _remove(flat, stats, g: _topology.UnitGroup, idx: np.ndarray, values: np.ndarray) -> None:
    """Folds the constants ``values[i, idx]`` into consumer ``i``'s bias, then
    deletes units ``idx`` from every member and consumer of ``g`` (in place)."""
    for s, value in zip(g.consumers, values, strict=True):
        if not np.any(value[idx]):
            continue
        rows = np.moveaxis(_topology.view(flat[s.path], s), s.axis, 0)[idx]
        rows = rows.reshape(len(idx), -1, rows.shape[-1]).sum(1)  # (units, out)
        bias = _bias_of(s.path)
        flat[bias] = (flat[bias] + value[idx] @ rows.astype(np.float64)).astype(
            flat[bias].dtype)
    for s in (*g.members, *g.consumers):
        x = np.delete(_topology.view(flat[s.path], s), idx, axis=s.axis)
        flat[s.path] = x if s.shape is None else x.reshape(-1, x.shape[-1])
        if s.path.endswith("/scale"):  # a BatchNorm's running statistics go with it
            for k in ("mean", "var"):
                key = s.path.replace("/scale", f"/{k}")
                stats[key] = np.delete(stats[key], idx)


def _block_is_zero(flat, block: str) -> bool:
    """Whether a ResMLP block's branch is exactly 0: ``fc2``'s kernel and bias are."""
    return all(not np.any(flat[f"{block}/fc2/{leaf}"]) for leaf in ("kernel", "bias"))


def _count(flat) -> int:
    return sum(math.prod(x.shape) for x in flat.values())


def _layer_counts(flat) -> dict[str, int]:
    out: dict[str, int] = {}
    for path, x in flat.items():
        layer = path.rsplit("/", 1)[0]
        out[layer] = out.get(layer, 0) + math.prod(x.shape)
    return out


def _rebuild(module: nn.Module, flat) -> tuple[nn.Module, dict[str, Any]]:
    """The smaller module for ``flat``'s shapes, and ``flat`` renumbered for it."""
    width = lambda name: int(flat[f"{name}/kernel"].shape[-1])  # noqa: E731
    if isinstance(module, MNIST1DMLP):
        if module.residual:
            return module.clone(hidden=width("Dense_0")), flat
        return MLP(features=(width("Dense_0"), width("Dense_1")),
                   num_classes=module.num_classes), flat
    if isinstance(module, MLP):
        return module.clone(features=tuple(
            width(f"Dense_{i}") for i in range(len(module.features)))), flat
    if isinstance(module, ResMLP):
        blocks = _topology._numbered(flat, "block_")
        renamed = {}
        for path, x in flat.items():
            head, _, rest = path.partition("/")
            if head in blocks:
                head = f"block_{blocks.index(head)}"
            renamed[f"{head}/{rest}"] = x
        hiddens = tuple(width(f"{b}/fc1") for b in blocks)
        return module.clone(blocks=len(blocks), hiddens=hiddens), renamed
    if isinstance(module, ConvNet):
        convs = iter(width(c) for c in _topology._numbered(flat, "Conv_"))
        plan = tuple(s if s == "M" else next(convs) for s in module.plan)
        dense = tuple(width(f"Dense_{j}") for j in range(len(module.dense)))
        return module.clone(plan=plan, dense=dense), flat
    if isinstance(module, VGG):
        convs = iter(width(c) for c in _topology._numbered(flat, "Conv_"))
        return module.clone(plan=tuple(s if s == "M" else next(convs)
                                       for s in module.plan)), flat
    # LeNet5
    return module.clone(widths=tuple(width(n) for n in
                                     ("Conv_0", "Conv_1", "Dense_0", "Dense_1"))), flat


def compact(
    module: nn.Module, params: Params, mask: Mask, *, model_state: Any = None
) -> Compacted:
    """A smaller dense network with the outputs of the masked one.

    The masked network is ``module.apply({"params": masks.apply(params, mask)}, x)``.
    Its units (:func:`lotto_jax._topology.topology`: neurons, channels; ResMLP's
    residual blocks) are removed, repeatedly until none is left to remove, when:

    * **nothing reads them**: every consumer slice (the next layers' input weights
      from the unit) is zero;
    * **they are constant**: every incoming kernel slice is zero, so the unit
      outputs ``relu(bias)``. When every consumer is a dense kernel the constant
      folds exactly into the consumer's bias (``c_j W[j, :]``, summed over the
      rows a flattened channel feeds); a conv consumer's zero padding makes a
      fold inexact, so such a unit goes only when its constant is exactly 0;
    * **a residual block adds 0** (ResMLP): its ``fc2`` kernel and bias are zero
      (e.g. every leaf pruned). The block is deleted and the rest renumbered.

    At least one unit of every group and one block stay (a layer of width 0 is not
    a network), as they are in the masked network.

    The new module is the same class with smaller widths: ``MLP`` / ``LeNet300``
    (``features``), the residual ``MNIST1DMLP`` (``hidden``: both layers write one
    stream), ``ResMLP`` (``blocks`` and per-block ``hiddens``), ``ConvNet``
    (``plan`` and ``dense``), ``LeNet5`` (``widths``), ``VGG`` (``plan``; its
    ``batch_stats`` sliced too; equal outputs in inference mode, ``train=False``).
    A non-residual ``MNIST1DMLP`` becomes the equal ``MLP(features=(h0, h1))`` (its
    two layers may now differ in width). CifarResNet is not covered.

    Args:
      module: the model (unbound).
      params: its params; may hold nonzero values where ``mask`` is False.
      mask: a boolean pytree like ``params``.
      model_state: the model's other collections: VGG's ``{"batch_stats": ...}``;
        ``None`` or ``{}`` for the others.

    Returns:
      A :class:`Compacted`. Its ``report`` holds ``params_before`` (every entry of
      ``params``), ``kept_before`` (the mask's True entries), ``params_after``,
      ``units_before`` / ``units_after`` (over all groups), ``groups`` (per unit
      group of the original network: ``units_before``, ``units_after`` and
      ``kept``, the original indices of the kept units), ``layers`` (per layer:
      ``params_before``, ``params_after``; 0 after for a deleted block) and
      ``blocks_before``, ``blocks_after``, ``removed_blocks`` (ResMLP).

    Raises:
      ValueError: a model compaction does not cover, a mask that does not fit the
        params, params that do not match the model (naming the leaf), or a
        non-empty ``model_state``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from lotto_jax import masks, models
      >>> model = models.MLP(features=(4,), num_classes=2)
      >>> params = model.init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
      >>> mask = masks.init(params)
      >>> mask["output"]["kernel"] = mask["output"]["kernel"].at[1:].set(False)
      >>> c = compact(model, params, mask)
      >>> c.module.features, c.report["params_before"], c.report["params_after"]
      ((1,), 26, 8)
      >>> x = jnp.ones((2, 3))
      >>> bool(jnp.allclose(c.module.apply({"params": c.params}, x),
      ...                   model.apply({"params": masks.apply(params, mask)}, x)))
      True
    """
    if not isinstance(module, _COMPACTABLE):
        raise ValueError(
            f"model: compact covers MLP, LeNet300, MNIST1DMLP, ResMLP, ConvNet, "
            f"LeNet5 and VGG, not {type(module).__name__}"
        )
    stats = {k: np.asarray(v) for k, v in _flat((model_state or {}).get(
        "batch_stats", {})).items()}
    if isinstance(module, VGG) != bool(model_state) or (
            model_state and set(model_state) != {"batch_stats"}):
        raise ValueError(
            f"model_state: expected {{'batch_stats': ...}} for VGG and None or empty "
            f"for the others; got {sorted(model_state or {})} for "
            f"{type(module).__name__}"
        )
    masks.validate(params, mask, name="mask")
    flat = {k: np.where(np.asarray(m), np.asarray(v), np.zeros((), np.asarray(v).dtype))
            for (k, v), m in zip(_flat(params).items(), _flat(mask).values(), strict=True)}
    topo = _topology.topology(module, _nest(flat))
    for g in topo.units:
        _topology.check_slices(flat, g)
    layers_before = _layer_counts(flat)
    params_before = _count(flat)
    kept = {g.name: np.arange(g.size) for g in topo.units}
    removed_blocks: list[str] = []
    changed = True
    while changed:
        changed = False
        topo = _topology.topology(module, _nest(flat))
        left = len(topo.blocks)
        for b in topo.blocks:
            if left > 1 and _block_is_zero(flat, b.name):
                left -= 1
                removed_blocks.append(b.name)
                flat = {p: x for p, x in flat.items() if not p.startswith(b.name + "/")}
                kept.pop(f"{b.name}/fc1", None)
                changed = True
        for name in [g.name for g in _topology.topology(module, _nest(flat)).units]:
            (g,) = [u for u in _topology.topology(module, _nest(flat)).units
                    if u.name == name]
            dead_out, constant, values, foldable = _classify(flat, g, stats)
            gone = dead_out | (constant & ((values == 0).all(0) | foldable))
            if gone.all():
                gone[0] = False  # one unit stays: what it computes is unchanged
            if gone.any():
                idx = np.flatnonzero(gone)
                fold = np.where(dead_out, 0.0, values)  # a unit read by nothing: no fold
                _remove(flat, stats, g, idx, fold)
                kept[name] = np.delete(kept[name], idx)
                changed = True
    new_module, new_flat = _rebuild(module, flat)
    layers_after = _layer_counts(flat)
    sizes = _group_sizes(module, params)
    blocks_before = len(_topology.topology(module, _nest(
        {k: np.asarray(v) for k, v in _flat(params).items()})).blocks)
    report = {
        "model": type(module).__name__,
        "params_before": params_before,
        "kept_before": int(sum(int(np.sum(m)) for m in jax.tree.leaves(mask))),
        "params_after": _count(flat),
        "units_before": sum(sizes.values()),
        "units_after": sum(len(k) for k in kept.values()),
        "groups": {
            g: {"units_before": n, "units_after": len(kept.get(g, ())),
                "kept": [int(i) for i in kept.get(g, ())]}
            for g, n in sizes.items()
        },
        "layers": {
            layer: {"params_before": n, "params_after": layers_after.get(layer, 0)}
            for layer, n in layers_before.items()
        },
        "blocks_before": blocks_before,
        "blocks_after": blocks_before - len(removed_blocks),
        "removed_blocks": removed_blocks,
    }
    state = {"batch_stats": jax.tree.map(jnp.asarray, _nest(stats))} if stats else {}
    return Compacted(new_module, jax.tree.map(jnp.asarray, _nest(new_flat)), state, report)


def _group_sizes(module: nn.Module, params: Params) -> dict[str, int]:
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.float32), params)
    return {g.name: g.size for g in _topology.topology(module, shapes).units}
