"""Dynamic sparse training: masks that change inside the compiled training loop.

A method is an :class:`Updater`, an optax-style pair of pure functions plus a
schedule:

* ``init(params, key) -> state``: the updater's state (its key and an int32 update
  count); ``initial_mask(params, key) -> mask``: the mask the method starts from;
* ``update(params, mask, grads, step, state) -> (mask, state)``: the new mask after
  ``step`` completed training steps, from the weights, the current mask and the
  gradient on the batch of the step just taken, at the weights after it (the dense
  gradient: pruned weights are 0 in the forward pass, their gradient is not
  masked; ``None`` for updaters with ``uses_grads=False``);
* ``fires(step) -> bool``: whether an update follows the ``step``-th training step.
  It depends on the step alone, so the trainer's ``lax.cond`` stays a branch under
  ``vmap`` (one update costs one update, not one per step).

:func:`lotto_jax.train.make_trainer` takes ``updater=``: the mask then lives in the
training state (``state.dst``, a :class:`DstState`), every step runs under it, and
after each firing step the trainer calls ``update`` inside the same ``lax.scan``. At
every mask change the weights and optimizer moments that were dropped *or grown* are
set to 0 (a grown weight starts at 0 with zero moments, as in RigL's code; a weight
dropped and grown back in one update never changed and keeps its value). One compile
serves the whole run, whatever the number of updates; replicates are vmapped.

The methods (densities per group from ``distribution`` and ``overrides``, see
:func:`group_densities`; ``groups`` pools leaves as in :mod:`lotto_jax.prune`):

* :func:`static`: a random mask at the target density, never updated (baseline).
* :func:`gmp`: gradual magnitude pruning from dense (Zhu & Gupta 2017): density
  :func:`gmp_density` every ``update_every`` steps from ``start`` to ``end``.
* :func:`set`: drop a fraction of the smallest-|θ| weights, grow as many uniformly
  at random (Mocanu et al. 2018).
* :func:`rigl`: drop by |θ|, grow by |gradient|, the fraction decaying with
  :func:`cosine_fraction` to 0 at ``end`` (Evci et al. 2020).
* :func:`granet`: gradual magnitude pruning (global by default) from an initial
  density, plus zero-cost neuroregeneration at every update (Liu et al. 2021).

Differences from the reference code, all deliberate and small: the update follows
the optimizer step of its step (RigL's code skips that step's weight update); counts
are rounded half up (GraNet drops ``ceil``); ties are broken by position instead of
RigL's N(0, 1e-5) noise; SET drops by |θ| over both signs at once (the Keras code
takes quantiles of each sign separately).

Examples:
  >>> import jax, jax.numpy as jnp
  >>> u = rigl(0.5, update_every=10, end=100)
  >>> params = {"w": jnp.ones((4, 4))}
  >>> m = u.initial_mask(params, jax.random.key(0))
  >>> int(m["w"].sum()), bool(u.fires(10)), bool(u.fires(11))
  (8, True, False)
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lotto_jax import masks
from lotto_jax._dst_blocks import (
    DISTRIBUTIONS,
    _check_range,
    cosine_fraction,
    drop_and_grow,
    gmp_density,
    group_densities,
    group_sizes,
    keep_counts,
    prune_to,
    random_mask,
)
from lotto_jax._types import Groups, Mask, Params, PRNGKey, Prunable

__all__ = [
    "DISTRIBUTIONS",
    "METHODS",
    "DstState",
    "Updater",
    "UpdaterState",
    "cosine_fraction",
    "drop_and_grow",
    "gmp",
    "gmp_density",
    "granet",
    "group_densities",
    "group_sizes",
    "keep_counts",
    "make",
    "prune_to",
    "random_mask",
    "rigl",
    "set",
    "static",
]


class UpdaterState(NamedTuple):
    """What every updater here carries: its key, as raw ``jax.random.key_data`` (a
    plain uint32 array: checkpointable; rewrapped with the default implementation),
    and how many updates it made."""

    key: jax.Array
    count: jax.Array


class DstState(NamedTuple):
    """The sparse part of a training state (``TrainState.dst``): the current mask
    and the updater's state."""

    mask: Mask
    inner: Any


