"""Saliency scores: pure functions returning pytrees like the params.

A higher score means more important: pruning keeps the highest-scoring weights. Scores
of unprunable leaves are computed like any other leaf (GraSP: set to 0) and ignored by
:mod:`lotto_jax.prune`.

* :func:`magnitude`, :func:`random`: data-free baselines.
* :func:`snip`, :func:`grasp`: need a loss and a labelled sample
  (:func:`sample_batches`; :func:`cross_entropy` builds the loss of a classifier).
* :func:`synflow_scores`: data-free, one shot; the iterative SynFlow algorithm, which
  re-scores under a shrinking mask, is :func:`lotto_jax.pai.synflow`.

Every score function takes the dense network's ``loss_fn``/``apply_fn`` and the mask,
applies the mask itself, and is pure ``jnp``: it runs under ``jit`` with the mask as
traced data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from lotto_jax._types import Mask, Params, PRNGKey, Prunable, Scores
from lotto_jax.masks import apply as apply_mask
from lotto_jax.masks import default_prunable, validate

__all__ = [
    "cross_entropy",
    "grasp",
    "magnitude",
    "random",
    "sample_batches",
    "snip",
    "synflow_scores",
]


def magnitude(params: Params) -> Scores:
    """|θ|: the score of magnitude pruning (Frankle & Carbin 2019, arXiv:1803.03635).

    Args:
      params: any pytree of arrays (trained weights for IMP, θ0 for magnitude at
        initialisation).

    Returns:
      A pytree of ``|param|``.

    Examples:
      >>> import jax.numpy as jnp
      >>> magnitude({"w": jnp.array([-3.0, 1.0])})
      {'w': Array([3., 1.], dtype=float32)}
    """
    return jax.tree.map(jnp.abs, params)


def random(params: Params, *, key: PRNGKey) -> Scores:
    """I.i.d. N(0, 1) scores: random pruning (a global threshold gives about the
    same density in every layer).

    Args:
      params: gives the structure, shapes and dtypes.
      key: a PRNG key; each leaf gets its own subkey.

    Returns:
      A pytree of standard-normal draws shaped like ``params``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> random({"w": jnp.zeros((2, 3))}, key=jax.random.key(0))["w"].shape
      (2, 3)
    """
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    draws = [
        jax.random.normal(
            k,
            jnp.shape(p),
            jnp.result_type(p) if jnp.issubdtype(jnp.result_type(p), jnp.floating)
            else jnp.float32,
        )
        for k, p in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, draws)


# ----------------------------------------------------------------------------------
# pruning at initialisation: SNIP, GraSP, SynFlow


LossFn = Callable[..., jax.Array]
"""``loss_fn(params, batch) -> scalar``; GraSP also calls it with ``temperature=``."""


def cross_entropy(logits_fn: Callable[[Params, jax.Array], jax.Array]) -> LossFn:
    """The loss of a classifier, in the form :func:`snip` and :func:`grasp` call it.

    Args:
      logits_fn: ``logits_fn(params, x) -> logits [batch, classes]``: the dense
        network in inference mode (the score functions apply the mask themselves).

    Returns:
      ``loss_fn(params, batch, temperature=1.0)``: the mean softmax cross-entropy of
      ``logits / temperature`` against the integer labels of ``batch = (x, y)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> loss = cross_entropy(lambda p, x: x @ p["w"])
      >>> batch = (jnp.ones((2, 3)), jnp.array([0, 1]))
      >>> round(float(loss({"w": jnp.zeros((3, 4))}, batch)), 4)  # log 4
      1.3863
    """

    def loss_fn(params: Params, batch: Any, temperature: float = 1.0) -> jax.Array:
        x, y = batch
        logits = logits_fn(params, x) / temperature
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss_fn


def sample_batches(
    x: ArrayLike,
    y: ArrayLike,
    *,
    key: PRNGKey,
    num_classes: int,
    per_class: int = 10,
    batch_size: int = 256,
    balanced: bool = False,
) -> list[tuple[jax.Array, jax.Array]]:
    """The labelled sample that SNIP and GraSP score on: ``per_class * num_classes``
    training examples.

    Synaptic-Flow's code (Tanaka et al. 2020) draws ``10 * num_classes`` examples
    at random (``prune_dataset_ratio=10``) in batches of 256: the default here.
    GraSP's own code draws exactly ``per_class`` examples of every class:
    ``balanced=True``.

    Args:
      x: training inputs ``[N, ...]``.
      y: integer labels ``[N]``.
      key: the PRNG key of the draw.
      num_classes: number of classes.
      per_class: examples per class (on average unless ``balanced``).
      batch_size: examples per batch; the last batch may be smaller.
      balanced: draw exactly ``per_class`` examples of each class.

    Returns:
      A list of ``(x, y)`` batches, ``per_class * num_classes`` examples in all.

    Raises:
      ValueError: if the sample is larger than the data, or (``balanced``) a class
        has fewer than ``per_class`` examples.

    Examples:
      >>> import jax, numpy as np
      >>> x, y = np.zeros((100, 3)), np.arange(100) % 4
      >>> b = sample_batches(x, y, key=jax.random.key(0), num_classes=4,
      ...                    per_class=5, batch_size=8)
      >>> [len(yb) for _, yb in b]
      [8, 8, 4]

    References:
      Tanaka et al. 2020, arXiv:2006.05467 (Synaptic-Flow code); Wang et al. 2020,
      arXiv:2002.07376.
    """
    for name, value in (("num_classes", num_classes), ("per_class", per_class),
                        ("batch_size", batch_size)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    x, y = np.asarray(x), np.asarray(y)
    n = per_class * num_classes
    if n > len(y):
        raise ValueError(
            f"per_class: {per_class} x {num_classes} classes = {n} examples, "
            f"but the data has {len(y)}"
        )
    # one uniform draw per example orders the data: a single compiled op for any N
    u = np.asarray(jax.random.uniform(jax.random.fold_in(key, 0), (len(y),)))
    if balanced:
        counts = np.bincount(y, minlength=num_classes)
        short = np.flatnonzero(counts[:num_classes] < per_class)
        if short.size:
            c = int(short[0])
            raise ValueError(
                f"per_class: class {c} has {counts[c]} examples, fewer than {per_class}"
            )
        by_class = np.lexsort((u, y))  # classes in order, random order within each
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        idx = np.concatenate([by_class[starts[c] : starts[c] + per_class]
                              for c in range(num_classes)])
        idx = idx[np.argsort(u[idx], kind="stable")]  # mix the classes
    else:
        idx = np.argsort(u, kind="stable")[:n]
    return [
        (jnp.asarray(x[idx[i : i + batch_size]]), jnp.asarray(y[idx[i : i + batch_size]]))
        for i in range(0, n, batch_size)
    ]


def _check_batches(batches: Any, method: str) -> list[Any]:
    if batches is None or isinstance(batches, (jax.Array, np.ndarray)):
        raise ValueError(
            f"batches: {method} needs a non-empty sequence of labelled batches "
            f"such as [(x, y), ...], got {type(batches).__name__}"
        )
    batches = list(batches)
    if not batches:
        raise ValueError(f"batches: {method} needs at least one labelled batch, got []")
    if all(isinstance(b, (jax.Array, np.ndarray)) for b in batches):
        raise ValueError(
            f"batches: {method} expects a sequence of batches such as [(x, y), ...], "
            "got a sequence of arrays; wrap a single batch as [(x, y)]"
        )
    return batches


def _full_mask(params: Params, mask: Mask | None) -> Mask:
    if mask is None:
        return jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)
    validate(params, mask)
    return mask


def _mean_loss(loss_fn: LossFn, batches: list[Any], **kwargs) -> Callable:
    """``params -> mean over batches of loss_fn(params, batch, **kwargs)``."""

    def mean(params):
        total = sum(loss_fn(params, b, **kwargs) for b in batches)
        return total / len(batches)

    return mean


def snip(loss_fn: LossFn, params: Params, mask: Mask | None, batches) -> Scores:
    """SNIP's connection sensitivity ``|∂L/∂m|`` at ``m = mask``.

    With ``w = θ ⊙ m`` the masked weights, ``∂L/∂m = θ ⊙ ∇_w L(w)``. On kept weights
    this is ``g ⊙ θ`` with ``g = ∇_θ L(θ ⊙ m)`` the gradient of the masked network;
    on pruned weights it is the sensitivity of putting the connection back (pruning
    never revives them, so it does not matter there).

    ``L`` is the mean of ``loss_fn`` over ``batches`` (each batch weighs the same);
    the absolute value is taken after that average, as in Synaptic-Flow's code,
    which sums the gradients of the batches (a constant factor: same ranking). That
    code also divides the scores by their sum, which does not change the ranking
    and is not done here.

    Pure and jittable (``batches`` may be a traced argument).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the loss of the dense network
        (e.g. :func:`cross_entropy`); the mask is applied here.
      params: the weights θ (at initialisation).
      mask: the current mask, or ``None`` for the dense network.
      batches: a non-empty sequence of labelled batches, e.g. from
        :func:`sample_batches` (10 examples per class).

    Returns:
      Non-negative scores shaped like ``params`` (every leaf is scored).

    Raises:
      ValueError: if ``batches`` is missing or empty, or ``mask`` does not fit.

    Examples:
      >>> import jax.numpy as jnp
      >>> loss = lambda p, b: jnp.sum(p["w"] * b[0])  # ∇_w L = x; mean (0.5, 0)
      >>> batches = [(jnp.array([1.0, 1.0]), None), (jnp.array([0.0, -1.0]), None)]
      >>> snip(loss, {"w": jnp.array([2.0, -3.0])}, None, batches)["w"]
      Array([1., 0.], dtype=float32)

    References:
      Lee et al. 2019, "SNIP: Single-shot Network Pruning based on Connection
      Sensitivity", arXiv:1810.02340.
    """
    batches = _check_batches(batches, "snip")
    mask = _full_mask(params, mask)
    grads = jax.grad(_mean_loss(loss_fn, batches))(apply_mask(params, mask))
    return jax.tree.map(lambda t, g: jnp.abs(t * g), params, grads)


def _split(tree: Any, flags: list[bool]) -> list[Any]:
    return [x for x, f in zip(jax.tree.leaves(tree), flags, strict=True) if f]


def _merge(treedef, flags: list[bool], selected: list[Any], rest: list[Any]) -> Any:
    sel, oth = iter(selected), iter(rest)
    return jax.tree.unflatten(treedef, [next(sel) if f else next(oth) for f in flags])


def grasp(
    loss_fn: LossFn,
    params: Params,
    mask: Mask | None,
    batches,
    *,
    temperature: float = 200.0,
    prunable: Prunable = default_prunable,
) -> Scores:
    """GraSP's score ``θ ⊙ Hg``, signed, oriented so that higher = keep.

    ``g = ∇_θ L_T`` with ``L_T`` the loss of the logits divided by ``temperature``
    (held constant: stop-gradient), and ``Hg = ∇_θ (gᵀ ∇_θ L_T)``, the
    Hessian-vector product, computed forward-over-reverse (``jax.jvp`` of
    ``jax.grad``): memory O(parameters), never a dense Hessian. Both derivatives
    are taken with respect to the prunable leaves of the masked network
    ``θ ⊙ m`` (so entries of pruned weights are 0), with the other leaves held
    fixed, as in the reference codes (which differentiate conv and linear weights
    only). ``L_T`` is the mean of ``loss_fn`` over ``batches``; Synaptic-Flow's
    code sums instead (a positive factor: same ranking).

    **Sign convention.** Wang et al. 2020 score ``S(−θ) = −θ ⊙ Hg`` and *remove*
    the weights with the highest ``S(−θ)`` (removing them reduces the gradient
    norm the least or increases it). This function returns ``θ ⊙ Hg = −S(−θ)``,
    and :mod:`lotto_jax.prune` keeps the highest scores, i.e. removes the lowest
    ``θ ⊙ Hg`` = the highest ``S(−θ)``: the paper's set (up to ties). This is also
    Synaptic-Flow's score, which it keeps the largest of. No absolute value.

    Args:
      loss_fn: ``loss_fn(params, batch, temperature=T) -> scalar``: the loss of
        the dense network with logits divided by ``T`` (e.g. :func:`cross_entropy`);
        the mask is applied here.
      params: the weights θ.
      mask: the current mask, or ``None`` for the dense network.
      batches: a non-empty sequence of labelled batches.
      temperature: ``T``; 200 in both reference codes.
      prunable: which leaves are differentiated and scored; the others get score 0.

    Returns:
      Signed scores shaped like ``params``.

    Raises:
      ValueError: if ``batches`` is missing or empty, ``mask`` does not fit or
        ``prunable`` selects no leaf.

    Examples:
      >>> import jax.numpy as jnp
      >>> # L = (w0 w1)^2 / (2T) at w = (1, 2): g = (4, 2)/T, H = [[4, 4], [4, 1]]/T
      >>> loss = lambda p, b, temperature: (p["w"][0, 0] * p["w"][0, 1]) ** 2 / (2 * temperature)
      >>> grasp(loss, {"w": jnp.array([[1.0, 2.0]])}, None, [None], temperature=1.0)["w"]
      Array([[24., 36.]], dtype=float32)

    References:
      Wang, Zhang & Grosse 2020, "Picking Winning Tickets Before Training by
      Preserving Gradient Flow", arXiv:2002.07376; Tanaka et al. 2020,
      arXiv:2006.05467 (their GraSP implementation).
    """
    batches = _check_batches(batches, "grasp")
    mask = _full_mask(params, mask)
    leaves_wp, treedef = jax.tree_util.tree_flatten_with_path(params)
    flags = [bool(prunable(p, x)) for p, x in leaves_wp]
    if not any(flags):
        raise ValueError("prunable: selects no leaf of params; GraSP has nothing to score")
    theta = _split(params, flags)
    m_sel = _split(mask, flags)
    rest = [
        x for x, f in zip(jax.tree.leaves(apply_mask(params, mask)), flags, strict=True)
        if not f
    ]
    mean_loss = _mean_loss(loss_fn, batches, temperature=temperature)

    def loss_of(selected):
        masked = [t * m.astype(t.dtype) for t, m in zip(selected, m_sel, strict=True)]
        return mean_loss(_merge(treedef, flags, masked, rest))

    grad_fn = jax.grad(loss_of)
    g = jax.lax.stop_gradient(grad_fn(theta))
    _, hg = jax.jvp(grad_fn, (theta,), (g,))
    scored = [t * h for t, h in zip(theta, hg, strict=True)]
    zeros = [jnp.zeros_like(x) for x, f in zip(jax.tree.leaves(params), flags, strict=True)
             if not f]
    return _merge(treedef, flags, scored, zeros)


def _abs_floating(tree: Any, dtype) -> Any:
    def f(x):
        if jnp.issubdtype(jnp.result_type(x), jnp.floating):
            x = jnp.abs(x)
            return x if dtype is None else x.astype(dtype)
        return x

    return jax.tree.map(f, tree)


def synflow_scores(
    apply_fn: Callable[[Params, Any, jax.Array], Any],
    params: Params,
    mask: Mask | None,
    input_shape: Sequence[int] | None,
    *,
    model_state: Any = None,
    dtype: Any = None,
    rescale: bool = False,
    prunable: Prunable = default_prunable,
) -> Scores:
    """One-shot SynFlow scores ``|∂R/∂θ ⊙ θ|`` (data-free).

    Every floating leaf of ``params`` *and* of ``model_state`` is replaced by its
    absolute value (biases, BatchNorm scales and offsets, running means and
    variances: the reference code applies ``abs_`` to the whole ``state_dict``),
    the mask is applied, and the network, in inference mode, maps one all-ones
    input ``[1, *input_shape]`` to outputs whose sum is ``R``. The score of a
    weight is ``|θ| ⊙ ∂R/∂|θ|``, which is 0 for pruned weights. Iterate it under a
    shrinking mask with :func:`lotto_jax.pai.synflow` (the paper's algorithm).

    **BatchNorm.** ``apply_fn`` must run the network in inference mode, using the
    running statistics in ``model_state`` (e.g. ``lambda p, s, x:
    classifier(module)(p, s, x, False)[0]``); this function passes it
    ``|model_state|``. A network without state gets ``model_state={}``.

    **Underflow.** On deep networks ``R`` and the scores can underflow to 0 in
    float32 (a known failure of the reference code on ResNets). Two remedies:
    ``dtype=jnp.float64`` (exact; needs ``with jax.enable_x64(True):`` around the
    call) or ``rescale=True``: every prunable leaf's ``|θ|`` is multiplied by
    ``c_l = fan_out / Σ|θ_l ⊙ m_l|`` (``fan_out`` = last axis, Flax's kernel
    layout), so that an all-ones input stays O(1) through the layers. If ``R`` is
    positively homogeneous of degree 1 in every prunable leaf (no biases, ReLU or
    linear activations, no residual sums around a prunable leaf, BN with zero
    running mean and offset), every score is multiplied by the same ``∏ c_l``:
    the ranking, global or layerwise, is exactly unchanged. Otherwise (biases,
    residual connections) rescaling changes the ranking; prefer float64.

    Pure and jittable; the mask is ordinary traced data (one compilation serves
    every round of the iteration).

    Args:
      apply_fn: ``apply_fn(params, model_state, x) -> outputs`` in inference mode
        (outputs: an array or a pytree of arrays, all summed into ``R``).
      params: the weights θ (signs are irrelevant: ``|θ|`` is used).
      mask: the current mask, or ``None`` for the dense network.
      input_shape: the shape of one example, without the batch axis.
      model_state: non-trained collections (``{"batch_stats": ...}``), or ``None``.
      dtype: compute dtype (``None``: the params' dtype; ``jnp.float64`` under
        ``jax.enable_x64``).
      rescale: per-layer rescaling against underflow and overflow, see above.
      prunable: the leaves that ``rescale`` rescales.

    Returns:
      Non-negative scores shaped like ``params`` (in ``dtype``).

    Raises:
      ValueError: if ``input_shape`` is missing, ``mask`` does not fit, or
        ``dtype`` is 64-bit while ``jax_enable_x64`` is off.

    Examples:
      >>> import jax.numpy as jnp
      >>> params = {"a": jnp.array([[1.0], [-2.0]]), "b": jnp.array([[3.0]])}
      >>> f = lambda p, s, x: x @ p["a"] @ p["b"]   # R = (1 + 2) * 3 = 9
      >>> s = synflow_scores(f, params, None, (2,))
      >>> s["a"].ravel().tolist(), s["b"].ravel().tolist()   # each layer sums to R
      ([3.0, 6.0], [9.0])

    References:
      Tanaka, Kunin, Yamins & Ganguli 2020, "Pruning neural networks without any
      data by iteratively conserving synaptic flow", arXiv:2006.05467.
    """
    if input_shape is None:
        raise ValueError(
            "input_shape: synflow needs the shape of one input example "
            "(e.g. dataset.input_shape), got None"
        )
    input_shape = tuple(int(d) for d in input_shape)
    if dtype is not None:
        dtype = jnp.dtype(dtype)
        if dtype.itemsize == 8 and not jax.config.jax_enable_x64:
            raise ValueError(
                f"dtype: {dtype} needs 64-bit JAX; call inside "
                "`with jax.enable_x64(True):` (lotto_jax.pai.synflow does it for you)"
            )
    mask = _full_mask(params, mask)
    theta = _abs_floating(params, dtype)
    state = _abs_floating({} if model_state is None else model_state, dtype)
    if rescale:
        def scale(path, t, m):
            if not prunable(path, t):
                return t
            total = jnp.sum(jnp.where(m, t, 0))
            c = jnp.where(total > 0, jnp.shape(t)[-1] / jnp.where(total > 0, total, 1), 1)
            return t * jax.lax.stop_gradient(c).astype(t.dtype)

        theta = jax.tree_util.tree_map_with_path(scale, theta, mask)
    x_dtype = dtype or jnp.result_type(*[
        x for x in jax.tree.leaves(theta) if jnp.issubdtype(jnp.result_type(x), jnp.floating)
    ] or [jnp.float32])
    ones = jnp.ones((1, *input_shape), x_dtype)

    def flow(t):
        out = apply_fn(apply_mask(t, mask), state, ones)
        return sum(jnp.sum(o) for o in jax.tree.leaves(out))

    grads = jax.grad(flow)(theta)
    return jax.tree.map(lambda g, t: jnp.abs(g * t), grads, theta)
