"""Strong lottery tickets: supermask search over frozen weights.

A *supermask search* trains real-valued scores ``s`` (one per weight) and never the
weights ``W``. Each method is a pure transformation of the model's apply function
(:data:`lotto_jax.train.ApplyFn`): the returned :class:`Supermask` computes ``W_eff``
from ``(s, W)`` leaf by leaf and calls the model with it, so it works with any Flax
model, jits once and vmaps over seeds.

* :func:`edge_popup` (Ramanujan et al. 2020): ``W_eff = W ⊙ top-k(|s|)`` per layer,
  straight-through gradient ``∂L/∂M = (∂L/∂W_eff) ⊙ W``.
* :func:`bernoulli` (Zhou et al. 2019): ``W_eff = W ⊙ M``, ``M ~ Bernoulli(σ(s))``,
  one explicit key per step (``fold_in(key, t)``), straight-through the sample.
* :func:`sign` (HideNseek, Vallapuram et al. 2022): a fixed pruning-at-init mask and
  learned signs, ``W_eff = W ⊙ M ⊙ sign(s)``.
* :func:`jackpot` ("Lottery Jackpots", Zhang et al. 2021): pretrained ``W``, a
  global-magnitude start mask with the classifier dense (:func:`jackpot_mask`),
  scores 1 kept / 0.99 pruned (:func:`jackpot_scores`), ``W_eff = W ⊙ M`` with the
  current mask ``M`` changed after each score step only by the reference code's
  *short restriction* (:func:`short_restriction`): exact per-layer counts.
* :func:`signed` (Koster et al. 2022): ``W_eff = M ⊙ θ0``, ``M ∈ {−1, 0, +1}``:
  top-k of ``|s|`` per layer kept with ``sign(s)`` (our rule: the paper's is not in
  our sources), identity straight-through; :func:`export_ternary` gives ``M``.
* Any pretrained params pytree also works as ``W`` for the other methods, with
  ``init_scores(W, method="magnitude")``.

**Training with the project's loop.** The search's signature is
``search(scores, state, x, train) -> (logits, state)`` with a :class:`SearchState`
holding the frozen weights, the model's other collections (BatchNorm statistics),
the sign method's fixed mask, the Bernoulli key and a step counter. That is an
``ApplyFn`` whose params are the scores, so ``train.make_trainer(search, config)``
and ``train.fit`` train the scores alone (pass an all-``True`` mask over the
scores): the weights pass through every step bit-identical, and fit's curves,
early-stop iteration, callbacks and ``replicates=True`` vmapping come for free. The
Bernoulli key of training pass ``t`` is ``jax.random.fold_in(state.key, t)`` with
``t = state.count``, incremented by every ``train=True`` call: a pure function of
the state, checkpointed with it.

**Export.** :func:`export_mask` gives the found mask as an ordinary boolean pytree
(plus :func:`export_signs` for the sign method), so ``masks.apply(W, mask) * signs``
(:func:`export_weights`) reproduces the network exactly; it can be stored, compared
with IMP tickets (``masks.overlap``) or fine-tuned.

**Unprunable leaves.** Biases and normalisation parameters are never masked or
trained. With random weights they are set *neutral* by default
(``init_weights(other="neutral")``: BatchNorm/LayerNorm ``scale`` = 1, biases and
offsets = 0), which is the paper's bias-free layers and non-affine normalisation;
``other="keep"`` keeps the model's initial values. Running BatchNorm statistics
(``batch_stats`` of VGG/ResNet-20) are updated in training passes as usual and saved
with the result. Pretrained weights keep their biases unless ``other_params=
"neutral"`` is asked for.

**Default hyperparameters** (:func:`default_train_config`; tuned on MNIST-1D with the
500-unit MLP, 128-example batches, cosine schedule, SGD momentum 0.9):

===========  ======  ============  ==============================================
method       lr      weight decay  note
===========  ======  ============  ==============================================
edge-popup   0.1     5e-4          the paper's MNIST example
bernoulli    100     0             σ'(s) ≤ 1/4 shrinks the score gradients; the
                                   large rate is what makes the masks move
sign         0.1     5e-4          as edge-popup
jackpot      0.1     5e-4          the reference's CIFAR config (SGD, cosine)
signed       0.1     5e-4          as edge-popup
===========  ======  ============  ==============================================

References:
  Ramanujan et al. 2020, "What's Hidden in a Randomly Weighted Neural Network?",
  arXiv:1911.13299. Zhou et al. 2019, "Deconstructing Lottery Tickets: Zeros,
  Signs, and the Supermask", arXiv:1905.01067. Vallapuram et al. 2022, "HideNseek:
  Federated Lottery Ticket via Server-side Pruning and Sign Supermask",
  arXiv:2206.04385. Zhang et al. 2021, "Lottery Jackpots Exist in Pre-trained
  Models", arXiv:2104.08700. Koster, Grothe, Rettinger 2022, "Signing the
  Supermask: Keep, Hide, Invert", arXiv:2201.13361.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from lotto_jax import masks
from lotto_jax._supermask_core import (
    METHODS,
    SearchState,
    Supermask,
    _choice,
    _sign,
    bernoulli,
    edge_popup,
    export_mask,
    export_signs,
    export_weights,
    init_state,
    sample_mask,
    sign,
    topk_mask,
)
from lotto_jax._supermask_init import (
    SCORE_INITS,
    WEIGHT_INITS,
    init_scores,
    init_weights,
)
from lotto_jax._supermask_variants import (
    JACKPOT_SCORES,
    jackpot_mask,
    jackpot_scores,
    short_restriction,
)
from lotto_jax._types import Params, Prunable, Scores
from lotto_jax.masks import default_prunable
from lotto_jax.train import TrainConfig

__all__ = [
    "JACKPOT_SCORES",
    "METHODS",
    "SCORE_INITS",
    "SIGN_MASKS",
    "WEIGHT_INITS",
    "SearchState",
    "Supermask",
    "bernoulli",
    "default_train_config",
    "edge_popup",
    "export_mask",
    "export_signs",
    "export_ternary",
    "export_weights",
    "init_scores",
    "init_state",
    "init_weights",
    "jackpot",
    "jackpot_mask",
    "jackpot_scores",
    "sample_mask",
    "short_restriction",
    "sign",
    "signed",
    "topk_mask",
]

SIGN_MASKS: tuple[str, ...] = ("magnitude", "random")
"""How the sign method's fixed mask is drawn (``SupermaskConfig.sign_mask``)."""


