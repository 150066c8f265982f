"""Sparse fine-tuning (LT-SFT) and skill localisation by grafting, as pure functions.

**LT-SFT** (Ansell et al. 2022). From pretrained weights θ0:

1. fully fine-tune θ0 → θ1 on the task (a fresh optimiser);
2. :func:`most_changed`: select the ``k`` entries with the largest ``|θ1 − θ0|``
   by the reference code's threshold rule (``|Δ| >= the k-th largest |Δ|``, so
   ties at the threshold can select more than ``k``);
3. reset *all* weights to θ0 and fine-tune only the selected ones (a fresh
   optimiser) → θ2, every other entry staying exactly θ0;
4. :func:`sparse_difference`: store φ = θ2 − θ0 sparsely (:class:`SparseDiff`).

Differences compose by addition (:func:`apply_differences`: θ0 + φ_a + φ_b).

Step 3 with :mod:`lotto_jax.train`. The trainer keeps *masked-out entries at
exactly 0*; LT-SFT wants them frozen at θ0 instead. So the trained parameter is
the difference δ (start 0) and the network sees θ0 + δ: :func:`difference_apply`
wraps an ``apply_fn`` so that ``params`` are δ and θ0 rides in ``model_state``
(:func:`difference_state`; never trained, vmapped and checkpointed with the
state). Under the selection mask the trainer keeps δ exactly 0 outside it, its
gradients and moments too; the gradient in δ is the gradient in θ at θ0 + δ, so
Adam on δ from 0 is Adam on θ from θ0 with the unselected gradients zeroed (the
reference's gradient hooks). :func:`sparse_weights` gives θ2 =
``where(mask, θ0 + δ, θ0)``: bit-equal to θ0 off the mask.

**Grafting** (Panigrahi et al. 2023). A *graft* of fine-tuned weights onto the
pretrained ones is θ(γ) = θ_pre + γ ⊙ (θ_ft − θ_pre) (:func:`graft`), with
γ = b + (1 − 2b) ⊙ σ(S − 10) (:func:`graft_gamma`): ``b`` is the base patch
(:func:`base_patch`, the top ``fraction`` of ``|θ_ft − θ_pre|``), ``S`` real
scores initialised U[0, 1) (:func:`init_scores`: γ ≈ b, σ(−9) ≈ 1.2e-4), which
descend the task loss (:func:`graft_step`, plain gradient descent with a large
learning rate: 1e7 in the reference scripts). The graft is evaluated with γ
rounded (:func:`rounded_gamma`): a binary region, the base patch with the
entries whose σ(S − 10) rounds to 1 flipped.

References:
  Ansell, Ponti, Korhonen & Vulić 2022, "Composable Sparse Fine-Tuning for
  Cross-Lingual Transfer", ACL, arXiv:2110.07560 (cambridgeltl/composable-sft,
  ``LotteryTicketSparseFineTuner``, ``unfreeze_k_most_changed_params``).
  Panigrahi, Saunshi, Zhao & Arora 2023, "Task-Specific Skill Localization in
  Fine-tuned Language Models", ICML, arXiv:2302.06600
  (Skill-Localization-by-grafting, ``graft_trainer.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import data as data_lib
from lotto_jax import masks
from lotto_jax._types import Mask, Params, PRNGKey, Prunable, Scores

__all__ = [
    "GRAFT_BIAS",
    "SparseDiff",
    "apply_differences",
    "base_patch",
    "count_k",
    "difference_apply",
    "difference_state",
    "graft",
    "graft_gamma",
    "graft_grad",
    "graft_step",
    "init_scores",
    "most_changed",
    "random_selection",
    "rounded_gamma",
    "select_classes",
    "sparse_difference",
    "sparse_weights",
    "to_dense",
]

GRAFT_BIAS = 10.0
"""The shift of the scores in γ = b + (1 − 2b) σ(S − 10) (the reference's)."""


# ------------------------------------------------------------------- selection
def _flat(tree: Any) -> tuple[list[Any], Any]:
    return jax.tree.flatten(tree)


def _selectable(theta: Params, prunable: Prunable) -> list[bool]:
    return jax.tree.leaves(masks.is_prunable_tree(theta, prunable))


def count_k(k: float, n: int, *, name: str = "k") -> int:
    """The count of a ``k`` given as a fraction in (0, 1) or a count >= 1.

    Args:
      k: a fraction of ``n`` (rounded half up, at least 1) or a whole count.
      n: the number of selectable entries.
      name: the argument named in errors.

    Raises:
      ValueError: ``k`` not positive, a count that is not whole, or larger than ``n``.

    Examples:
      >>> count_k(0.01, 1000), count_k(25, 1000), count_k(1e-9, 1000)
      (10, 25, 1)
    """
    if isinstance(k, bool) or not isinstance(k, int | float | np.integer | np.floating) \
            or not np.isfinite(k) or k <= 0:
        raise ValueError(f"{name}: expected a fraction in (0, 1) or a count >= 1, got {k!r}")
    if k < 1:
        return max(1, int(np.floor(k * n + 0.5)))
    if k != int(k):
        raise ValueError(f"{name}: a count must be whole, got {k!r}")
    if int(k) > n:
        raise ValueError(f"{name}: {int(k)} is larger than the number of weights ({n})")
    return int(k)


def most_changed(
    theta0: Params, theta1: Params, k: int, *, prunable: Prunable = masks.all_leaves
) -> Mask:
    """LT-SFT's selection: the entries that moved most, ``|θ1 − θ0|``.

    The reference rule (``unfreeze_k_most_changed_params``): over every entry of
    the selectable leaves, the threshold is the ``k``-th largest ``|θ1 − θ0|``
    and an entry is selected when its change is ``>=`` the threshold. So exactly
    ``k`` entries are selected unless several share the threshold value: then all
    of them are (more than ``k``). Non-selectable leaves get all-True masks (they
    train freely, as the reference's non-maskable parameters). Works under
    ``jit`` (``k`` static).

    Args:
      theta0: the weights before fine-tuning.
      theta1: the fully fine-tuned weights, shaped like ``theta0``.
      k: the number of entries to select, ``1 <= k <=`` the selectable entries.
      prunable: which leaves compete (default every leaf, the reference's).

    Returns:
      A boolean mask like ``theta0``.

    Raises:
      ValueError: trees that differ, or ``k`` out of range (naming ``k``).

    Examples:
      >>> import jax.numpy as jnp
      >>> t0 = {"w": jnp.zeros(5)}
      >>> t1 = {"w": jnp.array([0.1, -3.0, 0.5, 0.5, 0.2])}
      >>> most_changed(t0, t1, 2)["w"].tolist()  # ties at 0.5: three selected
      [False, True, True, True, False]
    """
    leaves0, treedef = _flat(theta0)
    leaves1, treedef1 = _flat(theta1)
    if treedef != treedef1 or any(jnp.shape(a) != jnp.shape(b)
                                  for a, b in zip(leaves0, leaves1, strict=True)):
        raise ValueError("theta1: expected the tree structure and shapes of theta0")
    sel = _selectable(theta0, prunable)
    n = sum(int(np.size(x)) for x, s in zip(leaves0, sel, strict=True) if s)
    if n == 0:
        raise ValueError("prunable: selects no leaf of theta0")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n:
        raise ValueError(f"k: expected an int in [1, {n}] (the selectable weights), "
                         f"got {k!r}")
    deltas = [jnp.abs(jnp.asarray(b) - jnp.asarray(a)) for a, b in zip(leaves0, leaves1,
                                                                        strict=True)]
    flat = jnp.concatenate([d.ravel() for d, s in zip(deltas, sel, strict=True) if s])
    threshold = jnp.sort(flat)[n - int(k)]
    out = [d >= threshold if s else jnp.ones(jnp.shape(d), bool)
           for d, s in zip(deltas, sel, strict=True)]
    return jax.tree.unflatten(treedef, out)


def random_selection(theta: Params, k: int, *, key: PRNGKey,
                     prunable: Prunable = masks.all_leaves) -> Mask:
    """The random-K control: exactly ``k`` selectable entries, uniformly at random
    (the top ``k`` of i.i.d. uniform scores); other leaves all-True."""
    sel = _selectable(theta, prunable)
    leaves, treedef = _flat(theta)
    n = sum(int(np.size(x)) for x, s in zip(leaves, sel, strict=True) if s)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n:
        raise ValueError(f"k: expected an int in [1, {n}] (the selectable weights), got {k!r}")
    u = jax.random.uniform(key, (n,))
    _, idx = jax.lax.top_k(u, int(k))
    chosen = jnp.zeros(n, bool).at[idx].set(True)
    out, offset = [], 0
    for x, s in zip(leaves, sel, strict=True):
        size = int(np.size(x))
        if s:
            out.append(chosen[offset:offset + size].reshape(jnp.shape(x)))
            offset += size
        else:
            out.append(jnp.ones(jnp.shape(x), bool))
    return jax.tree.unflatten(treedef, out)


# ------------------------------------------------------------ sparse differences
class SparseDiff(NamedTuple):
    """A sparse difference φ over a params tree, in flat coordinates.

    Attributes:
      indices: int32 positions in the concatenation of the tree's leaves, each
        raveled, in ``jax.tree.leaves`` order (sorted, distinct).
      values: the differences at those positions (float32).
    """

    indices: jax.Array
    values: jax.Array


def _concat(leaves) -> jax.Array:
    return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])


