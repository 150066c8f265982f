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

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import common, masks, prune, train
from lotto_jax import scores as scores_lib
from lotto_jax._supermask_core import (
    _OTHER,
    METHODS,
    SearchState,
    Supermask,
    _check_keep,
    _check_like,
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
from lotto_jax.common import RunConfig
from lotto_jax.train import TrainConfig

__all__ = [
    "METHODS",
    "SCORE_INITS",
    "WEIGHT_INITS",
    "SearchState",
    "Supermask",
    "SupermaskConfig",
    "bernoulli",
    "default_train_config",
    "edge_popup",
    "export_mask",
    "export_signs",
    "export_weights",
    "init_scores",
    "init_state",
    "init_weights",
    "load_params",
    "main",
    "sample_mask",
    "sign",
    "topk_mask",
]

_SIGN_MASKS = ("magnitude", "random")


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


@dataclasses.dataclass(frozen=True)
class SupermaskConfig:
    """A supermask search run (``lotto supermask``).

    Attributes:
      run: model, dataset, seeds and the scores' optimizer (defaults: edge-popup's
        from :func:`default_train_config`; pass another ``train`` for the others).
      method: ``edge-popup``, ``bernoulli`` or ``sign``.
      keep: fraction of weights kept per layer: edge-popup's k, the sign method's
        fixed-mask density, and the fan-in scale of ``scaled-signed-constant``.
      weight_init: frozen random weights: ``kaiming-normal``, ``signed-constant``
        or ``scaled-signed-constant`` (the default: the paper's best, σ/sqrt(keep);
        ignored with ``pretrained``).
      score_init: ``kaiming-uniform`` or ``magnitude``; default: magnitude with
        ``pretrained``, kaiming-uniform otherwise.
      pretrained: path of an orbax checkpoint with the params to search in (a
        params pytree, or a tree with a ``params`` entry), instead of random ones.
      sign_mask: scores of the sign method's fixed layerwise mask: ``random`` or
        ``magnitude`` (for pretrained or ``kaiming-normal`` weights: the signed
        constants all tie, which would make the mask positional).
      other_params: biases and normalisation parameters: ``neutral`` (zero biases,
        unit scales) or ``keep``; default: neutral for random weights, keep for
        pretrained ones.
      eval_samples: sampled masks evaluated at the end (Bernoulli only).
      out: output directory (config, metrics, results, orbax checkpoints).
      recipe: a named preset of the papers' settings (``lotto recipes``): its
        values are the defaults of every other flag, which override them.
    """

    run: RunConfig = dataclasses.field(
        default_factory=lambda: RunConfig(train=default_train_config("edge-popup"))
    )
    method: str = "edge-popup"
    keep: float = 0.5
    weight_init: str = "scaled-signed-constant"
    score_init: str | None = None
    pretrained: str | None = None
    sign_mask: str = "random"
    other_params: str | None = None
    eval_samples: int = 5
    out: str = "runs/supermask"
    recipe: str | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("method", _choice("method", self.method, METHODS))
        set_("keep", _check_keep("keep", self.keep))
        set_("weight_init", _choice("weight_init", self.weight_init, WEIGHT_INITS))
        if self.score_init is not None:
            set_("score_init", _choice("score_init", self.score_init, SCORE_INITS))
        set_("sign_mask", _choice("sign_mask", self.sign_mask, _SIGN_MASKS))
        if self.other_params is not None:
            set_("other_params", _choice("other_params", self.other_params, _OTHER))
        if not isinstance(self.eval_samples, int) or self.eval_samples < 1:
            raise ValueError(f"eval_samples: expected a positive int, got {self.eval_samples!r}")
        if (
            self.method == "sign"
            and self.sign_mask == "magnitude"
            and self.pretrained is None
            and self.weight_init != "kaiming-normal"
        ):
            raise ValueError(
                f"sign_mask: 'magnitude' on {self.weight_init} weights ranks equal "
                "magnitudes (ties kept by position); use 'random', kaiming-normal "
                "weights or pretrained ones"
            )
        if self.pretrained is not None and not os.path.exists(self.pretrained):
            raise ValueError(f"pretrained: no checkpoint at {self.pretrained!r}")


def load_params(path: str, like: Params) -> Params:
    """Restores a params pytree shaped like ``like`` from an orbax checkpoint.

    The checkpoint may hold the params themselves or a tree with a ``params`` entry
    (linen variables, a train state as a dict). Nothing goes through pickle.

    Args:
      path: the checkpoint directory (``orbax.checkpoint.StandardCheckpointer``).
      like: params with the expected structure and shapes (the model's init).

    Returns:
      The restored params, cast to ``like``'s dtypes.

    Raises:
      ValueError: no checkpoint there, or its tree does not fit ``like`` (naming the
        first offending key path).
    """
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"pretrained: no orbax checkpoint directory at {path!r}")
    tree = ocp.StandardCheckpointer().restore(path)
    if (
        isinstance(tree, dict)
        and "params" in tree
        and jax.tree.structure(tree) != jax.tree.structure(like)
    ):
        tree = tree["params"]
    _check_like(like, tree, f"pretrained ({path})")
    return jax.tree.map(lambda x, r: jnp.asarray(x, jnp.result_type(r)), tree, like)