def default_train_config(method: str = "edge-popup", **overrides: Any) -> TrainConfig:
    """The default optimizer of a search method (see the module's table).

    SGD with momentum 0.9 and a cosine schedule, 128-example batches, 2,000 steps;
    learning rate 0.1 and weight decay 5e-4 for edge-popup and sign (the paper's
    MNIST example), 100 and none for Bernoulli.

    Args:
      method: one of :data:`METHODS`.
      **overrides: :class:`~lotto_jax.train.TrainConfig` fields to change.

    Returns:
      The :class:`~lotto_jax.train.TrainConfig`.

    Examples:
      >>> default_train_config("bernoulli").lr
      100.0
    """
    method = _choice("method", method, METHODS)
    fields = dict(
        steps=2000, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9,
        weight_decay=5e-4, schedule="cosine", eval_every=200,
    )
    if method == "bernoulli":
        fields.update(lr=100.0, weight_decay=0.0)
    fields.update(overrides)
    return TrainConfig(**fields)


def _neutral(params: Params, prunable) -> Params:
    def leaf(path, p):
        if prunable(path, p):
            return p
        last = masks.path_str(path).rsplit("/", 1)[-1]
        return jnp.ones_like(p) if last == "scale" else jnp.zeros_like(p)

    return jax.tree_util.tree_map_with_path(leaf, params)


