"""``lotto pai``: prune at initialisation, then train the sparse network and its
controls (:class:`PaiConfig`, :func:`main`).

A short driver over the :mod:`lotto_jax.runs.engine`: one unit per variant (the
method and each control), all trained together in one vmapped fit, every unit
persisted, so a killed run resumes where it stopped and a rerun trains nothing.

Layout of a PaI run directory (items are orbax checkpoints with their
``.manifest.json``, :mod:`lotto_jax.runs.store`)::

  RUN/
    .lock                       the one writer (while it runs)
    config.json                 the resolved PaiConfig
    init/                       θ0: {"params", "model_state"} (replicate axis when S > 1)
    variants/
      snip/                     the method (its name), then each control
        mask/                   the variant's mask (boolean pytree like params)
        checkpoints/step_N/     the latest mid-training TrainState (while unfinished)
        final/                  the trained {"params", "model_state"}
        metrics.json            the variant's results (written last: the commit marker)
      reinit/init/              reinit only: the fresh weights it trains from
      shuffle/ invert/ ...
    results.json                every variant's metrics.json together (the report)

Restore a mask or trained weights with plain orbax::

  import orbax.checkpoint as ocp
  mask = ocp.StandardCheckpointer().restore(os.path.abspath("runs/pai/variants/synflow/mask"))
  final = ocp.StandardCheckpointer().restore(os.path.abspath("runs/pai/variants/synflow/final"))
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import masks as masks_lib
from lotto_jax import scores as scores_lib
from lotto_jax import structured, train
from lotto_jax._types import Mask
from lotto_jax.pai import (
    CONTROLS,
    METHODS,
    _check_choice,
    _check_density,
    _check_rounds,
    collapsed_layers,
    prune_at_init,
    reinit,
    shuffle,
)
from lotto_jax.runs import common
from lotto_jax.runs.engine import Done, Engine, Unit, abstract
from lotto_jax.runs.store import RunStore
from lotto_jax.runs.writer import Clock, WriteBehind

__all__ = ["MUTABLE_FIELDS", "PaiConfig", "main"]

MUTABLE_FIELDS: tuple[str, ...] = (*common.STORE_FIELDS, "controls", "run.data_dir")
"""PaiConfig fields that may change when a run directory is resumed (a control
added to a finished run trains only the new variant)."""


@dataclasses.dataclass(frozen=True)
class PaiConfig(common.RunOptions):
    """Prune at initialisation, then train the sparse network and its controls.

    Attributes:
      run: model, data, seeds and training; ``--replicates S`` prunes and trains S
        replicates (init seed ``seed + i``) together, results as mean ± std.
      method: the pruning method: random, magnitude, snip, grasp or synflow.
      density: fraction of prunable weights kept, in (0, 1].
      scope: ``global`` (one threshold over all layers) or ``layerwise``.
      controls: sanity checks trained beside the method: shuffle (layerwise
        shuffle of the mask), reinit (same mask, fresh weights), invert (keep the
        lowest scores). May be extended on a finished run: only the new controls
        train.
      pai_rounds: pruning rounds (default: 100 for synflow, 1 otherwise).
      sample_per_class: labelled examples per class that snip and grasp score on
        (10 in Synaptic-Flow's code; drawn at random from the training split).
      prevent_collapse: keep the highest-scoring weight of any layer that pruning
        would empty.
      synflow_float64: compute SynFlow scores in float64 (against underflow on
        deep networks).
      structure: ``weight`` (unstructured, the default); ``neuron`` / ``channel``
        (the method's scores summed per unit: a neuron or conv channel with its
        bias and normalisation parameters; ``density`` is then the fraction of
        units kept; ``channel`` needs a conv net); ``layer`` (scores summed per
        residual block; ``density`` = fraction of blocks kept); or ``N:M`` like
        ``2:4`` (:mod:`lotto_jax.structured`). The shuffle control and
        ``prevent_collapse`` apply to ``weight`` only.
      out: the run directory (layout in the module docs): ``config.json``,
        ``init``, ``variants/<name>/{mask,final,metrics.json}``, ``results.json``.
    """

    run: common.RunConfig = dataclasses.field(default_factory=common.RunConfig)
    method: str = "synflow"
    density: float = 0.1
    scope: str = "global"
    controls: tuple[str, ...] = ()
    pai_rounds: int | None = None
    sample_per_class: int = 10
    prevent_collapse: bool = False
    synflow_float64: bool = False
    structure: str = "weight"
    out: str = dataclasses.field(default="runs/pai", kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        _check_choice("method", self.method, METHODS)
        _check_density(self.density)
        _check_choice("scope", self.scope, ("global", "layerwise"))
        for c in self.controls:
            _check_choice("controls", c, CONTROLS)
        if len(set(self.controls)) != len(self.controls):
            raise ValueError(f"controls: repeated entries in {self.controls}")
        if self.pai_rounds is not None:
            _check_rounds(self.pai_rounds)
        st = structured.parse(self.structure)
        if st.kind == "nm" and abs(self.density - st.n / st.m) > 1e-6:
            raise ValueError(f"density: structure {self.structure!r} keeps exactly "
                             f"{st.n}/{st.m} of the weights; pass --density "
                             f"{st.n / st.m:g}, got {self.density}")
        if st.kind != "weight":
            if "shuffle" in self.controls:
                raise ValueError(f"controls: 'shuffle' draws an unstructured mask; with "
                                 f"structure {self.structure!r} use reinit or invert")
            if self.prevent_collapse:
                raise ValueError(f"prevent_collapse: applies to structure 'weight' only, "
                                 f"got {self.structure!r}")
        if not isinstance(self.sample_per_class, int) or self.sample_per_class < 1:
            raise ValueError(
                f"sample_per_class: expected a positive int, got {self.sample_per_class!r}"
            )


def _layer_densities(mask: Mask) -> dict[str, float]:
    return {r.path: r.density for r in masks_lib.summary(mask) if r.prunable}


def _pct(v) -> str:
    if v is None:
        return "-"
    a = 100 * np.asarray(v, float)
    return f"{float(a):.2f}%" if a.ndim == 0 else f"{a.mean():.2f} ± {a.std():.2f}%"


def _print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    n_rep = results.get("replicates", 1)
    table = Table(title=f"pruning at init: {results['method']} at density "
                  f"{100 * results['density']:.2f}% ({results['scope']})"
                  + (f", {n_rep} replicates (mean ± std)" if n_rep > 1 else ""))
    for col in ("variant", "density", "collapsed", "final acc", "early-stop acc (step)",
                "best acc"):
        table.add_column(col, justify="left" if col in ("variant", "collapsed") else "right")
    for name, r in results["variants"].items():
        es = r["early_stop_test_accuracy"]
        step = r["early_stop_step"]
        step = step if np.ndim(step) == 0 else f"{np.mean(step):.0f} ± {np.std(step):.0f}"
        table.add_row(
            name, _pct(r["density"]), ", ".join(r["collapsed_layers"]) or "-",
            _pct(r["final_test_accuracy"]),
            "-" if es is None else f"{_pct(es)} ({step})",
            _pct(r["best_test_accuracy"]),
        )
    Console(file=sys.stdout).print(table)


def _collapsed(mask: Mask, topology) -> list[str]:
    """The collapsed layers, less those of residual blocks removed on purpose
    (``--structure layer``: such a block is the identity, not a disconnection)."""
    names = collapsed_layers(mask)
    if topology is None or not topology.blocks:
        return names
    kept = structured.kept_blocks(mask, topology)
    removed = {p for b in topology.blocks if not bool(kept[b.name]) for p in b.leaves}
    return [n for n in names if n not in removed]


def _variant_entry(control, replica_masks: list[Mask], fit: train.FitResult,
                   topology=None) -> dict[str, Any]:
    """A variant's ``metrics.json`` (its results.json entry; lists over replicates
    when several)."""
    collapsed = [_collapsed(m, topology) for m in replica_masks]
    layer = [_layer_densities(m) for m in replica_masks]
    entry: dict[str, Any] = {
        "control": control,
        "density": float(np.mean([masks_lib.density(m) for m in replica_masks])),
        "layer_densities": layer[0] if len(layer) == 1
        else {k: [d[k] for d in layer] for k in layer[0]},
        # layers collapsed in any replicate, in tree order
        "collapsed_layers": collapsed[0] if len(collapsed) == 1
        else [k for k in layer[0] if any(k in c for c in collapsed)],
    }
    if len(replica_masks) > 1:
        entry["collapsed_layers_per_replicate"] = collapsed
    return {**entry, **fit.metrics()}


def _jsonable(tree: Any) -> Any:
    """Arrays and numpy scalars as lists and Python numbers (what JSON reads back)."""
    if isinstance(tree, dict):
        return {k: _jsonable(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_jsonable(v) for v in tree]
    if isinstance(tree, np.ndarray | np.generic | jax.Array):
        return np.asarray(tree).tolist()
    return tree


def _write_results(path: str, results: dict[str, Any]) -> None:
    """``results.json``, atomically, variants in run order (the method first)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, path)