def _neutral(params: Params, prunable) -> Params:
    def leaf(path, p):
        if prunable(path, p):
            return p
        last = masks.path_str(path).rsplit("/", 1)[-1]
        return jnp.ones_like(p) if last == "scale" else jnp.zeros_like(p)

    return jax.tree_util.tree_map_with_path(leaf, params)


def _save(directory: str, name: str, tree: Any) -> str:
    import orbax.checkpoint as ocp

    path = os.path.join(directory, name)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, tree, force=True)
    ckptr.wait_until_finished()
    return path


def main(config: SupermaskConfig) -> dict[str, Any]:
    """Runs one supermask search and writes its results.

    Writes into ``config.out``: ``config.json``, ``metrics.jsonl`` (the curve),
    ``results.json`` and orbax checkpoints ``mask`` (the found mask), ``signs``
    (sign method), ``scores``, ``weights`` (the frozen weights) and ``model_state``
    (if the model has BatchNorm statistics). Prints a table.

    Args:
      config: the :class:`SupermaskConfig`.

    Returns:
      The results dict written to ``results.json``: ``method``, ``keep``,
      ``density`` (overall) and ``layer_density``, ``final_test_accuracy``,
      ``best_test_accuracy``, ``early_stop_*`` (with a validation split),
      ``exported_test_accuracy`` (the exported mask on the plain model),
      ``baselines`` (``all_ones``: the frozen weights with no search; ``shuffled``:
      the found mask shuffled per layer, edge-popup and Bernoulli) and, for
      Bernoulli, ``expected_test_accuracy``, ``threshold_test_accuracy`` and
      ``sampled_test_accuracy`` (mean, and ``sampled_test_accuracies``).
    """
    c = config
    out = os.path.abspath(c.out)
    os.makedirs(out, exist_ok=True)
    common.write_config(c, out)
    prep = common.prepare(c.run)
    prunable = masks.default_prunable
    other = c.other_params or ("keep" if c.pretrained else "neutral")
    score_init = c.score_init or ("magnitude" if c.pretrained else "kaiming-uniform")
    apply_fn = train.classifier(prep.module)
    search = {
        "edge-popup": lambda: edge_popup(apply_fn, keep=c.keep),
        "bernoulli": lambda: bernoulli(apply_fn, evaluation="expected"),
        "sign": lambda: sign(apply_fn),
    }[c.method]()

    def setup(seed: int):
        """Frozen weights, initial scores, search state and keys of one replicate."""
        base = jax.random.key(seed)
        keys = dict(zip(("weights", "scores", "sample", "mask", "eval"),
                        (jax.random.fold_in(base, i) for i in range(1, 6)), strict=True))
        params = common.init_variables(prep.module, prep.dataset.input_shape, seed)["params"]
        if c.pretrained:
            weights = load_params(c.pretrained, params)
            if other == "neutral":
                weights = _neutral(weights, prunable)
        else:
            weights = init_weights(
                params, key=keys["weights"], method=c.weight_init, keep=c.keep, other=other
            )
        scores = init_scores(weights, key=keys["scores"], method=score_init)
        if c.method == "edge-popup":
            state = init_state(weights, prep.model_state)
        elif c.method == "bernoulli":
            state = init_state(weights, prep.model_state, key=keys["sample"])
        else:
            ranking = (
                scores_lib.magnitude(weights) if c.sign_mask == "magnitude"
                else scores_lib.random(weights, key=keys["mask"])
            )
            fixed = prune.to_density(ranking, masks.init(weights), c.keep, scope="layerwise")
            state = init_state(weights, prep.model_state, mask=fixed)
        return scores, state, keys

    x_test, y_test = jnp.asarray(prep.dataset.test.x), jnp.asarray(prep.dataset.test.y)
    all_true = jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), prep.params)

    def accuracy(params, model_state) -> float:
        st = train.TrainState(jnp.zeros((), jnp.int32), params, model_state, None)
        return float(prep.trainer.evaluate(st, all_true, x_test, y_test)[1])

    trainer = train.make_trainer(search, c.run.train, num_train=prep.dataset.train.x.shape[0])
    metrics_path = os.path.join(out, "metrics.jsonl")
    if os.path.exists(metrics_path):
        os.remove(metrics_path)
    n_rep = c.run.replicates
    reps = [setup(c.run.seed + i) for i in range(n_rep)]
    ones = jax.tree.map(lambda s: jnp.ones(jnp.shape(s), bool), reps[0][0])
    starts = [trainer.init(sc, st) for sc, st, _ in reps]
    if n_rep == 1:
        start, mask_in, data_key = starts[0], ones, prep.data_key
    else:  # replicate i: seed + i, data seed + i, trained in one vmapped step
        start, mask_in = common.stack(starts), common.stack([ones] * n_rep)
        data_key = common.replicate_data_keys(c.run.data_seed, n_rep)
    final, fit = train.fit(
        trainer, start, mask_in, prep.dataset, data_key=data_key, replicates=n_rep > 1,
        metrics_path=metrics_path, description=f"supermask {c.method}",
    )
    export = jax.jit(
        lambda s, st, key: (
            export_mask(search, s, st, key=key), export_weights(search, s, st, key=key)
        )
    )
    pick = (lambda t, i: t) if n_rep == 1 else (lambda t, i: jax.tree.map(lambda x: x[i], t))
    at = (lambda v, i: v) if n_rep == 1 else (lambda v, i: None if v is None else v[i])

    def replicate_results(i: int) -> dict[str, Any]:
        scores, state = pick(final.params, i), pick(final.model_state, i)
        keys = reps[i][2]
        mask, found = export(scores, state, None)
        rows = masks.summary(mask)
        res: dict[str, Any] = {
            "density": masks.density(mask),
            "layer_density": {r.path: r.density for r in rows if r.prunable},
            "final_test_accuracy": at(fit.final_test_accuracy, i),
            "best_test_accuracy": at(fit.best_test_accuracy, i),
            "early_stop_step": at(fit.early_stop_step, i),
            "early_stop_test_accuracy": at(fit.early_stop_test_accuracy, i),
            "initial_test_accuracy": at(fit.curve[0].test_accuracy, i),
            "exported_test_accuracy": accuracy(found, state.model_state),
            "baselines": {"all_ones": accuracy(reps[i][1].weights, reps[i][1].model_state)},
        }
        if c.method != "sign":
            shuffled = jax.jit(masks.shuffle)(mask, keys["mask"])
            res["baselines"]["shuffled"] = accuracy(
                masks.apply(state.weights, shuffled), state.model_state
            )
        if c.method == "bernoulli":
            sampled = [
                accuracy(export(scores, state, jax.random.fold_in(keys["eval"], j))[1],
                         state.model_state)
                for j in range(c.eval_samples)
            ]
            res.update(
                expected_test_accuracy=res["final_test_accuracy"],
                threshold_test_accuracy=res["exported_test_accuracy"],
                sampled_test_accuracy=float(np.mean(sampled)),
                sampled_test_accuracies=sampled,
            )
        return res

    per_rep = [replicate_results(i) for i in range(n_rep)]
    results: dict[str, Any] = {
        "method": c.method,
        "keep": c.keep,
        "weight_init": None if c.pretrained else c.weight_init,
        "score_init": score_init,
        "pretrained": c.pretrained,
        "replicates": n_rep,
        **(per_rep[0] if n_rep == 1 else _merge_replicates(per_rep)),
    }
    scores, state = final.params, final.model_state
    mask = export_mask(search, scores, state) if n_rep == 1 else jax.vmap(
        lambda s, st: export_mask(search, s, st))(scores, state)
    _save(out, "mask", mask)
    if c.method == "sign":
        signs = export_signs(search, scores, state) if n_rep == 1 else jax.vmap(
            lambda s, st: export_signs(search, s, st))(scores, state)
        _save(out, "signs", signs)
    _save(out, "scores", scores)
    _save(out, "weights", state.weights)
    if jax.tree.leaves(state.model_state):
        _save(out, "model_state", state.model_state)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    _print_table(results)
    return results