def sparse_difference(theta0: Params, theta: Params, mask: Mask | None = None) -> SparseDiff:
    """φ = θ − θ0 at its nonzero entries (within ``mask`` when given).

    The number of entries depends on the data, so this runs outside ``jit``.

    Examples:
      >>> import jax.numpy as jnp
      >>> d = sparse_difference({"a": jnp.zeros(2), "b": jnp.ones(2)},
      ...                       {"a": jnp.array([0.0, 2.0]), "b": jnp.array([1.0, 0.5])})
      >>> d.indices.tolist(), d.values.tolist()
      ([1, 3], [2.0, -0.5])
    """
    leaves0, treedef = _flat(theta0)
    leaves, treedef1 = _flat(theta)
    if treedef != treedef1:
        raise ValueError("theta: expected the tree structure of theta0")
    diff = _concat(leaves) - _concat(leaves0)
    keep = diff != 0
    if mask is not None:
        keep = keep & jnp.concatenate([jnp.ravel(m) for m in jax.tree.leaves(mask)])
    idx = jnp.flatnonzero(keep).astype(jnp.int32)
    return SparseDiff(idx, diff[idx])


def _check_diff(phi: Any, size: int, i: int) -> None:
    if not isinstance(phi, SparseDiff):
        raise ValueError(f"diffs[{i}]: expected a SparseDiff, got {type(phi).__name__}")
    if phi.indices.shape != phi.values.shape or phi.indices.ndim != 1:
        raise ValueError(f"diffs[{i}]: indices and values must be 1-D of one length")
    if phi.indices.size and not 0 <= int(jnp.min(phi.indices)) <= int(
            jnp.max(phi.indices)) < size:
        raise ValueError(f"diffs[{i}]: indices outside the {size} weights of theta0")


