"""``lotto supermask``: one supermask search over frozen weights
(:class:`SupermaskConfig`, :func:`main`).

A short driver over the :mod:`lotto_jax.runs.engine`: the search is a trainer over
scores (``train.make_trainer(search, ...)``) whose "params" are the scores and whose
``model_state`` is the :class:`~lotto_jax.supermask.SearchState` (the frozen weights
ride in it). One unit, ``search``, holds every replicate stacked along the replicate
axis. Every arrow ends in the store, so a killed run resumes where it stopped (bit
for bit on CPU) and a rerun of a finished run trains and rewrites nothing.

Layout of a supermask run directory (items are orbax checkpoints with their
``.manifest.json``, :mod:`lotto_jax.runs.store`; a replicate axis leads every
array when ``--replicates S > 1``)::

  RUN/
    .lock                       the one writer (while it runs)
    config.json                 the resolved SupermaskConfig
    search/                     the search (one engine unit)
      init/                     its start: {"params": scores, "model_state": SearchState}
      checkpoints/step_N/       the latest mid-training TrainState (while unfinished)
      final/                    the trained {"params": scores, "model_state": SearchState}
      metrics.json              accuracies and curve (written last: the commit marker)
    export/                     the found network, as plain pytrees like the params
      mask/                     the found mask (boolean)
      signs/                    sign and signed methods: the learned signs (±1)
      ternary/                  signed method: the mask in {-1, 0, +1} (int8)
      scores/                   the trained scores
      weights/                  the frozen weights (the found network is
                                weights ⊙ mask, times signs for sign / signed)
      model_state/              the trained BatchNorm statistics (models with BN)
    results.json                the search's results (written last of all)

Restore the ticket with plain orbax::

  import orbax.checkpoint as ocp
  run = os.path.abspath("runs/supermask")
  mask = ocp.StandardCheckpointer().restore(f"{run}/export/mask")
  weights = ocp.StandardCheckpointer().restore(f"{run}/export/weights")
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import masks, prune, train
from lotto_jax import scores as scores_lib
from lotto_jax._supermask_core import _OTHER, _check_keep, _check_like, _choice
from lotto_jax._types import Params
from lotto_jax.runs import common
from lotto_jax.runs.common import RunConfig
from lotto_jax.runs.engine import Engine, Unit
from lotto_jax.runs.store import RunStore
from lotto_jax.runs.writer import Clock, WriteBehind
from lotto_jax.supermask import (
    METHODS,
    SCORE_INITS,
    SIGN_MASKS,
    WEIGHT_INITS,
    _neutral,
    bernoulli,
    default_train_config,
    edge_popup,
    export_mask,
    export_signs,
    export_ternary,
    export_weights,
    init_scores,
    init_state,
    init_weights,
    jackpot,
    jackpot_mask,
    jackpot_scores,
    sign,
    signed,
)

__all__ = ["MUTABLE_FIELDS", "SupermaskConfig", "load_params", "main"]

MUTABLE_FIELDS: tuple[str, ...] = (*common.STORE_FIELDS, "run.data_dir")
"""SupermaskConfig fields that may change when a run directory is resumed."""

_KEYS = ("weights", "scores", "sample", "mask", "eval")


@dataclasses.dataclass(frozen=True)
class SupermaskConfig(common.RunOptions):
    """A supermask search run (``lotto supermask``).

    Attributes:
      run: model, dataset, seeds and the scores' optimizer (defaults: edge-popup's
        from :func:`default_train_config`; pass another ``train`` for the others).
        ``--replicates S`` searches S replicates (seed ``seed + i``, data seed
        ``data_seed + i``) in one vmapped fit.
      method: ``edge-popup``, ``bernoulli``, ``sign``, ``jackpot`` (Lottery
        Jackpots: needs ``pretrained``) or ``signed`` (masks in {-1, 0, +1}).
      keep: fraction of weights kept: per layer for edge-popup, signed and the sign
        method's fixed mask; for jackpot over all prunable layers but the
        classifier (one global magnitude threshold; the classifier stays dense);
        and the fan-in scale of ``scaled-signed-constant``.
      weight_init: frozen random weights: ``kaiming-normal``, ``signed-constant``
        or ``scaled-signed-constant`` (the default: the paper's best, σ/sqrt(keep);
        ignored with ``pretrained``).
      score_init: ``kaiming-uniform`` or ``magnitude``; default: magnitude with
        ``pretrained``, kaiming-uniform otherwise. Not for jackpot (its scores
        are 1 where the start mask keeps, 0.99 where it prunes).
      pretrained: path of an orbax checkpoint with the params to search in (a
        params pytree, or a tree with a ``params`` entry), instead of random ones.
      sign_mask: scores of the sign method's fixed layerwise mask: ``random`` or
        ``magnitude`` (for pretrained or ``kaiming-normal`` weights: the signed
        constants all tie, which would make the mask positional).
      other_params: biases and normalisation parameters: ``neutral`` (zero biases,
        unit scales) or ``keep``; default: neutral for random weights, keep for
        pretrained ones.
      eval_samples: sampled masks evaluated at the end (Bernoulli only).
      out: the run directory (layout in the module docs): ``config.json``,
        ``search/{init,final,metrics.json}``, ``export/{mask,scores,weights,...}``,
        ``results.json``.
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
    out: str = dataclasses.field(default="runs/supermask", kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("method", _choice("method", self.method, METHODS))
        set_("keep", _check_keep("keep", self.keep))
        set_("weight_init", _choice("weight_init", self.weight_init, WEIGHT_INITS))
        if self.score_init is not None:
            set_("score_init", _choice("score_init", self.score_init, SCORE_INITS))
        set_("sign_mask", _choice("sign_mask", self.sign_mask, SIGN_MASKS))
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
        if self.method == "jackpot" and self.pretrained is None:
            raise ValueError(
                "pretrained: the jackpot method searches in trained weights; pass the "
                "orbax checkpoint of a trained network (e.g. RUN/train/final)"
            )
        if self.method == "jackpot" and self.score_init is not None:
            raise ValueError(
                f"score_init: the jackpot method starts from scores 1 (kept) / 0.99 "
                f"(pruned), not {self.score_init!r}; drop --score-init"
            )


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


def main(config: SupermaskConfig) -> dict[str, Any]:
    """Runs one supermask search in ``config.out`` (resuming what is there).

    The search trains as the engine's unit ``search`` (the layout is in the module
    docs); then the found network is exported (``export/``) and evaluated, and
    ``results.json`` is written last. A finished run is read back, not redone.
    The run holds ``config.out``'s lock until it returns or fails; with
    ``config.repair`` the store's corrupt units are discarded first
    (:func:`lotto_jax.runs.repair.repair`) and recomputed. Prints a table.

    Args:
      config: the :class:`SupermaskConfig`.

    Returns:
      The results dict of ``results.json``: ``method``, ``keep``,
      ``density`` (overall) and ``layer_density``, ``final_test_accuracy``,
      ``best_test_accuracy``, ``early_stop_*`` (with a validation split),
      ``exported_test_accuracy`` (the exported mask on the plain model),
      ``baselines`` (``all_ones``: the frozen weights with no search; ``shuffled``:
      the found mask shuffled per layer, all but sign and signed; ``magnitude``,
      jackpot only: the start mask, one-shot magnitude pruning) and, for
      Bernoulli, ``expected_test_accuracy``, ``threshold_test_accuracy`` and
      ``sampled_test_accuracy`` (mean, and ``sampled_test_accuracies``). With
      replicates, a list wherever the replicates differ.
    """
    results = common.run_in_store(config, MUTABLE_FIELDS,
                                  lambda store: _Search(config, store).run())
    _print_table(results)
    return results


def _keys(seed: int) -> dict[str, jax.Array]:
    """Replicate keys: frozen weights, scores, Bernoulli samples, masks, evaluation."""
    base = jax.random.key(seed)
    return {name: jax.random.fold_in(base, i + 1) for i, name in enumerate(_KEYS)}


class _Search:
    """One :func:`main` call: the start points, the engine's unit, the exports and
    the results of a run directory."""

    def __init__(self, c: SupermaskConfig, store: RunStore):
        self.c, self.store = c, store
        self.prep = common.prepare(c.run)
        self.n_rep = c.run.replicates
        self.other = c.other_params or ("keep" if c.pretrained else "neutral")
        self.score_init = c.score_init or ("magnitude" if c.pretrained else "kaiming-uniform")
        if c.method == "jackpot":
            self.score_init = "jackpot"
        apply_fn = train.classifier(self.prep.module)
        self.search = {
            "edge-popup": lambda: edge_popup(apply_fn, keep=c.keep),
            "bernoulli": lambda: bernoulli(apply_fn, evaluation="expected"),
            "sign": lambda: sign(apply_fn),
            "jackpot": lambda: jackpot(apply_fn),
            "signed": lambda: signed(apply_fn, keep=c.keep),
        }[c.method]()
        # read here, not under eval_shape (orbax restores with jax ops)
        self.pretrained = load_params(c.pretrained, self.prep.params) if c.pretrained else None
        self.target = jax.eval_shape(self._make_start)
        self.memo: dict[str, Any] = {}
        self.engine: Engine | None = None  # set by run()

    # ------------------------------------------------------------ start points
    def _start_of(self, seed: int) -> dict[str, Any]:
        """Replicate ``seed``'s start: initial scores and search state (frozen weights)."""
        c, prep, keys = self.c, self.prep, _keys(seed)
        params = prep.params if seed == c.run.seed else common.init_variables(
            prep.module, prep.dataset.input_shape, seed)["params"]
        if self.pretrained is not None:
            weights = self.pretrained
            if self.other == "neutral":
                weights = _neutral(weights, masks.default_prunable)
        else:
            weights = init_weights(params, key=keys["weights"], method=c.weight_init,
                                   keep=c.keep, other=self.other)
        if c.method == "jackpot":
            start = jackpot_mask(weights, c.keep)
            return {"params": jackpot_scores(start),
                    "model_state": init_state(weights, prep.model_state, mask=start)}
        scores = init_scores(weights, key=keys["scores"], method=self.score_init)
        if c.method in ("edge-popup", "signed"):
            state = init_state(weights, prep.model_state)
        elif c.method == "bernoulli":  # raw key data: a stored state holds no typed key
            state = init_state(weights, prep.model_state,
                               key=jax.random.key_data(keys["sample"]))
        else:
            ranking = (
                scores_lib.magnitude(weights) if c.sign_mask == "magnitude"
                else scores_lib.random(weights, key=keys["mask"])
            )
            fixed = prune.to_density(ranking, masks.init(weights), c.keep, scope="layerwise")
            state = init_state(weights, prep.model_state, mask=fixed)
        return {"params": scores, "model_state": state}

    def _make_start(self) -> dict[str, Any]:
        rows = [self._start_of(self.c.run.seed + i) for i in range(self.n_rep)]
        return rows[0] if self.n_rep == 1 else common.stack(rows)

    def _rows(self, tree) -> list[Any]:
        if self.n_rep == 1:
            return [tree]
        return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(self.n_rep)]

    def _stored(self, name: str, load) -> Any:
        if name not in self.memo:
            self.memo[name] = load()
        return self.memo[name]

    def start(self) -> dict[str, Any]:
        """The stored start point ``search/init`` (made and saved once)."""
        return self._stored("init", lambda: self.engine.load_or(
            "search/init", self.target, self._make_start))

    def final(self) -> dict[str, Any]:
        """The trained ``search/final``."""
        return self._stored("final", lambda: self.engine.final("search", self.target))

    # ----------------------------------------------------------------- running
    def run(self) -> dict[str, Any]:
        """The search (resumed or kept), then the exports and results still missing."""
        c, prep = self.c, self.prep
        stacked = self.n_rep > 1
        trainer = train.make_trainer(self.search, c.run.train,
                                     num_train=prep.dataset.train.x.shape[0])
        data_key = (common.replicate_data_keys(c.run.data_seed, self.n_rep) if stacked
                    else prep.data_key)
        clock = Clock()
        writer = WriteBehind(self.store, clock)
        engine = functools.partial(Engine, trainer, prep.dataset, data_key, stacked=stacked,
                                   save_every=c.save_every, save_interval=c.save_interval,
                                   clock=clock)
        try:
            self.engine = engine(writer)
            ones = jax.tree.map(lambda s: jnp.ones(s.shape, bool), self.target["params"])
            unit = Unit("search", c.method, self.start, ones)
            (done,) = self.engine.run([unit], lambda names: f"supermask {c.method}",
                                      metrics_fn=lambda u, res: res.metrics())
            writer.close()  # every write of the search lands before the exports
        except BaseException:
            writer.close(raise_errors=False)
            raise
        self.engine = engine(self.store)  # the exports and results: written in place
        if done.final is not None:
            self.memo["final"] = done.final
        self._export()
        if not self.store.exists("results.json"):
            self.store.write_json("results.json", self._results())
        return self.store.read_json("results.json")

    def _export(self) -> None:
        """Saves the export items the store lacks (all derive from ``search/final``)."""
        names = ["mask", *(["signs"] if self.c.method in ("sign", "signed") else []),
                 *(["ternary"] if self.c.method == "signed" else []), "scores", "weights"]
        if jax.tree.leaves(self.target["model_state"].model_state):
            names.append("model_state")
        missing = [n for n in names if not self.store.has(f"export/{n}")]
        if not missing:
            return
        final = self.final()
        state = final["model_state"]
        trees = {**_mask_and_signs(self.search, final["params"], state, self.n_rep > 1),
                 "scores": final["params"], "weights": state.weights,
                 "model_state": state.model_state}
        for name in missing:
            self.store.save(f"export/{name}", trees[name])

    # ----------------------------------------------------------------- results
    def _results(self) -> dict[str, Any]:
        c = self.c
        metrics = self.store.read_json("search/metrics.json")
        starts, finals = self._rows(self.start()), self._rows(self.final())
        evaluate = _Evaluator(self.prep, self.search)
        per_rep = [
            evaluate(c, i, _keys(c.run.seed + i), starts[i], finals[i],
                     _replica(metrics, i, self.n_rep))
            for i in range(self.n_rep)
        ]
        return {
            "method": c.method,
            "keep": c.keep,
            "weight_init": None if c.pretrained else c.weight_init,
            "score_init": self.score_init,
            "pretrained": c.pretrained,
            "replicates": self.n_rep,
            **(per_rep[0] if self.n_rep == 1 else _merge_replicates(per_rep)),
        }