def _merge_replicates(per_rep: list[dict[str, Any]]) -> dict[str, Any]:
    """One results dict from per-replicate ones: lists where the replicates differ."""
    out: dict[str, Any] = {}
    for key, first in per_rep[0].items():
        values = [r[key] for r in per_rep]
        if isinstance(first, dict):
            out[key] = _merge_replicates(values)
        else:
            out[key] = first if all(v == first for v in values) else values
    return out


def _print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(v):
        if v is None:
            return "-"
        a = 100 * np.asarray(v, float)
        return f"{a.mean():.2f} ± {a.std():.2f}%" if a.ndim else f"{float(a):.2f}%"

    table = Table(title=f"supermask search: {results['method']}, keep {results['keep']}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for name, value in results["layer_density"].items():
        table.add_row(f"density {name}", pct(value))
    table.add_row("density (prunable total)", pct(results["density"]))
    for key in (
        "initial_test_accuracy", "final_test_accuracy", "best_test_accuracy",
        "early_stop_test_accuracy", "exported_test_accuracy",
        "threshold_test_accuracy", "sampled_test_accuracy",
    ):
        if key in results and results[key] is not None:
            table.add_row(key.replace("_", " "), pct(results[key]))
    for name, value in results["baselines"].items():
        table.add_row(f"baseline: {name.replace('_', ' ')}", pct(value))
    Console().print(table)
