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
* Pretrained weights ("Lottery Jackpots", Zhang et al. 2021): any params pytree as
  ``W`` with ``init_scores(W, method="magnitude")``.

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
===========  ======  ============  ==============================================

References:
  Ramanujan et al. 2020, "What's Hidden in a Randomly Weighted Neural Network?",
  arXiv:1911.13299. Zhou et al. 2019, "Deconstructing Lottery Tickets: Zeros,
  Signs, and the Supermask", arXiv:1905.01067. Vallapuram et al. 2022, "HideNseek:
  Federated Lottery Ticket via Server-side Pruning and Sign Supermask",
  arXiv:2206.04385. Zhang et al. 2021, "Lottery Jackpots Exist in Pre-trained
  Models", arXiv:2104.08700.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lotto_jax import masks
from lotto_jax._supermask_core import (
    METHODS,
    SearchState,
    Supermask,
    _choice,
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
from lotto_jax._types import Params
from lotto_jax.train import TrainConfig

__all__ = [
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
    "export_weights",
    "init_scores",
    "init_state",
    "init_weights",
    "sample_mask",
    "sign",
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