class Updater(NamedTuple):
    """A mask updater (see the module docstring for the contract).

    Attributes:
      init: ``init(params, key) -> state``.
      update: ``update(params, mask, grads, step, state) -> (mask, state)``.
      fires: ``fires(step) -> bool``: an update follows the ``step``-th step.
      initial_mask: ``initial_mask(params, key) -> mask``: the method's start.
      name: the method's name.
      end: the last step at which the mask may change (``None``: any), checked
        against the training length by ``make_trainer``.
      uses_grads: whether ``update`` reads the gradient (the trainer computes it
        only then, on update steps).
    """

    init: Callable[[Params, PRNGKey], Any]
    update: Callable[..., tuple[Mask, Any]]
    fires: Callable[[Any], Any]
    initial_mask: Callable[[Params, PRNGKey], Mask]
    name: str
    end: int | None = None
    uses_grads: bool = True


def _check_every(update_every) -> None:
    if not isinstance(update_every, int) or isinstance(update_every, bool) or update_every < 1:
        raise ValueError(f"update_every: expected an int >= 1, got {update_every!r}")


def _check_step(name: str, value, low: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")


def _init(params, key) -> UpdaterState:
    del params
    if jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return UpdaterState(key=jnp.asarray(key), count=jnp.zeros((), jnp.int32))


def _checked_init(*targets, distribution, overrides, groups, prunable):
    """``init`` that first checks every target density leaves each group a weight
    (a clear error before anything is compiled)."""

    def init(params, key):
        for d in targets:
            group_densities(params, d, distribution=distribution, overrides=overrides,
                            groups=groups, prunable=prunable)
        return _init(params, key)

    return init


def _every(update_every: int, start: int, end: int | None):
    """Fires after steps ``start + update_every, start + 2 update_every, ...`` up to
    ``end`` (and at ``end`` itself)."""

    def fires(step):
        step = jnp.asarray(step)
        on = ((step - start) % update_every == 0) & (step > start)
        if end is None:
            return on
        return (on | (step == end)) & (step <= end)

    return fires


def _initial(density, distribution, overrides, groups, prunable):
    def initial_mask(params, key):
        dens = group_densities(params, density, distribution=distribution,
                               overrides=overrides, groups=groups, prunable=prunable)
        if all(d == 1.0 for d in dens.values()):
            return masks.init(params, prunable)
        return random_mask(params, dens, key=key, groups=groups, prunable=prunable)

    return initial_mask


def _common_checks(density, distribution, update_every, end, groups) -> None:
    _check_range("density", density, 0.0, 1.0, low_open=True)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution: expected one of {DISTRIBUTIONS}, got {distribution!r}")
    _check_every(update_every)
    if end is not None:
        _check_step("end", end, low=1)
    if not callable(groups) and groups not in masks.GROUPINGS:
        raise ValueError(f"groups: expected one of {masks.GROUPINGS} or a function, got {groups!r}")


def static(density: float, *, distribution: str = "erk",
           overrides: Mapping[str, float] | None = None, groups: Groups = "leaf",
           prunable: Prunable = masks.default_prunable) -> Updater:
    """A random mask at ``density`` that never changes: the baseline of DST."""
    _common_checks(density, distribution, 1, None, groups)
    return Updater(
        init=_init,
        update=lambda params, mask, grads, step, state: (mask, state),
        fires=lambda step: jnp.zeros((), bool),
        initial_mask=_initial(density, distribution, overrides, groups, prunable),
        name="static",
        end=0,
        uses_grads=False,
    )


def _exchange(name, density, drop_fraction, update_every, end, distribution, overrides,
              groups, prunable, *, grow: Callable, fraction: Callable) -> Updater:
    _common_checks(density, distribution, update_every, end, groups)
    _check_range("drop_fraction", drop_fraction, 0.0, 1.0, low_open=False)

    def update(params, mask, grads, step, state):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), step)
        new = drop_and_grow(params, mask, grow(params, grads, key), fraction(step),
                            groups=groups, prunable=prunable)
        return new, state._replace(count=state.count + 1)

    return Updater(init=_init, update=update, fires=_every(update_every, 0, end),
                   initial_mask=_initial(density, distribution, overrides, groups, prunable),
                   name=name, end=end, uses_grads=grow is _gradient_scores)


