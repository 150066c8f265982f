"""Pruning at initialisation: one entry over the scores, iterative schedules, the
sanity-check controls and the layer-collapse report.

* :func:`prune_at_init` prunes ``params`` (θ0) to a target density with ``random``,
  ``magnitude``, ``snip``, ``grasp`` or ``synflow`` scores, in one shot or over
  ``rounds`` with a shrinking density (SynFlow: 100 rounds by default).
* :func:`synflow` is the paper's iterative SynFlow; :func:`iterative_prune` is the
  loop behind every multi-round method (the score function is compiled once; the
  mask is traced data).
* The controls of Frankle et al. 2021: :func:`shuffle` (layerwise shuffle of the
  mask), :func:`reinit` (same mask, fresh weights), :func:`invert` (keep the lowest
  scores instead of the highest, ``prune_at_init(..., invert=True)``).
* :func:`collapsed_layers` lists the prunable layers pruned to density 0: such a
  network computes a constant, and ``prevent_collapse=True`` keeps one weight there.

The command ``lotto pai`` (prune, then train the sparse network and its controls)
is :mod:`lotto_jax.runs.pai`. :func:`iterative_prune` and :func:`schedule_densities` live in
``lotto_jax._pai_iterative``; import them from here.

References:
  Lee et al. 2019, arXiv:1810.02340 (SNIP); Wang et al. 2020, arXiv:2002.07376
  (GraSP); Tanaka et al. 2020, arXiv:2006.05467 (SynFlow); Frankle et al. 2021,
  "Pruning Neural Networks at Initialization: Why are We Missing the Mark?",
  arXiv:2009.08576.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import masks as masks_lib
from lotto_jax import models, structured
from lotto_jax import scores as scores_lib
from lotto_jax._pai_iterative import (  # noqa: F401  (_check_*: runs.pai)
    SCHEDULES,
    ScoreFn,
    _check_choice,
    _check_density,
    _check_rounds,
    _prunable_items,
    iterative_prune,
    schedule_densities,
)
from lotto_jax._types import Mask, Params, PRNGKey, Prunable, Scores
from lotto_jax.masks import default_prunable, path_str

__all__ = [
    "CONTROLS",
    "METHODS",
    "SCHEDULES",
    "collapsed_layers",
    "invert",
    "iterative_prune",
    "prune_at_init",
    "reinit",
    "schedule_densities",
    "shuffle",
    "synflow",
]

METHODS: tuple[str, ...] = ("random", "magnitude", "snip", "grasp", "synflow")
"""Scores :func:`prune_at_init` accepts."""
CONTROLS: tuple[str, ...] = ("shuffle", "reinit", "invert")
"""The sanity checks of Frankle et al. 2021, by name."""

# ----------------------------------------------------------------------------------
# controls, collapse


def collapsed_layers(mask: Mask, *, prunable: Prunable = default_prunable) -> list[str]:
    """The prunable layers that keep no weight at all (layer collapse).

    A layer at density 0 disconnects the network: its output no longer depends on
    the input (Tanaka et al. 2020 call it layer collapse; global magnitude pruning
    at initialisation is prone to it at high sparsity).

    Args:
      mask: a boolean pytree.
      prunable: which leaves are layers.

    Returns:
      The paths (``'Dense_0/kernel'``) of prunable leaves with no kept entry, in
      tree order.

    Examples:
      >>> import jax.numpy as jnp
      >>> collapsed_layers({"a": jnp.zeros((2, 2), bool), "b": jnp.eye(2, dtype=bool),
      ...                   "bias": jnp.zeros(2, bool)})
      ['a']
    """
    return [
        path_str(p)
        for p, m in jax.tree_util.tree_flatten_with_path(mask)[0]
        if prunable(p, m) and np.size(m) > 0 and not np.any(m)
    ]


def invert(scores: Scores) -> Scores:
    """Score inversion: negated scores, so pruning keeps the *lowest* original ones.

    The inversion sanity check of Frankle et al. 2021: at the same density, keep the
    weights a method ranks least important. Ties keep their positional order
    (pruning removes the earliest of equal scores first, inverted or not).

    Examples:
      >>> import jax.numpy as jnp
      >>> invert({"w": jnp.array([1.0, -2.0])})
      {'w': Array([-1.,  2.], dtype=float32)}
    """
    return jax.tree.map(jnp.negative, scores)


def shuffle(mask: Mask, *, key: PRNGKey, prunable: Prunable = default_prunable) -> Mask:
    """The layerwise-shuffle control: each prunable layer's mask permuted at random
    (its density kept); see :func:`lotto_jax.masks.shuffle`.

    Frankle et al. 2021 find that SNIP, GraSP and SynFlow lose little under this
    control: they choose per-layer densities more than individual weights.
    """
    return _shuffle_jit(mask, key, prunable=prunable)


# one compilation instead of one per eager op and leaf shape
_shuffle_jit = jax.jit(masks_lib.shuffle, static_argnames=("prunable",))


def reinit(module, input_shape: Sequence[int], *, key: PRNGKey) -> dict[str, Any]:
    """The reinitialisation control: fresh variables from the model's initialisers.

    Train them under the found mask. (``common.init_variables`` does the same from
    an integer seed.)

    Args:
      module: the linen model.
      input_shape: one example's shape.
      key: a key other than the one of the original θ0.

    Returns:
      The variables dict (``params`` and, with BatchNorm, ``batch_stats``).
    """
    return models.init(module, key, tuple(input_shape))


# Compiled once per loss_fn (static, hashed by identity): a driver that prunes twice
# with the same loss_fn (the method, then its inversion) compiles once.
_snip_jit = jax.jit(scores_lib.snip, static_argnums=0)
_grasp_jit = jax.jit(scores_lib.grasp, static_argnums=0, static_argnames=("prunable",))

def _check_flow(scores: Scores, mask: Mask, prunable: Prunable, dtype) -> None:
    """Raises if SynFlow's first scores underflowed to 0 or overflowed."""
    kept = [(s[m], m) for _, s, m in _prunable_items(scores, mask, prunable)]
    finite = all(np.all(np.isfinite(s)) for s, _ in kept)
    positive = any(np.any(s > 0) for s, _ in kept)
    if not finite or not positive:
        what = "overflowed to inf/NaN" if not finite else "are all 0 (underflow?)"
        raise ValueError(
            f"dtype: the SynFlow scores {what} in {jnp.dtype(dtype or jnp.float32)}; "
            "pass dtype=jnp.float64 or rescale=True"
        )