def apply_differences(theta0: Params, *diffs: SparseDiff) -> Params:
    """θ0 + φ_1 + φ_2 + ... (added in that order): LT-SFT's composition.

    Examples:
      >>> import jax.numpy as jnp
      >>> t0 = {"w": jnp.zeros(3)}
      >>> a = SparseDiff(jnp.array([0]), jnp.array([1.0]))
      >>> b = SparseDiff(jnp.array([0, 2]), jnp.array([0.5, 2.0]))
      >>> apply_differences(t0, a, b)["w"].tolist()
      [1.5, 0.0, 2.0]
    """
    leaves, treedef = _flat(theta0)
    flat = _concat(leaves)
    for i, phi in enumerate(diffs):
        _check_diff(phi, flat.size, i)
        flat = flat.at[phi.indices].add(phi.values.astype(flat.dtype))
    return _unflatten(flat, leaves, treedef)


def _unflatten(flat, leaves, treedef, dtype=None) -> Params:
    out, offset = [], 0
    for x in leaves:
        n = int(np.size(x))
        out.append(flat[offset:offset + n].reshape(jnp.shape(x))
                   .astype(dtype or jnp.result_type(x)))
        offset += n
    return jax.tree.unflatten(treedef, out)


def to_dense(phi: SparseDiff, like: Params) -> Params:
    """φ as a dense tree shaped like ``like`` (zeros off its support)."""
    leaves, treedef = _flat(like)
    flat = jnp.zeros(sum(int(np.size(x)) for x in leaves), jnp.float32)
    _check_diff(phi, flat.size, 0)
    return _unflatten(flat.at[phi.indices].set(phi.values), leaves, treedef)