def _unit_dir(name: str) -> str:
    """A variant's unit directory in the run, e.g. ``variants/shuffle``."""
    return f"variants/{name}"


class _Variants:
    """The method's and controls' masks and start points of one run, each made
    once and stored (``engine.load_or``): a resume reuses them bit for bit."""

    def __init__(self, c: PaiConfig, prep: common.Prepared, engine: Engine, data_keys):
        self.c, self.prep, self.engine, self.data_keys = c, prep, engine, data_keys
        self.n_rep = c.run.replicates
        theta0 = [(prep.variables if i == 0 else common.init_variables(
            prep.module, prep.dataset.input_shape, c.run.seed + i)) for i in range(self.n_rep)]
        theta0 = [{"params": v["params"],
                   "model_state": {k: x for k, x in v.items() if k != "params"}}
                  for v in theta0]
        self.weights_target = abstract(self._join(theta0))
        self.theta0 = engine.load_or("init", self.weights_target, lambda: self._join(theta0))
        self.mask_target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bool_),
                                        self.weights_target["params"])
        self.loss_fns: list[tuple[Any, Any]] = []  # (model_state, loss_fn): one compile each
        self.topology = structured.topology_for(c.structure, prep.module, prep.params)

    def _join(self, trees):
        return trees[0] if self.n_rep == 1 else common.stack(trees)

    def _rows(self, tree) -> list[Any]:
        if self.n_rep == 1:
            return [tree]
        return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(self.n_rep)]

    def _loss_for(self, model_state):
        train_apply = train.classifier(self.prep.module)
        for state, fn in self.loss_fns:
            if jax.tree.structure(state) == jax.tree.structure(model_state) and all(
                np.array_equal(a, b) for a, b in
                zip(jax.tree.leaves(state), jax.tree.leaves(model_state), strict=True)
            ):
                return fn
        fn = scores_lib.cross_entropy(lambda p, x: train_apply(p, model_state, x, False)[0])
        self.loss_fns.append((model_state, fn))
        return fn

    def _prune(self, i: int, theta, invert: bool) -> Mask:
        """Replicate ``i``'s mask by the method (its θ0, its keys and sample)."""
        c, ds = self.c, self.prep.dataset
        train_apply = train.classifier(self.prep.module)
        params, model_state = theta["params"], theta["model_state"]
        batches = None
        if c.method in ("snip", "grasp"):
            batches = scores_lib.sample_batches(
                ds.train.x, ds.train.y, key=jax.random.fold_in(self.data_keys[i], 1),
                num_classes=ds.num_classes, per_class=c.sample_per_class,
            )
        return prune_at_init(
            c.method, params=params, density=c.density, scope=c.scope,
            key=jax.random.fold_in(jax.random.key(c.run.seed + i), 1),
            loss_fn=self._loss_for(model_state),
            apply_fn=lambda p, s, x: train_apply(p, s, x, False)[0],
            model_state=model_state, batches=batches, input_shape=ds.input_shape,
            rounds=c.pai_rounds, dtype=jnp.float64 if c.synflow_float64 else None,
            invert=invert, prevent_collapse=c.prevent_collapse,
            structure=c.structure, topology=self.topology,
        )

    def _per_replicate(self, fn) -> Any:
        """``fn(i, θ0_i, key(seed + i))`` for every replicate, stacked."""
        return self._join([fn(i, t, jax.random.key(self.c.run.seed + i))
                           for i, t in enumerate(self._rows(self.theta0))])

    def mask(self, name: str, make) -> Mask:
        return self.engine.load_or(f"{_unit_dir(name)}/mask", self.mask_target, make)

    def units(self) -> list[Unit]:
        """The method's unit, then each control's, in ``config.controls`` order."""
        c = self.c
        method = self.mask(c.method, lambda: self._per_replicate(
            lambda i, t, _: self._prune(i, t, False)))
        units = [Unit(_unit_dir(c.method), c.method, self.theta0, method)]
        for name in c.controls:
            weights = self.theta0
            if name == "shuffle":
                mask = self.mask(name, lambda: self._join([
                    shuffle(m, key=jax.random.fold_in(jax.random.key(c.run.seed + i), 2))
                    for i, m in enumerate(self._rows(method))]))
            elif name == "reinit":
                mask = self.mask(name, lambda: method)
                weights = self._reinit_weights
            else:  # invert: the lowest scores
                mask = self.mask(name, lambda: self._per_replicate(
                    lambda i, t, _: self._prune(i, t, True)))
            units.append(Unit(_unit_dir(name), name, weights, mask))
        return units

    def _reinit_weights(self):
        """The reinit control's fresh weights, drawn with ``fold_in(key(seed + i), 3)``."""
        def draw(i, t, key):
            fresh = reinit(self.prep.module, self.prep.dataset.input_shape,
                           key=jax.random.fold_in(key, 3))
            return {"params": fresh["params"],
                    "model_state": {k: x for k, x in fresh.items() if k != "params"}}

        return self.engine.load_or(f"{_unit_dir('reinit')}/init", self.weights_target,
                                   lambda: self._per_replicate(draw))

    def metrics_fn(self, unit: Unit, fit: train.FitResult) -> dict[str, Any]:
        control = None if unit.name == self.c.method else unit.name
        host = jax.tree.map(np.asarray, unit.mask)
        return _jsonable(_variant_entry(control, self._rows(host), fit, self.topology))