def synflow(
    apply_fn: Callable[[Params, Any, jax.Array], Any],
    params: Params,
    mask: Mask | None = None,
    input_shape: Sequence[int] | None = None,
    *,
    density: float,
    rounds: int = 100,
    schedule: str = "exponential",
    scope: str = "global",
    model_state: Any = None,
    dtype: Any = None,
    rescale: bool = False,
    invert: bool = False,
    prevent_collapse: bool = False,
    prunable: Prunable = default_prunable,
    callback: Callable[[int, float, Mask], None] | None = None,
    structure: str = "weight",
    topology: Any = None,
) -> Mask:
    """Iterative SynFlow: ``rounds`` rounds of :func:`lotto_jax.scores.synflow_scores`
    under the current mask, pruning to ``ρ^(k/n)`` at round ``k`` (exponential).

    The score function is jitted once and reused every round (the mask is traced
    data): one compilation for all rounds. With a 64-bit ``dtype`` the loop runs
    inside ``jax.enable_x64(True)``. The first round checks that the scores neither
    underflowed to 0 nor overflowed.

    Args:
      apply_fn: ``apply_fn(params, model_state, x) -> outputs``, in inference mode;
        see :func:`lotto_jax.scores.synflow_scores` (BatchNorm statistics in
        ``model_state`` are made non-negative there).
      params: θ0.
      mask: the starting mask (``None``: all prunable weights kept).
      input_shape: one example's shape (no batch axis).
      density: final density of prunable weights ``ρ`` in (0, 1].
      rounds: ``n`` (100 in the paper).
      schedule: ``"exponential"`` (the paper) or ``"linear"``.
      scope: ``"global"`` (the paper) or ``"layerwise"``.
      model_state: e.g. ``{"batch_stats": ...}``.
      dtype: compute dtype; ``jnp.float64`` against underflow on deep nets.
      rescale: per-layer rescaling against underflow (see ``synflow_scores``).
      invert: the inversion control (keep the lowest scores each round).
      prevent_collapse: see :func:`iterative_prune`.
      prunable: which leaves are pruned.
      callback: ``callback(round, target_density, mask)`` after each round.
      structure: see :func:`prune_at_init`.
      topology: see :func:`prune_at_init`.

    Returns:
      The mask.

    Raises:
      ValueError: missing ``input_shape``, bad ``density``/``rounds``, or scores
        that underflowed/overflowed (naming ``dtype``).

    Examples:
      >>> import jax.numpy as jnp
      >>> params = {"a": jnp.ones((4, 3)), "b": jnp.ones((3, 2))}
      >>> mask = synflow(lambda p, s, x: x @ p["a"] @ p["b"], params,
      ...                input_shape=(4,), density=0.5, rounds=10)
      >>> int(mask["a"].sum() + mask["b"].sum()), collapsed_layers(mask)
      (9, [])

    References:
      Tanaka et al. 2020, arXiv:2006.05467.
    """
    if input_shape is None:
        raise ValueError(
            "input_shape: synflow needs the shape of one input example "
            "(e.g. dataset.input_shape), got None"
        )
    if apply_fn is None:
        raise ValueError("apply_fn: synflow needs apply_fn(params, model_state, x)")
    density = _check_density(density)
    rounds = _check_rounds(rounds)
    prune_fn = _structured(structure, topology, scope, prunable, prevent_collapse)
    mask = masks_lib.init(params, prunable) if mask is None else mask
    masks_lib.validate(params, mask)
    x64 = dtype is not None and jnp.dtype(dtype).itemsize == 8

    def run() -> Mask:
        @jax.jit
        def score(p, state, m):
            return scores_lib.synflow_scores(
                apply_fn, p, m, input_shape, model_state=state, dtype=dtype,
                rescale=rescale, prunable=prunable,
            )

        def score_fn(m, k):
            s = score(params, model_state, m)
            if int(k) == 1:
                _check_flow(s, m, prunable, dtype)
            return s

        return iterative_prune(
            score_fn, mask, density=density, rounds=rounds, schedule=schedule,
            scope=scope, invert=invert, prevent_collapse=prevent_collapse,
            prunable=prunable, callback=callback, prune_fn=prune_fn,
        )

    if x64 and not jax.config.jax_enable_x64:
        with jax.enable_x64(True):
            return run()
    return run()