# ------------------------------------------------- sparse fine-tuning by a δ
def difference_state(theta0: Params, model_state: Any = None) -> dict[str, Any]:
    """The ``model_state`` of :func:`difference_apply`: θ0 and the inner state."""
    return {"base": theta0, "inner": {} if model_state is None else model_state}


def difference_apply(apply_fn: Callable) -> Callable:
    """``apply_fn`` over a difference: ``params`` are δ, the network sees θ0 + δ.

    ``model_state`` is :func:`difference_state` (θ0 in ``"base"``: carried, never
    trained). With a mask, :mod:`lotto_jax.train` keeps δ exactly 0 off it:
    those weights stay at θ0 (module docs).
    """

    def wrapped(delta, model_state, x, train):
        base = model_state["base"]
        params = jax.tree.map(lambda b, d: b + d.astype(b.dtype), base, delta)
        logits, inner = apply_fn(params, model_state["inner"], x, train)
        return logits, {"base": base, "inner": inner}

    return wrapped


def sparse_weights(theta0: Params, delta: Params, mask: Mask) -> Params:
    """θ2 = θ0 + δ on the mask, exactly θ0 elsewhere."""
    return jax.tree.map(lambda b, d, m: jnp.where(m, b + d.astype(b.dtype), b),
                        theta0, delta, mask)


