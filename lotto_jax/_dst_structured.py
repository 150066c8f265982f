"""Dynamic sparse training over whole units or residual blocks.

:func:`structured_updater` lifts a :mod:`lotto_jax.dst` method from weights to
structure: the method runs on a small *lifted* tree (one entry per unit or block)
and its mask is expanded back to a weight mask (:func:`lotto_jax.structured.expand`,
consumers included; :func:`lotto_jax.structured.remove_blocks` for blocks). Inside
the trainer it is an ordinary :class:`lotto_jax.dst.Updater`: one compile, traced
steps, vmapped replicates.

* ``level="unit"``: the lifted tree is ``{unit group: (size,)}``, a unit's
  "magnitude" the L2 (or L1) norm of its kept kernel slices
  (:func:`lotto_jax.structured.unit_scores`); densities are fractions of units per
  group (``distribution`` acts on these vectors: ERK of a vector is uniform).
  Weights outside every unit group (the output layer, embeddings) stay dense.
* ``level="block"``: the lifted tree is ``{block: (1,)}``, a block's magnitude the
  sum of its kept |θ| (:func:`lotto_jax.structured.block_scores`); all blocks form
  one group, the density is the fraction of blocks kept.

Only the methods that never grow are lifted: ``static`` (random units / blocks) and
``gmp`` (gradual magnitude pruning of units / blocks). A grown unit would start
with every weight at 0 (the trainer zeroes grown weights and their moments, as
RigL does), so with ReLU its incoming weights, bias and outgoing weights all get a
zero gradient and it never trains; SET, RigL and GraNet need a nonzero regrowth
initialisation to act on units, which is not built.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lotto_jax import dst, masks
from lotto_jax._layer_blocks import _drop_blocks, block_scores, kept_blocks
from lotto_jax._topology import Topology
from lotto_jax._units import NORMS, expand, unit_scores, units_of

__all__ = ["LEVELS", "METHODS", "check_method", "structured_updater"]

LEVELS: tuple[str, ...] = ("unit", "block")
"""What :func:`structured_updater` moves: whole units or whole residual blocks."""

METHODS: tuple[str, ...] = ("static", "gmp")
"""The :mod:`lotto_jax.dst` methods that can be lifted (they never grow)."""


def check_method(method: str) -> None:
    """Refuses a method that cannot be lifted, saying why.

    Raises:
      ValueError: naming ``method``.
    """
    if method not in METHODS:
        grows = method in ("set", "rigl", "granet")
        why = (" (a grown unit starts with all of its weights at 0 and never gets a "
               "gradient; see lotto_jax._dst_structured)") if grows else ""
        raise ValueError(f"method: structured DST supports {list(METHODS)}, got "
                         f"{method!r}{why}")


def _all_blocks(path) -> str:
    return "blocks"


def structured_updater(method: str, density: float, *, topology: Topology,
                       level: str = "unit", norm: str = "l2", **kwargs: Any) -> dst.Updater:
    """A DST updater whose mask keeps or removes whole units or blocks.

    Args:
      method: ``"static"`` or ``"gmp"`` (see :data:`METHODS` and the module docs
        for why the growing methods are refused).
      density: the fraction of units (per group, under ``distribution``) or of
        blocks kept at the end, in (0, 1].
      topology: the model's topology
        (:func:`lotto_jax.structured.topology_for`).
      level: ``"unit"`` or ``"block"``.
      norm: the unit magnitude, ``"l2"`` or ``"l1"`` (``level="unit"`` only).
      **kwargs: the method's other arguments (:func:`lotto_jax.dst.gmp`: ``end``,
        ``start``, ``update_every``, ``initial_density``, ``scope``,
        ``distribution``; :func:`lotto_jax.dst.static`: ``distribution``). With
        ``level="block"`` every block is in one group (``scope`` and
        ``distribution`` do not apply).

    Returns:
      The :class:`lotto_jax.dst.Updater` (name ``"<method>_<level>"``).

    Raises:
      ValueError: naming ``method``, ``level``, ``norm``, ``topology`` (no units or
        blocks) or the method's own argument.

    Examples:
      >>> import jax
      >>> from lotto_jax import models, structured
      >>> m = models.build("mlp", features=(8, 8), num_classes=2)
      >>> p = models.init(m, jax.random.key(0), (4,))["params"]
      >>> u = structured_updater("gmp", 0.25, topology=structured.topology_for(
      ...     "neuron", m, p), end=100, update_every=50)
      >>> mask = u.initial_mask(p, jax.random.key(1))
      >>> new, _ = u.update(p, mask, None, 100, u.init(p, jax.random.key(1)))
      >>> new["Dense_0"]["kernel"].any(axis=0).sum().item(), new["Dense_0"]["bias"].sum().item()
      (2, 2)
    """
    check_method(method)
    if level not in LEVELS:
        raise ValueError(f"level: expected one of {list(LEVELS)}, got {level!r}")
    if norm not in NORMS or norm == "sum":
        raise ValueError(f"norm: expected 'l2' or 'l1', got {norm!r}")
    if level == "unit" and not topology.units:
        raise ValueError("topology: the model has no unit groups to prune")
    if level == "block":
        if not topology.blocks:
            raise ValueError("topology: the model has no removable residual blocks")
        for k in ("scope", "distribution", "groups", "prunable", "overrides"):
            if k in kwargs:
                raise ValueError(f"{k}: does not apply to level='block' (all blocks are "
                                 "one group)")
        kwargs = dict(kwargs, groups=_all_blocks, distribution="uniform")
    make = dst.gmp if method == "gmp" else dst.static
    inner = make(density, prunable=masks.all_leaves, **kwargs)
    lift, unlift = _unit_maps(topology, norm) if level == "unit" else _block_maps(topology)

    what = "unit" if level == "unit" else "block"

    def init(params, key):
        try:
            return inner.init(lift(params, masks.init(params)), key)
        except ValueError as e:  # the weight-level check, told in units or blocks
            raise ValueError(str(e).replace(" weights)", f" {what}s)")
                             .replace("keep no weight", f"keep no {what}")) from None

    def initial_mask(params, key):
        return unlift(inner.initial_mask(lift(params, masks.init(params)), key), params)

    def update(params, mask, grads, step, state):
        del grads  # the lifted methods never grow
        new, state = inner.update(lift(params, mask), lifted_mask(mask), None, step, state)
        return unlift(new, params), state

    def lifted_mask(mask):
        if level == "unit":
            return units_of(mask, topology)
        return {b: k[None] for b, k in kept_blocks(mask, topology).items()}

    return dst.Updater(init=init, update=update, fires=inner.fires,
                       initial_mask=initial_mask, name=f"{method}_{level}",
                       end=inner.end, uses_grads=False)


def _unit_maps(topology: Topology, norm: str):
    def lift(params, mask):
        return unit_scores(jax.tree.map(jnp.abs, params), mask, topology, norm=norm)

    def unlift(unit_mask, params):
        return expand(unit_mask, masks.init(params, masks.all_leaves), topology)

    return lift, unlift


def _block_maps(topology: Topology):
    def lift(params, mask):
        kept = jax.tree.map(lambda p, k: jnp.where(k, jnp.abs(p), 0), params, mask)
        return {b: s[None] for b, s in block_scores(kept, topology).items()}

    def unlift(block_mask, params):
        keep = {b: k[0] for b, k in block_mask.items()}
        return _drop_blocks(masks.init(params, masks.all_leaves), topology, keep)

    return lift, unlift