@functools.partial(jax.jit, static_argnums=(0, 3))
def _mask_and_signs(search, scores, state, stacked: bool) -> dict[str, Any]:
    """The found mask, signs and ternary mask (per replicate when ``stacked``)."""
    def one(s, st):
        return {"mask": export_mask(search, s, st), "signs": export_signs(search, s, st),
                "ternary": export_ternary(search, s, st)}

    return jax.vmap(one)(scores, state) if stacked else one(scores, state)


def _replica(metrics: dict[str, Any], i: int, n_rep: int) -> dict[str, Any]:
    """Replicate ``i``'s accuracies from the search's ``metrics.json``."""
    at = (lambda v: v) if n_rep == 1 else (lambda v: None if v is None else v[i])
    keys = ("final_test_accuracy", "best_test_accuracy", "early_stop_step",
            "early_stop_test_accuracy")
    return {**{k: at(metrics[k]) for k in keys},
            "initial_test_accuracy": at(metrics["curve"][0]["test_accuracy"])}


class _Evaluator:
    """The accuracies of one replicate's found network on the test split."""

    def __init__(self, prep: common.Prepared, search):
        self.prep, self.search = prep, search
        self.x, self.y = jnp.asarray(prep.dataset.test.x), jnp.asarray(prep.dataset.test.y)
        self.all_true = jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), prep.params)
        self.export = jax.jit(lambda s, st, key: (
            export_mask(search, s, st, key=key),
            export_weights(search, s, st, key=key),
        ))

    def accuracy(self, params, model_state) -> float:
        st = train.TrainState(jnp.zeros((), jnp.int32), params, model_state, None)
        return float(self.prep.trainer.evaluate(st, self.all_true, self.x, self.y)[1])

    def __call__(self, c: SupermaskConfig, i: int, keys, start, final, fit) -> dict[str, Any]:
        scores, state = final["params"], final["model_state"]
        mask, found = self.export(scores, state, None)
        rows = masks.summary(mask)
        res: dict[str, Any] = {
            "density": masks.density(mask),
            "layer_density": {r.path: r.density for r in rows if r.prunable},
            **fit,
            "exported_test_accuracy": self.accuracy(found, state.model_state),
            "baselines": {"all_ones": self.accuracy(start["model_state"].weights,
                                                    start["model_state"].model_state)},
        }
        if c.method == "jackpot":  # the start mask: one-shot magnitude pruning
            st = start["model_state"]
            res["baselines"]["magnitude"] = self.accuracy(
                masks.apply(st.weights, st.mask), st.model_state)
        if c.method not in ("sign", "signed"):
            shuffled = jax.jit(masks.shuffle)(mask, keys["mask"])
            res["baselines"]["shuffled"] = self.accuracy(
                masks.apply(state.weights, shuffled), state.model_state
            )
        if c.method == "bernoulli":
            sampled = [
                self.accuracy(self.export(scores, state,
                                          jax.random.fold_in(keys["eval"], j))[1],
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
