"""``lotto imp``: the IMP command (:class:`ImpConfig`, :func:`main`).

It prepares the data and model from the config, draws the replicates' θ0 and keys,
and runs :func:`lotto_jax.runs.imp_loop.run_imp` in the run directory (resuming
what is there; ``--repair`` first discards corrupt units).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from lotto_jax import imp, masks, models, structured
from lotto_jax.runs import common
from lotto_jax.runs.imp_loop import TIMING_KEYS, ImpResult, RoundResult, run_imp
from lotto_jax.runs.store import RunStore

__all__ = [
    "MUTABLE_FIELDS",
    "TIMING_KEYS",
    "ImpConfig",
    "ImpResult",
    "RoundResult",
    "main",
    "run_imp",
]

MUTABLE_FIELDS: tuple[str, ...] = (
    *common.STORE_FIELDS, "rounds", "controls", "timing", "run.data_dir",
)
"""ImpConfig fields that may change when a run directory is resumed."""


@dataclasses.dataclass(frozen=True)
class ImpConfig(common.RunOptions):
    """An IMP run: ``lotto imp --model lenet300 --rounds 10 --rewind step:500``.

    Attributes:
      run: model, data, seeds and training of every round (``--replicates S``
        trains S replicate runs together, ``--mesh data=N`` spreads batches over
        devices).
      rounds: pruning rounds; rounds ``0..rounds`` are trained (round 0 dense).
        May be raised on an existing run to extend it.
      fraction: fraction of the surviving weights removed per round (Frankle &
        Carbin 2019: 0.2 for fully connected layers).
      output_fraction: fraction removed per round from the ``output`` layer (0.1 in
        Frankle & Carbin 2019); ``None`` prunes it like the others.
      scope: ``"layerwise"`` (each layer loses ``fraction`` of its survivors) or
        ``"global"`` (one threshold over all layers; the ``output`` layer is pruned
        on its own when ``output_fraction`` is set).
      rewind: ``"init"``, ``"step:K"``, ``"lr"`` or ``"finetune"`` (module docs).
      controls: any of ``reinit``, ``shuffle``, ``random``, run at every round >= 1,
        trained together in one vmapped step. Controls may be added to a finished
        run: the trunk is not retrained.
      prune_biases: prune biases too (every leaf), as the MNIST-1D lottery
        notebook does; by default only kernels (``ndim >= 2``).
      groups: what one layer is for ``scope="layerwise"``, ``output_fraction``
        and the shuffle / random controls: ``"layer"`` ranks a module's prunable
        leaves together (with ``prune_biases``, kernel and bias pooled: the
        notebook's rule); ``"leaf"`` ranks every leaf on its own. The same when
        only kernels are pruned.
      structure: what a round removes: ``weight`` (unstructured, the default),
        ``neuron`` / ``channel`` (whole units: a dense neuron or conv channel with
        its bias and normalisation parameters, ranked per layer by the L2 norm of
        its kernel weights; ``channel`` needs a conv net), ``layer`` (``fraction``
        of the remaining residual blocks, by their summed magnitudes; resmlp,
        resnet20) or ``N:M`` like ``2:4`` (:mod:`lotto_jax.structured`). The
        output layer has no units, so ``output_fraction`` applies to weights only;
        only the ``reinit`` control applies to a structure.
      timing: write each network's wall-time split (train, eval, prune,
        checkpoint) into its ``metrics.json`` and print the split per round.
      out: the run directory (its layout: :mod:`lotto_jax.runs.imp_loop`).
    """

    run: common.RunConfig = dataclasses.field(default_factory=common.RunConfig)
    rounds: int = 5
    fraction: float = 0.2
    output_fraction: float | None = 0.1
    scope: str = "layerwise"
    rewind: str = "init"
    controls: tuple[str, ...] = ()
    prune_biases: bool = False
    groups: str = "layer"
    structure: str = "weight"
    timing: bool = False
    out: str = dataclasses.field(default="runs/imp", kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.rounds, int) or self.rounds < 0:
            raise ValueError(f"rounds: expected an int >= 0, got {self.rounds!r}")
        if not 0 <= self.fraction < 1:
            raise ValueError(f"fraction: expected a value in [0, 1), got {self.fraction}")
        if self.output_fraction is not None and not 0 <= self.output_fraction < 1:
            raise ValueError(
                f"output_fraction: expected a value in [0, 1) or None, "
                f"got {self.output_fraction}"
            )
        if self.scope not in ("layerwise", "global"):
            raise ValueError(f"scope: expected 'layerwise' or 'global', got {self.scope!r}")
        if self.groups not in masks.GROUPINGS:
            raise ValueError(
                f"groups: expected one of {masks.GROUPINGS}, got {self.groups!r}"
            )
        imp._check_controls(self.controls)
        imp.parse_rewind(self.rewind, self.run.train.steps)
        if structured.parse(self.structure).kind != "weight" and \
                set(self.controls) - {"reinit"}:
            raise ValueError(
                f"controls: {sorted(set(self.controls) - {'reinit'})} draw unstructured "
                f"masks; with structure {self.structure!r} only 'reinit' applies"
            )


def _print_timing(timings: Sequence[Mapping[str, float]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="IMP wall time per round (s)")
    for h in ("round", *TIMING_KEYS, "total_s", "prune+ckpt %"):
        t.add_column(h, justify="right")
    for row in timings:
        share = 100 * (row["prune_s"] + row["checkpoint_s"]) / max(row["total_s"], 1e-9)
        t.add_row(str(row["round"]), *[f"{row[k]:.2f}" for k in (*TIMING_KEYS, "total_s")],
                  f"{share:.1f}")
    Console().print(t)


def main(config: ImpConfig) -> ImpResult:
    """Runs :class:`ImpConfig`: prepares data and model, runs IMP in ``config.out``
    (resuming what is there), prints the table and returns the result.

    With ``run.replicates = S > 1`` replicate ``i`` starts from
    ``init_variables(seed + i)``, reads data in the order of ``key(data_seed + i)``
    (:func:`lotto_jax.common.replicate_data_keys`) and draws its controls from
    ``fold_in(key(seed + i), 1)``: replicate 0 is the single run.

    The run holds ``config.out``'s lock until it returns or fails
    (:meth:`lotto_jax.store.RunStore.open`). With ``config.repair`` the store is
    first verified and its corrupt units discarded (:func:`lotto_jax.repair.repair`),
    so that the run recomputes them; without it, a corrupt item's error says so.
    """
    return common.run_in_store(config, MUTABLE_FIELDS, lambda store: _main(config, store))


def _main(config: ImpConfig, store: RunStore) -> ImpResult:
    from lotto_jax.runs import report

    prep = common.prepare(config.run)
    prunable = masks.all_leaves if config.prune_biases else masks.default_prunable
    layer_fractions = (
        None if config.output_fraction is None
        else {f"^{models.OUTPUT_LAYER}(/|$)": config.output_fraction}
    )
    input_shape = prep.dataset.input_shape
    n_rep = config.run.replicates
    topology = structured.topology_for(config.structure, prep.module, prep.params)
    if structured.parse(config.structure).kind == "nm":  # a misfit fails before round 0
        structured.prune_fraction(config.structure, prep.params, masks.init(prep.params),
                                  0.0, prunable=prunable)

    def init_fn(key):
        variables = models.init(prep.module, key, input_shape)
        return variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def control_key(seed):
        return jax.random.fold_in(jax.random.key(seed), 1)

    if n_rep > 1:
        variables = common.replicate_variables(prep.module, input_shape, config.run.seed, n_rep)
        params0 = variables["params"]
        model_state0 = {k: v for k, v in variables.items() if k != "params"}
        data_key = common.replicate_data_keys(config.run.data_seed, n_rep)
        key = jnp.stack([control_key(config.run.seed + i) for i in range(n_rep)])
    else:
        params0, model_state0 = prep.params, prep.model_state
        data_key, key = prep.data_key, control_key(config.run.seed)

    result = run_imp(
        prep.trainer, params0, model_state0, prep.dataset,
        rounds=config.rounds, fraction=config.fraction, scope=config.scope,
        groups=config.groups, layer_fractions=layer_fractions, rewind=config.rewind,
        controls=config.controls, data_key=data_key, key=key,
        store=store, prunable=prunable, init_fn=init_fn, save_every=config.save_every,
        save_interval=config.save_interval, replicates=n_rep > 1, mesh=prep.mesh,
        timing=config.timing, structure=config.structure, topology=topology,
    )
    report.print_table(report.load_run(store.directory))
    if config.timing:
        _print_timing(result.timing)
    return result