def _uniform_scores(params, grads, key):
    del grads
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [jax.random.uniform(k, jnp.shape(x)) for k, x in zip(keys, leaves, strict=True)])


def _gradient_scores(params, grads, key):
    del params, key
    return jax.tree.map(jnp.abs, grads)


def set(density: float, *, drop_fraction: float = 0.3, update_every: int = 100,
        end: int | None = None, distribution: str = "erk",
        overrides: Mapping[str, float] | None = None, groups: Groups = "leaf",
        prunable: Prunable = masks.default_prunable) -> Updater:
    """SET: every ``update_every`` steps (until ``end``; ``None``: to the end of
    training) drop ``drop_fraction`` of each group's kept weights with the smallest
    |θ| and grow as many uniformly at random among the others (the just-dropped
    included, as the reference code's rejection sampling allows).

    References:
      Mocanu et al. 2018, "Scalable training of artificial neural networks with
      adaptive sparse connectivity inspired by network science", Nat. Commun. 9:2383.
    """
    return _exchange("set", density, drop_fraction, update_every, end, distribution,
                     overrides, groups, prunable, grow=_uniform_scores,
                     fraction=lambda step: drop_fraction)


def rigl(density: float, *, end: int, drop_fraction: float = 0.3, update_every: int = 100,
         distribution: str = "erk", overrides: Mapping[str, float] | None = None,
         groups: Groups = "leaf", prunable: Prunable = masks.default_prunable) -> Updater:
    """RigL: every ``update_every`` steps up to ``end`` (the paper: 75 % of
    training) drop ``cosine_fraction(step, initial=drop_fraction, end=end)`` of
    each group's kept weights by |θ| and grow as many by |gradient| of the step's
    batch.

    References:
      Evci et al. 2020, "Rigging the Lottery: Making All Tickets Winners",
      arXiv:1911.11134.
    """
    return _exchange("rigl", density, drop_fraction, update_every, end, distribution,
                     overrides, groups, prunable, grow=_gradient_scores,
                     fraction=lambda step: cosine_fraction(step, initial=drop_fraction,
                                                           end=end))


def _gradual(params, initial, final, start, end, distribution, overrides, groups, scope,
             prunable):
    """``(groups used, {group: step -> n_keep})`` of gradual pruning."""
    if scope == "global":
        sizes = group_sizes(params, groups=groups, prunable=prunable)
        total = builtins.sum(sizes.values())
        one = lambda path: "all"  # noqa: E731
        return one, {"all": lambda step: _round(gmp_density(
            step, initial=initial, final=final, start=start, end=end) * total)}
    d_i = group_densities(params, initial, distribution=distribution, overrides=overrides,
                          groups=groups, prunable=prunable)
    d_f = group_densities(params, final, distribution=distribution, overrides=overrides,
                          groups=groups, prunable=prunable)
    sizes = group_sizes(params, groups=groups, prunable=prunable)
    return groups, {
        g: (lambda step, g=g: _round(gmp_density(step, initial=d_i[g], final=d_f[g],
                                                 start=start, end=end) * sizes[g]))
        for g in sizes
    }


def _round(x):
    return jnp.floor(x + 0.5).astype(jnp.int32)


def _check_gradual(density, initial_density, start, end, scope, overrides) -> None:
    _check_range("initial_density", initial_density, 0.0, 1.0, low_open=True)
    _check_step("start", start)
    _check_step("end", end, low=1)
    if not end > start:
        raise ValueError(f"end: expected a step after start={start}, got {end}")
    if initial_density < density:
        raise ValueError(f"initial_density: expected >= density={density}, got {initial_density}")
    if scope not in ("layerwise", "global"):
        raise ValueError(f"scope: expected 'layerwise' or 'global', got {scope!r}")
    if scope == "global" and overrides:
        raise ValueError("overrides: per-group densities need scope='layerwise' "
                         "(a global ranking has no per-group targets)")