def main(config: PaiConfig) -> dict[str, Any]:
    """Prunes θ0 with ``config.method``, trains it and each control, writes results.

    Steps: ``common.prepare`` (dataset, model, θ0, the trainer, compiled once and
    reused for every variant); the snip/grasp sample (``sample_per_class`` examples
    per class drawn with ``fold_in(data_key, 1)``); :func:`prune_at_init`; the
    controls (``shuffle`` with ``fold_in(key(seed), 2)``, ``reinit`` with
    ``fold_in(key(seed), 3)``, ``invert`` re-running the method inverted); then one
    :meth:`lotto_jax.runs.engine.Engine.run` that trains every variant together,
    vmapped (one compiled step; a single network trains unvmapped).

    With ``run.replicates = S > 1``, replicate ``i`` does all of this from its own
    θ0 (``init_variables(seed + i)``), keys ``key(seed + i)`` and data key
    ``key(data_seed + i)`` (the snip/grasp sample and the data order): the method
    scores and prunes each replicate's weights, and the ``variants × S`` networks
    train in that one vmapped step. Replicate 0 is the single run. With
    ``run.mesh`` the stacked state is placed on the mesh.

    The run directory (module docs) is resumable: a killed run resumes from its
    stored masks and latest checkpoints and ends bit for bit where an
    uninterrupted run would (on CPU); a finished variant is never retrained, so a
    control added to a finished run trains alone. ``results.json`` holds
    ``method``, ``density``, ``scope``, ``replicates`` and, per variant, the
    overall (mean) and per-layer densities, collapsed layers, final / early-stop /
    best test accuracy and the curve, each a list over replicates when ``S > 1``
    (plus ``collapsed_layers_per_replicate``; ``collapsed_layers`` lists the layers
    collapsed in any replicate). The masks and trained weights are the items
    ``variants/<name>/mask`` and ``variants/<name>/final`` (a leading replicate
    axis when ``S > 1``).

    The run holds ``config.out``'s lock until it returns or fails. With
    ``config.repair`` the store is first verified and its corrupt units
    discarded (:func:`lotto_jax.runs.repair.repair`).

    Args:
      config: the run.

    Returns:
      The results dict written to ``results.json``.
    """
    return common.run_in_store(config, MUTABLE_FIELDS, lambda store: _main(config, store))


def _main(c: PaiConfig, store: RunStore) -> dict[str, Any]:
    prep = common.prepare(c.run)
    n_rep = c.run.replicates
    data_keys = common.replicate_data_keys(c.run.data_seed, n_rep)
    clock = Clock()
    writer = WriteBehind(store, clock)
    try:
        engine = Engine(prep.trainer, prep.dataset, data_keys if n_rep > 1 else data_keys[0],
                        writer, stacked=n_rep > 1, mesh=prep.mesh, save_every=c.save_every,
                        save_interval=c.save_interval, clock=clock)
        variants = _Variants(c, prep, engine, data_keys)
        done: list[Done] = engine.run(variants.units(), "+".join,
                                      metrics_fn=variants.metrics_fn)
        writer.close()  # every unit committed before the results
    except BaseException:
        writer.close(raise_errors=False)
        raise
    results: dict[str, Any] = _jsonable({
        "method": c.method, "density": c.density, "scope": c.scope, "replicates": n_rep,
        "variants": {d.unit.name: d.metrics for d in done},
    })
    _write_results(store.path("results.json"), results)
    _print_table(results)
    return results