def jackpot(apply_fn: Any, *, prunable: Prunable = default_prunable) -> Supermask:
    """Lottery Jackpots (Zhang et al. 2021): a mask search in pretrained weights.

    ``W_eff = W ⊙ M`` with ``M`` the current binary mask, carried in ``state.mask``
    (start: :func:`~lotto_jax.supermask.jackpot_mask`, scores
    :func:`~lotto_jax.supermask.jackpot_scores`). Each forward pass first applies
    the short restriction (:func:`~lotto_jax.supermask.short_restriction`) of the
    current scores to ``state.mask``; a training pass stores the result, so the
    swap after score step ``t`` is the one the reference code makes after its
    ``optimizer.step()``. Backward straight-through: ``∂L/∂s = (∂L/∂W_eff) ⊙ W``.
    The per-layer kept counts never change; with a zero score learning rate the
    network is the one-shot magnitude-pruned one.

    Args:
      apply_fn: the model's ``apply_fn(params, model_state, x, train)``.
      prunable: which leaves are masked.

    Returns:
      A :class:`Supermask`; its state needs ``init_state(weights, mask=...)``.

    References:
      Zhang et al. 2021, "Lottery Jackpots Exist in Pre-trained Models",
      arXiv:2104.08700 (code ``zyxxmu/lottery-jackpots``).
    """
    return Supermask("jackpot", apply_fn, prunable=prunable)


def signed(
    apply_fn: Any,
    *,
    keep: float = 0.5,
    layer_keep: Mapping[str, float] | None = None,
    prunable: Prunable = default_prunable,
) -> Supermask:
    """Signed supermask (Koster et al. 2022): ``W_eff = M ⊙ θ0``, ``M ∈ {−1, 0, +1}``.

    Our three-level rule (the paper's is not in our sources): per layer the
    ``round(k·n)`` entries with the largest ``|s|`` are kept (edge-popup's top-k,
    ties by position) with ``M = sign(s)`` (``sign(0) := +1``), the rest hidden
    (``M = 0``). So ``|W_eff| ∈ {0, |θ0|}`` and the density is exactly edge-popup's.
    Backward: the identity straight-through estimator, ``∂L/∂s = ∂L/∂M = (∂L/∂W_eff)
    ⊙ θ0`` on every entry, kept or not: a score moves along ``+1 → 0 → −1`` (keep,
    hide, invert) as the loss asks.

    Args:
      apply_fn: the model's ``apply_fn(params, model_state, x, train)``.
      keep: fraction of each prunable leaf kept (nonzero), in (0, 1].
      layer_keep: ``{pattern: keep}`` overrides, as :func:`edge_popup`.
      prunable: which leaves are masked.

    Returns:
      A :class:`Supermask`.

    Examples:
      >>> import jax.numpy as jnp
      >>> apply_fn = lambda p, ms, x, train: (x @ p["w"], ms)
      >>> search = signed(apply_fn, keep=0.5)
      >>> state = init_state({"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])})
      >>> scores = {"w": jnp.array([[0.1, -0.9], [0.8, 0.2]])}
      >>> search.effective_weights(scores, state, train=False)["w"].tolist()
      [[0.0, -2.0], [3.0, 0.0]]

    References:
      Koster, Grothe, Rettinger 2022, "Signing the Supermask: Keep, Hide, Invert",
      arXiv:2201.13361.
    """
    return Supermask("signed", apply_fn, keep=keep, layer_keep=layer_keep,
                     prunable=prunable)


def export_ternary(search: Supermask, scores: Scores, state: SearchState) -> Params:
    """The found mask as int8 in ``{−1, 0, +1}``: ``export_mask · export_signs``.

    For the signed method this is the signed supermask ``M`` (``export_weights =
    M ⊙ θ0``); for the others it is the boolean mask as 0/1 (sign: ±1 on its fixed
    mask).

    Args:
      search: the :class:`Supermask` (deterministic methods; Bernoulli thresholded).
      scores: the trained scores.
      state: its :class:`SearchState`.

    Returns:
      An int8 pytree like the weights.

    Examples:
      >>> import jax.numpy as jnp
      >>> search = signed(lambda p, ms, x, train: (x @ p["w"], ms), keep=0.5)
      >>> st = init_state({"w": jnp.ones((2, 2))})
      >>> export_ternary(search, {"w": jnp.array([[0.1, -0.9], [0.8, -0.2]])}, st)["w"]
      Array([[ 0, -1],
             [ 1,  0]], dtype=int8)
    """
    mask = export_mask(search, scores, state)
    signs = export_signs(search, scores, state)
    return jax.tree.map(
        lambda m, g: jnp.where(m, _sign(g), jnp.zeros_like(g)).astype(jnp.int8), mask, signs
    )