def gmp(density: float, *, end: int, start: int = 0, update_every: int = 100,
        initial_density: float = 1.0, distribution: str = "uniform",
        scope: str = "layerwise", overrides: Mapping[str, float] | None = None,
        groups: Groups = "leaf", prunable: Prunable = masks.default_prunable) -> Updater:
    """Gradual magnitude pruning: after steps ``start + k * update_every`` (and at
    ``end``) each group keeps its ``round(gmp_density(step) * size)`` largest-|θ|
    weights, so the density reaches ``density`` (per group: its share under
    ``distribution``) at ``end``. ``scope="global"`` ranks all groups together.
    Pruned weights never come back.

    References:
      Zhu & Gupta 2017, "To prune, or not to prune", arXiv:1710.01878.
    """
    _common_checks(density, distribution, update_every, end, groups)
    _check_gradual(density, initial_density, start, end, scope, overrides)

    def update(params, mask, grads, step, state):
        del grads
        grouping, keep = _gradual(params, initial_density, density, start, end,
                                  distribution, overrides, groups, scope, prunable)
        n_keep = {g: f(step) for g, f in keep.items()}
        new = prune_to(params, mask, n_keep, groups=grouping, prunable=prunable)
        return new, state._replace(count=state.count + 1)

    return Updater(init=_checked_init(density, distribution=distribution, overrides=overrides,
                                      groups=groups, prunable=prunable),
                   update=update, fires=_every(update_every, start, end),
                   initial_mask=_initial(initial_density, distribution, overrides, groups,
                                         prunable),
                   name="gmp", end=end, uses_grads=False)


def granet(density: float, *, end: int, total: int, start: int = 0,
           update_every: int = 100, initial_density: float = 1.0,
           drop_fraction: float = 0.5, min_fraction: float = 0.005,
           distribution: str = "erk", scope: str = "global",
           overrides: Mapping[str, float] | None = None, groups: Groups = "leaf",
           prunable: Prunable = masks.default_prunable) -> Updater:
    """GraNet: gradual magnitude pruning from ``initial_density`` (its mask drawn
    with ``distribution``) to ``density`` between ``start`` and ``end``
    (:func:`gmp`, one global ranking by default as the reference code), and at
    every update -- also after ``end``, until training stops -- zero-cost
    neuroregeneration: :func:`drop_and_grow` by |gradient| with the fraction
    ``cosine_fraction(step, initial=drop_fraction, end=total, final=min_fraction)``.

    Args:
      total: the training length (the regeneration rate's cosine period).

    References:
      Liu et al. 2021, "Sparse Training via Boosting Pruning Plasticity with
      Neuroregeneration", arXiv:2106.10404.
    """
    _common_checks(density, distribution, update_every, end, groups)
    _check_gradual(density, initial_density, start, end, scope, overrides)
    _check_range("drop_fraction", drop_fraction, 0.0, 1.0, low_open=False)
    _check_range("min_fraction", min_fraction, 0.0, drop_fraction, low_open=False)
    _check_step("total", total, low=end)

    def update(params, mask, grads, step, state):
        grouping, keep = _gradual(params, initial_density, density, start, end,
                                  distribution, overrides, groups, scope, prunable)
        pruned = prune_to(params, mask, {g: f(step) for g, f in keep.items()},
                          groups=grouping, prunable=prunable)
        rate = cosine_fraction(step, initial=drop_fraction, end=total, final=min_fraction)
        new = drop_and_grow(params, pruned, _gradient_scores(params, grads, None), rate,
                            groups=groups, prunable=prunable)
        return new, state._replace(count=state.count + 1)

    return Updater(init=_checked_init(density, distribution=distribution, overrides=overrides,
                                      groups=groups, prunable=prunable),
                   update=update, fires=_every(update_every, start, None),
                   initial_mask=_initial(initial_density, distribution, overrides, groups,
                                         prunable),
                   name="granet", end=None)


METHODS: dict[str, Callable[..., Updater]] = {
    "static": static, "gmp": gmp, "set": set, "rigl": rigl, "granet": granet,
}
"""The methods by name (``lotto dst --method``)."""


def make(method: str, **kwargs) -> Updater:
    """The updater of ``method`` (a key of :data:`METHODS`) with ``kwargs``."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    return METHODS[method](**kwargs)