# --------------------------------------------------------------------- grafting
def base_patch(theta_pre: Params, theta_ft: Params, fraction: float) -> Mask:
    """The base patch b: the top ``fraction`` of all entries by ``|θ_ft − θ_pre|``.

    Exactly ``max(1, round(fraction · n))`` entries, ties broken towards the
    earlier position (``jax.lax.top_k``'s order) over the flattened leaves.

    Examples:
      >>> import jax.numpy as jnp
      >>> b = base_patch({"w": jnp.zeros(4)}, {"w": jnp.array([1.0, -4.0, 2.0, 2.0])}, 0.5)
      >>> b["w"].tolist()
      [False, True, True, False]
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) \
            or not 0 < fraction <= 1:
        raise ValueError(f"fraction: expected a value in (0, 1], got {fraction!r}")
    leaves0, treedef = _flat(theta_pre)
    leaves1, treedef1 = _flat(theta_ft)
    if treedef != treedef1:
        raise ValueError("theta_ft: expected the tree structure of theta_pre")
    flat = jnp.abs(_concat(leaves1) - _concat(leaves0))
    k = max(1, int(np.floor(fraction * flat.size + 0.5)))
    _, idx = jax.lax.top_k(flat, k)
    chosen = jnp.zeros(flat.size, bool).at[idx].set(True)
    return _unflatten(chosen, leaves0, treedef, bool)


def init_scores(theta: Params, *, key: PRNGKey) -> Scores:
    """Scores S ~ U[0, 1), one per entry (float32), a key per leaf."""
    leaves, treedef = _flat(theta)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.uniform(k, jnp.shape(x), jnp.float32)
                                        for k, x in zip(keys, leaves, strict=True)])


def graft_gamma(scores: Scores, base: Mask) -> Scores:
    """γ = b + (1 − 2b) ⊙ σ(S − 10): σ(S − 10) off the base patch, 1 − σ on it."""
    return jax.tree.map(
        lambda s, b: b.astype(s.dtype) + (1 - 2 * b.astype(s.dtype))
        * jax.nn.sigmoid(s - GRAFT_BIAS), scores, base)


def rounded_gamma(scores: Scores, base: Mask) -> Mask:
    """The binary region evaluated: γ with σ(S − 10) rounded (b XOR round σ)."""
    return jax.tree.map(lambda s, b: jnp.logical_xor(b, jax.nn.sigmoid(s - GRAFT_BIAS) > 0.5),
                        scores, base)


def graft(theta_pre: Params, theta_ft: Params, gamma: Any) -> Params:
    """θ(γ) = θ_pre + γ ⊙ (θ_ft − θ_pre); ``gamma`` real or boolean per entry.

    A boolean ``gamma`` selects exactly: θ_ft where True, θ_pre where False.
    """
    def one(p, f, g):
        if jnp.result_type(g) == jnp.bool_:
            return jnp.where(g, f, p)
        return p + g.astype(p.dtype) * (f - p)

    return jax.tree.map(one, theta_pre, theta_ft, gamma)


def graft_grad(loss_fn: Callable[[Params], jax.Array], scores: Scores, theta_pre: Params,
               theta_ft: Params, base: Mask) -> Scores:
    """∂ loss(θ(γ(S))) / ∂S = g ⊙ (θ_ft − θ_pre) ⊙ (1 − 2b) ⊙ σ′(S − 10)."""
    return jax.grad(lambda s: loss_fn(graft(theta_pre, theta_ft, graft_gamma(s, base))))(
        scores)


def graft_step(loss_fn: Callable[[Params], jax.Array], scores: Scores, theta_pre: Params,
               theta_ft: Params, base: Mask, *, lr: float) -> Scores:
    """One descent step of the scores: ``S − lr · graft_grad(...)`` (the reference's
    plain update; its scripts use lr 1e7)."""
    g = graft_grad(loss_fn, scores, theta_pre, theta_ft, base)
    return jax.tree.map(lambda s, d: s - lr * d, scores, g)


# ------------------------------------------------------------------ the tasks
def select_classes(dataset: data_lib.Dataset, classes: Sequence[int], *,
                   name: str = "classes") -> data_lib.Dataset:
    """The task of ``classes``: every split keeps those examples, in order.

    Labels are kept and so is ``num_classes``: the tasks share the full output
    head (digits 0-4 and 5-9 of MNIST train units 0-4 and 5-9 of one 10-way head).

    Raises:
      ValueError: naming ``name``: an empty, repeated or out-of-range class, or a
        split without an example of them.

    Examples:
      >>> import numpy as np
      >>> from lotto_jax.data import Dataset, Split
      >>> s = Split(np.arange(5, dtype=np.float32)[:, None], np.array([3, 0, 2, 1, 2], np.int32))
      >>> t = select_classes(Dataset("toy", s, None, s, (1,), 4, {}), [2, 3])
      >>> t.train.y.tolist(), t.train.x[:, 0].tolist(), t.num_classes
      ([3, 2, 2], [0.0, 2.0, 4.0], 4)
    """
    cls = [int(c) for c in classes]
    if not cls or len(set(cls)) != len(cls) or any(
            isinstance(c, bool) or not 0 <= c < dataset.num_classes for c in classes):
        raise ValueError(f"{name}: expected distinct classes in [0, {dataset.num_classes}), "
                         f"got {list(classes)}")

    def part(split: data_lib.Split | None, what: str):
        if split is None:
            return None
        keep = np.isin(split.y, cls)
        if not keep.any():
            raise ValueError(f"{name}: the {what} split has no example of classes {cls}")
        return data_lib.Split(split.x[keep], split.y[keep])

    return dataclasses.replace(
        dataset, name=f"{dataset.name}[{','.join(map(str, cls))}]",
        train=part(dataset.train, "train"), validation=part(dataset.validation, "validation"),
        test=part(dataset.test, "test"))
