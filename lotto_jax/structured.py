"""Structured pruning: whole neurons, conv channels and residual blocks.

A *unit* is one output neuron of a dense layer or one output channel of a conv
layer; the weights that produce it (kernel slice, bias, normalisation scale and
offset) and the next layers' input slices that read it are listed by the model's
:func:`lotto_jax._topology.topology` (unit groups; :class:`~lotto_jax._topology.Topology`).
A *block* is a residual branch that can be removed whole: the block becomes the
identity (ResMLP's ``block_i``, ResNet's identity blocks).

Masks stay ordinary weight masks (shaped like all params), so training, IMP and PaI
run unchanged: a unit mask ``{group: bool (size,)}`` is scored
(:func:`unit_scores`), selected with the exact counts and position tie-breaks of
:mod:`lotto_jax.prune` and expanded (:func:`expand`) to a weight mask in which every
member slice of a removed unit is ``False`` (its bias and normalisation scale and
offset too: :func:`lotto_jax.masks.apply` then zeroes them, so the unit outputs exactly
0, not ``relu(b)``) and, by default, its consumers' input slices as well.

:func:`parse` reads the ``--structure`` flag of ``lotto imp`` / ``lotto pai``;
:func:`prune_fraction` and :func:`prune_density` dispatch a structure to the pruning
rule (weights: :mod:`lotto_jax.prune`; neurons / channels: :func:`by_fraction`,
:func:`to_density`; layers: :func:`prune_blocks`). Everything is pure ``jnp`` over
static topologies: it runs under ``jit`` and ``vmap``; checks that need values (a
group emptied, non-finite scores) run only on concrete inputs.

References:
  Li et al. 2017, "Pruning Filters for Efficient ConvNets", arXiv:1608.08710 (filter
  norms); Jordao et al. 2023, "When Layers Play the Lottery, all Tickets Win at
  Initialization", arXiv:2301.10835 (layer pruning).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp

from lotto_jax import masks, prune
from lotto_jax._layer_blocks import (
    block_scores,
    kept_blocks,
    prune_blocks,
    remove_blocks,
)
from lotto_jax._topology import Topology, topology
from lotto_jax._types import Groups, Mask, Prunable, Scores
from lotto_jax._units import (
    NORMS,
    _flat,
    by_fraction,
    empty_groups,
    expand,
    to_density,
    unit_scores,
    units_of,
)

__all__ = [
    "NORMS",
    "STRUCTURES",
    "Structure",
    "block_scores",
    "by_fraction",
    "dst_updater",
    "empty_groups",
    "expand",
    "kept_blocks",
    "parse",
    "prune_blocks",
    "prune_density",
    "prune_fraction",
    "remove_blocks",
    "to_density",
    "topology_for",
    "unit_scores",
    "units_of",
]

STRUCTURES: tuple[str, ...] = ("weight", "neuron", "channel", "layer")
"""The named structures of :func:`parse` (besides ``"N:M"`` strings)."""


class Structure(NamedTuple):
    """A parsed ``--structure``: ``kind`` is one of :data:`STRUCTURES` or ``"nm"``
    (then ``n`` of every ``m`` consecutive weights are kept)."""

    kind: str
    n: int = 0
    m: int = 0


def parse(structure: str | Structure) -> Structure:
    """Parses a structure name.

    ``"weight"``: unstructured (:mod:`lotto_jax.prune`). ``"neuron"``: whole units of
    every unit group (dense neurons and conv channels alike). ``"channel"``: the same
    unit groups, for a model with conv layers (:func:`topology_for` refuses it on a
    model without any, where ``"neuron"`` is meant). ``"layer"``: whole residual
    blocks. ``"N:M"`` (``"2:4"``): N kept of every M consecutive weights
    (:mod:`lotto_jax._nm`; ``0 < N < M``).

    Args:
      structure: the name, or an already parsed :class:`Structure`.

    Returns:
      The :class:`Structure`.

    Raises:
      ValueError: naming ``structure`` and what is accepted.

    Examples:
      >>> parse("neuron"), parse("2:4")
      (Structure(kind='neuron', n=0, m=0), Structure(kind='nm', n=2, m=4))
    """
    if isinstance(structure, Structure):
        return structure
    if structure in STRUCTURES:
        return Structure(structure)
    hit = re.fullmatch(r"(\d+):(\d+)", structure) if isinstance(structure, str) else None
    if hit and 0 < int(hit[1]) < int(hit[2]):
        return Structure("nm", int(hit[1]), int(hit[2]))
    why = f" (N:M needs 0 < N < M, got N={hit[1]}, M={hit[2]})" if hit else ""
    raise ValueError(
        "structure: expected 'weight', 'neuron', 'channel', 'layer' or 'N:M' like "
        f"'2:4', got {structure!r}{why}"
    )


# ----------------------------------------------------------------------------------
# the dispatch used by the commands


def topology_for(structure: str | Structure, module: Any, params: Any) -> Topology | None:
    """The topology a structure prunes with (``None`` for weights and N:M), checked
    to fit: ``"channel"`` needs a conv layer, ``"layer"`` removable blocks.

    Args:
      structure: a name for :func:`parse`.
      module: the linen model (:func:`lotto_jax.models.build`).
      params: its params (arrays or shape structs; one replicate).

    Returns:
      The :class:`~lotto_jax._topology.Topology` (static, hashable data: close over
      it or pass it as a static argument under ``jit``), or ``None``.

    Raises:
      ValueError: naming ``structure`` (or ``model``, for an unknown topology).

    Examples:
      >>> import jax
      >>> from lotto_jax import models
      >>> m = models.build("resmlp", blocks=2, width=4, hidden=3)
      >>> topo = topology_for("layer", m, models.init(m, jax.random.key(0), (5,))["params"])
      >>> [g.name for g in topo.units], [b.name for b in topo.blocks]
      (['block_0/fc1', 'block_1/fc1'], ['block_0', 'block_1'])
    """
    st = parse(structure)
    if st.kind in ("weight", "nm"):
        return None
    topo = topology(module, params)
    flat = _flat(params)
    name = type(module).__name__
    if st.kind == "channel" and not any(
            jnp.ndim(flat[s.path]) == 4 for g in topo.units for s in g.members):
        raise ValueError(f"structure: 'channel' prunes conv channels; {name} has no conv "
                         "layer (use 'neuron')")
    if st.kind == "layer" and not topo.blocks:
        raise ValueError(f"structure: 'layer' removes residual blocks; {name} has none "
                         "(use a residual model: resmlp, resnet20)")
    if st.kind in ("neuron", "channel") and not topo.units:
        raise ValueError(f"structure: {st.kind!r}: {name} has no prunable units")
    return topo


def _nm():
    try:
        from lotto_jax import _nm
    except ImportError:  # pragma: no cover - until N:M lands
        raise ValueError("structure: N:M sparsity is not available in this version") from None
    return _nm


def prune_fraction(
    structure: str | Structure, scores: Scores, mask: Mask, fraction: float, *,
    topology: Topology | None = None, scope: str = "layerwise", groups: Groups = "leaf",
    layer_fractions: Mapping[str, float] | None = None,
    prunable: Prunable = masks.default_prunable, norm: str = "l2",
) -> Mask:
    """One IMP step under a structure: ``"weight"`` is :func:`lotto_jax.prune.by_fraction`
    (``scope``, ``groups``, ``layer_fractions``, ``prunable``); ``"neuron"`` /
    ``"channel"`` :func:`by_fraction` (``scope``, ``norm``; the output layer has no
    units, so ``layer_fractions`` does not apply); ``"layer"``
    :func:`prune_blocks` with ``fraction``; ``"N:M"`` the N:M rule
    (:mod:`lotto_jax._nm`, on ``prunable`` leaves).

    Raises:
      ValueError: as the rule it dispatches to; a structure that needs a topology
        called without one.
    """
    st = parse(structure)
    if st.kind == "weight":
        return prune.by_fraction(scores, mask, fraction, scope=scope, groups=groups,
                                 layer_fractions=dict(layer_fractions or {}),
                                 prunable=prunable)
    if st.kind == "nm":
        return _nm().by_fraction(scores, mask, fraction, n=st.n, m=st.m, prunable=prunable)
    if topology is None:
        raise ValueError(f"topology: structure {st.kind!r} needs the model's topology")
    if st.kind == "layer":
        return prune_blocks(scores, mask, topology, fraction=fraction)
    return by_fraction(scores, mask, fraction, topology=topology, scope=scope, norm=norm)


def prune_density(
    structure: str | Structure, scores: Scores, mask: Mask, density: float, *,
    topology: Topology | None = None, scope: str = "layerwise",
    prunable: Prunable = masks.default_prunable, norm: str = "sum",
) -> Mask:
    """One-shot pruning to ``density`` under a structure (pruning at init): weights
    (:func:`lotto_jax.prune.to_density`), units (:func:`to_density`, unit density),
    blocks (:func:`prune_blocks` with ``density``: the fraction of blocks kept) or
    N:M (:mod:`lotto_jax._nm`). ``norm="sum"`` sums any saliency per unit.

    Raises:
      ValueError: as the rule it dispatches to.
    """
    st = parse(structure)
    if st.kind == "weight":
        return prune.to_density(scores, mask, density, scope=scope, prunable=prunable)
    if st.kind == "nm":
        return _nm().to_density(scores, mask, density, n=st.n, m=st.m, prunable=prunable)
    if topology is None:
        raise ValueError(f"topology: structure {st.kind!r} needs the model's topology")
    if st.kind == "layer":
        return prune_blocks(scores, mask, topology, density=density)
    return to_density(scores, mask, density, topology=topology, scope=scope, norm=norm)


def dst_updater(structure: str | Structure, method: str, density: float | None = None, *,
                topology: Topology | None = None, **kwargs: Any):
    """The :class:`lotto_jax.dst.Updater` of a DST ``method`` under a structure.

    * ``"weight"``: :func:`lotto_jax.dst.make` (every method; ``density`` required).
    * ``"neuron"`` / ``"channel"`` / ``"layer"``: ``static`` or ``gmp`` over whole
      units or blocks (:func:`lotto_jax._dst_structured.structured_updater`;
      ``density`` = the fraction of units per group, or of blocks, kept). The
      growing methods are refused: a grown unit starts at 0 and never trains.
    * ``"N:M"``: ``static`` (a random N:M mask), ``set`` or ``rigl`` exchanging
      weights inside every group (:func:`lotto_jax._nm.nm_set`,
      :func:`lotto_jax._nm.nm_rigl`); the density is ``N / M`` (``density`` must be
      ``None`` or equal to it); ``gmp`` and ``granet`` change the density and are
      refused.

    Args:
      structure: a name for :func:`parse`.
      method: a key of :data:`lotto_jax.dst.METHODS`.
      density: the target density (see above).
      topology: the model's topology (:func:`topology_for`), for units and blocks.
      **kwargs: the method's other arguments (``end``, ``update_every``,
        ``drop_fraction``, ``start``, ``initial_density``, ``scope``,
        ``distribution``, ``prunable`` ...), as the chosen builder takes them.

    Returns:
      The updater, for :func:`lotto_jax.train.make_trainer`'s ``updater=``.

    Raises:
      ValueError: naming ``structure``, ``method``, ``density``, ``topology`` or a
        builder's argument.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> u = dst_updater("2:4", "rigl", end=100, update_every=10)
      >>> k = u.initial_mask({"w": jnp.ones((8, 3))}, jax.random.key(0))
      >>> u.name, int(k["w"].sum())
      ('nm_rigl', 12)
    """
    from lotto_jax import dst

    st = parse(structure)
    if method not in dst.METHODS:
        raise ValueError(f"method: expected one of {list(dst.METHODS)}, got {method!r}")
    if st.kind == "weight":
        if density is None:
            raise ValueError("density: the weight structure needs a target density")
        return dst.make(method, density=density, **kwargs)
    if st.kind == "nm":
        return _nm_updater(st, method, density, kwargs)
    from lotto_jax._dst_structured import check_method, structured_updater

    check_method(method)  # the reason, before the topology is asked for
    if topology is None:
        raise ValueError(f"topology: structure {st.kind!r} needs the model's topology")
    if density is None:
        raise ValueError(f"density: structure {st.kind!r} needs a target density")

    level = "block" if st.kind == "layer" else "unit"
    return structured_updater(method, density, topology=topology, level=level, **kwargs)


def _nm_updater(st: Structure, method: str, density, kwargs):
    nm = _nm()
    if density is not None and abs(density - st.n / st.m) > 1e-9:
        raise ValueError(f"density: the {st.n}:{st.m} mask keeps {st.n}/{st.m} = "
                         f"{st.n / st.m:g} of the weights; got density={density!r} (omit it)")
    if method == "static":
        return nm.nm_static(st.n, st.m, **kwargs)
    if method in ("set", "rigl"):
        return (nm.nm_set if method == "set" else nm.nm_rigl)(st.n, st.m, **kwargs)
    raise ValueError(f"method: {method!r} changes the density, which N:M fixes at "
                     f"{st.n}/{st.m}; use static, set or rigl")