def prune_at_init(
    method: str,
    *,
    params: Params,
    mask: Mask | None = None,
    density: float,
    scope: str = "global",
    key: PRNGKey | None = None,
    loss_fn: Callable[..., jax.Array] | None = None,
    apply_fn: Callable[[Params, Any, jax.Array], Any] | None = None,
    model_state: Any = None,
    batches: Sequence[Any] | None = None,
    input_shape: Sequence[int] | None = None,
    rounds: int | None = None,
    schedule: str = "exponential",
    temperature: float = 200.0,
    dtype: Any = None,
    rescale: bool = False,
    invert: bool = False,
    prevent_collapse: bool = False,
    prunable: Prunable = default_prunable,
    callback: Callable[[int, float, Mask], None] | None = None,
    structure: str = "weight",
    topology: Any = None,
) -> Mask:
    """Prunes θ0 to ``density`` of its prunable weights with a pruning-at-init method.

    ========== ======================================= ============================
    method     score (higher = keep)                   needs
    ========== ======================================= ============================
    random     i.i.d. N(0, 1)                          ``key``
    magnitude  ``|θ0|``                                –
    snip       ``|∂L/∂m|`` (:func:`scores.snip`)       ``loss_fn``, ``batches``
    grasp      ``θ ⊙ Hg`` (:func:`scores.grasp`)       ``loss_fn``, ``batches``
    synflow    ``|∂R/∂θ ⊙ θ|`` (:func:`synflow`)       ``apply_fn``, ``input_shape``
    ========== ======================================= ============================

    ``synflow`` iterates (``rounds=None`` means 100, the paper's setting); the others
    are one-shot unless ``rounds > 1``, which re-scores under the current mask each
    round with the same schedule (random draws a new key per round,
    ``fold_in(key, k)``; magnitude then equals one shot). Scores are computed by
    jitted functions: snip and grasp compile once per ``loss_fn`` object (reuse it
    across calls, e.g. for the inversion control), synflow once per call for all its
    rounds.

    Args:
      method: one of :data:`METHODS`.
      params: θ0.
      mask: the starting mask (``None``: all kept).
      density: final fraction of prunable weights kept, in (0, 1].
      scope: ``"global"`` (one threshold over all prunable layers; the papers'
        setting) or ``"layerwise"`` (every layer at ``density``).
      key: PRNG key of ``random``.
      loss_fn: ``loss_fn(params, batch, temperature=1.0) -> scalar`` of the dense
        network (``scores.cross_entropy(logits_fn)``); snip calls it without
        ``temperature``.
      apply_fn: ``apply_fn(params, model_state, x) -> outputs`` in inference mode
        (synflow).
      model_state: non-trained collections (``batch_stats``) for synflow; the
        snip/grasp ``loss_fn`` closes over its own.
      batches: labelled batches for snip/grasp (``scores.sample_batches``).
      input_shape: one example's shape for synflow.
      rounds: number of rounds (``None``: 100 for synflow, 1 otherwise).
      schedule: ``"exponential"`` or ``"linear"`` density schedule.
      temperature: GraSP's softmax temperature (200).
      dtype: SynFlow's compute dtype (``jnp.float64`` against underflow).
      rescale: SynFlow's per-layer rescaling.
      invert: the inversion control: keep the lowest scores.
      prevent_collapse: keep one weight (the highest-scoring) in any layer that
        would be emptied; see :func:`iterative_prune`.
      prunable: which leaves are pruned.
      callback: ``callback(round, target_density, mask)`` after each round.
      structure: ``"weight"`` (unstructured) or, with the model's ``topology``, a
        structure of :func:`lotto_jax.structured.parse`: the method's scores summed
        per unit (``"neuron"``, ``"channel"``; ``density`` = fraction of each
        layer's units, ``scope`` as for weights) or per residual block
        (``"layer"``; ``density`` = fraction of blocks kept), or ``"N:M"``
        (:func:`lotto_jax.structured.prune_density`). ``prevent_collapse`` is for
        weights only (a structure never empties a layer: it refuses).
      topology: :func:`lotto_jax.structured.topology_for` of the model.

    Returns:
      The mask.

    Raises:
      ValueError: unknown ``method``/``scope``/``schedule``, ``density`` outside
        (0, 1], bad ``rounds``, or a missing argument the method needs (the message
        names it).

    Examples:
      >>> import jax.numpy as jnp
      >>> params = {"w": jnp.array([[0.3, -0.1, 0.5, -0.2]])}
      >>> prune_at_init("magnitude", params=params, density=0.5)["w"].tolist()
      [[True, False, True, False]]
      >>> prune_at_init("magnitude", params=params, density=0.5, invert=True)["w"].tolist()
      [[False, True, False, True]]

    References:
      Frankle et al. 2021, arXiv:2009.08576; the method papers in the module doc.
    """
    _check_choice("method", method, METHODS)
    density = _check_density(density)
    _check_choice("scope", scope, ("global", "layerwise"))
    _check_choice("schedule", schedule, SCHEDULES)
    if rounds is None:
        rounds = 100 if method == "synflow" else 1
    rounds = _check_rounds(rounds)
    prune_fn = _structured(structure, topology, scope, prunable, prevent_collapse)
    start = masks_lib.init(params, prunable) if mask is None else mask
    masks_lib.validate(params, start)
    common_kw = dict(
        density=density, rounds=rounds, schedule=schedule, scope=scope, invert=invert,
        prevent_collapse=prevent_collapse, prunable=prunable, callback=callback,
    )

    if method == "synflow":
        return synflow(
            apply_fn, params, start, input_shape, model_state=model_state, dtype=dtype,
            rescale=rescale, structure=structure, topology=topology, **common_kw,
        )
    if method == "random":
        if key is None:
            raise ValueError("key: method 'random' needs key= (a PRNG key)")

        def score_fn(m, k):
            if rounds == 1:
                return scores_lib.random(params, key=key)
            return scores_lib.random(params, key=jax.random.fold_in(key, k))
    elif method == "magnitude":
        magnitudes = scores_lib.magnitude(params)

        def score_fn(m, k):
            return magnitudes
    else:
        if loss_fn is None:
            raise ValueError(f"loss_fn: method {method!r} needs loss_fn(params, batch)")
        if batches is None:
            raise ValueError(
                f"batches: method {method!r} needs labelled batches "
                "(scores.sample_batches)"
            )
        batches = scores_lib._check_batches(batches, method)

        def score_fn(m, k):
            if method == "snip":
                return _snip_jit(loss_fn, params, m, batches)
            return _grasp_jit(loss_fn, params, m, batches, temperature=temperature,
                              prunable=prunable)

    return iterative_prune(score_fn, start, prune_fn=prune_fn, **common_kw)


def _structured(structure, topology, scope: str, prunable: Prunable, prevent_collapse: bool):
    """``iterative_prune``'s ``prune_fn`` for a structure (``None`` for weights)."""
    st = structured.parse(structure)
    if st.kind == "weight":
        return None
    if prevent_collapse:
        raise ValueError(f"prevent_collapse: applies to structure 'weight' only, got "
                         f"{structure!r} (structured pruning refuses to empty a layer)")

    def prune_fn(scores, mask, target):
        return structured.prune_density(st, scores, mask, target, topology=topology,
                                        scope=scope, prunable=prunable)

    return prune_fn
