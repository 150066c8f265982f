"""``lotto dst``: dynamic sparse training (static, GMP, SET, RigL, GraNet).

One network (or replicates) whose mask changes inside the compiled loop
(:mod:`lotto_jax.dst`). A run directory of one engine unit
(:mod:`lotto_jax.runs.engine`)::

  config.json      the resolved config
  init             θ0 ``{"params", "model_state"}`` (a leading replicate axis when S > 1)
  start_mask       the method's start mask (random at the density's per-layer
                   distribution; all-True for GMP and a dense GraNet), stacked like init
  dst/             the unit: ``checkpoints/step_N`` while it trains (the mask and the
                   updater's state inside), ``final`` (``{"params", "model_state",
                   "mask"}``: the trained weights and the last mask), ``metrics.json``
  results.json     method, hyperparameters, the final mask's per-layer counts and
                   density, the accuracies and the schedule (density and drop
                   fraction at every update step)

Replicate ``i`` starts from init seed ``seed + i``, data order ``data_seed + i`` and
mask key ``fold_in(key(seed + i), 1)``. A killed run resumes from its latest
checkpoint (mask included) when the same command is run again, bit for bit on CPU;
one process writes a directory at a time; ``--repair`` discards corrupt items first.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lotto_jax.runs.common import STORE_FIELDS, RunConfig, RunOptions

__all__ = ["MUTABLE_FIELDS", "PREFIX", "DstConfig", "check_layers", "main", "schedule",
           "updater"]

PREFIX = "dst"
"""The unit's directory in the run."""

MUTABLE_FIELDS: tuple[str, ...] = (*STORE_FIELDS, "run.data_dir")
"""DstConfig fields that may change when a run directory is resumed."""

_DEFAULT_DROP = {"static": 0.0, "gmp": 0.0, "set": 0.3, "rigl": 0.3, "granet": 0.5}
_GRANET_MIN_FRACTION = 0.005  # GraNet's final regeneration rate (Liu et al. 2021)


@dataclasses.dataclass(frozen=True)
class DstConfig(RunOptions):
    """Train a sparse network whose mask changes during training.

    Attributes:
      run: model, data, seeds and training hyperparameters.
      method: ``static`` (a fixed random mask), ``gmp`` (gradual magnitude pruning
        from dense), ``set``, ``rigl`` or ``granet``.
      density: the target fraction of prunable weights kept, in (0, 1]; every layer
        must keep at least one weight at it.
      distribution: per-layer densities, ``erk`` or ``uniform``.
      update_every: steps between mask updates (ΔT).
      drop_fraction: SET's ζ, RigL's initial α (cosine-decayed to 0 at ``end``),
        GraNet's initial regeneration rate (cosine-decayed to 0.005, or to itself
        when smaller, at the end of training); default 0.3 (SET, RigL), 0.5 (GraNet).
      end: the last step at which the mask changes: RigL's cosine end, the end of
        GMP's and GraNet's pruning; at most the training steps; default 75 % of
        training (SET: never stops).
      start: GMP and GraNet: the first pruning step.
      initial_density: GMP and GraNet: the density pruning starts from (1.0: dense).
      scope: GMP and GraNet: ``layerwise`` (each layer to its share) or ``global``
        (one ranking); default: layerwise for GMP, global for GraNet.
      dense: regular expressions of layers kept dense (e.g. ``Dense_0``), outside
        the density budget as RigL's ``custom_sparsity_map``; each must match a
        layer; GMP and GraNet need ``scope=layerwise`` for them.
      groups: the pruning groups (:func:`lotto_jax.masks.group_name`): ``leaf``
        (each kernel on its own) or ``layer`` (a module's kernel and bias pooled:
        biases then take part, at their layer's density).
      structure: ``weight`` (the default: every method); ``neuron`` / ``channel``
        (``static`` or ``gmp`` over whole units: density = the fraction of each
        layer's units kept, ranked by the L2 norm of their kernel slices; the
        output layer stays dense), ``layer`` (``static`` or ``gmp`` over residual
        blocks: density = the fraction of blocks kept) or ``N:M`` like ``2:4``
        (``static``, ``set`` or ``rigl`` exchanging weights inside each group; the
        density is N/M: leave ``density`` at its default). See
        :func:`lotto_jax.structured.dst_updater`.
      out: the run directory (layout in the module docs).
    """

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    method: str = "rigl"
    density: float = 0.1
    distribution: str = "erk"
    update_every: int = 100
    drop_fraction: float | None = None
    end: int | None = None
    start: int = 0
    initial_density: float = 1.0
    scope: str | None = None
    dense: tuple[str, ...] = ()
    groups: str = "leaf"
    structure: str = "weight"
    out: str = dataclasses.field(default="runs/dst", kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        updater(self)  # every bad hyperparameter fails here, before any data is loaded
        end, steps = _end(self), self.run.train.steps
        if end is not None and end > steps:
            raise ValueError(f"end: the {self.method} mask changes until step {end}, beyond "
                             f"the {steps} training steps (--steps)")


def _end(config: DstConfig) -> int | None:
    if config.end is not None:
        return config.end
    return None if config.method == "set" else max(1, int(0.75 * config.run.train.steps))


def _dense_error(e: ValueError) -> ValueError:
    """An algorithm's error about ``overrides`` told as the flag's (``dense``)."""
    head, sep, rest = str(e).partition(":")
    return ValueError(f"dense:{rest}") if sep and head == "overrides" else e


def updater(config: DstConfig, topology=None):
    """The :class:`lotto_jax.dst.Updater` of ``config``; a unit or block structure
    needs the model's ``topology`` (without it, only the hyperparameters are
    checked and ``None`` is returned).

    Raises:
      ValueError: a bad hyperparameter, named as its field (the flag).
    """
    from lotto_jax import dst, structured

    st = structured.parse(config.structure)
    if config.method not in dst.METHODS:
        raise ValueError(f"method: expected one of {list(dst.METHODS)}, got {config.method!r}")
    if config.groups not in ("leaf", "layer"):
        raise ValueError(f"groups: expected 'leaf' or 'layer', got {config.groups!r}")
    if (config.dense and config.method in ("gmp", "granet")
            and _scope(config) == "global"):
        raise ValueError(f"dense: layers kept dense need --scope layerwise ({config.method}'s "
                         "global ranking has no per-layer targets)")
    if st.kind != "weight":
        return _structured(config, st, topology)
    try:
        return _updater(config, dst)
    except ValueError as e:
        raise _dense_error(e) from None


_NM_DENSITY = 0.1  # DstConfig.density's default: the flag was left alone


def _structured(config: DstConfig, st, topology):
    """The updater of a ``neuron`` / ``channel`` / ``layer`` / ``N:M`` run."""
    from lotto_jax import structured

    for name, value, default in (("dense", config.dense, ()), ("groups", config.groups,
                                                                "leaf")):
        if value != default:
            raise ValueError(f"{name}: applies to --structure weight only, got {value!r} "
                             f"with structure {config.structure!r}")
    drop = _DEFAULT_DROP[config.method] if config.drop_fraction is None else config.drop_fraction
    end = _end(config)
    if st.kind == "nm":
        density = None if config.density == _NM_DENSITY else config.density
        kw = {} if config.method == "static" else dict(
            end=end, drop_fraction=drop, update_every=config.update_every)
        return structured.dst_updater(st, config.method, density, **kw)
    if config.method not in ("static", "gmp"):
        structured.dst_updater(st, config.method, config.density)  # names the reason
    kw = dict(distribution=config.distribution) if st.kind != "layer" else {}
    if config.method == "gmp":
        kw.update(end=end, start=config.start, update_every=config.update_every,
                  initial_density=config.initial_density)
        if st.kind != "layer":
            kw["scope"] = _scope(config)
    if topology is None:
        return None
    return structured.dst_updater(st, config.method, config.density, topology=topology,
                                  **kw)


def _scope(config: DstConfig) -> str:
    return config.scope or ("layerwise" if config.method == "gmp" else "global")


def _min_fraction(drop: float) -> float:
    return min(_GRANET_MIN_FRACTION, drop)


def _updater(config: DstConfig, dst):
    drop = _DEFAULT_DROP[config.method] if config.drop_fraction is None else config.drop_fraction
    common = dict(distribution=config.distribution,
                  overrides=dict.fromkeys(config.dense, 1.0) or None, **_prunable(config))
    steps, end = config.run.train.steps, _end(config)
    if config.method == "static":
        return dst.static(config.density, **common)
    if config.method in ("set", "rigl"):
        kw = dict(drop_fraction=drop, update_every=config.update_every, end=end, **common)
        return dst.set(config.density, **kw) if config.method == "set" else dst.rigl(
            config.density, **kw)
    gradual = dict(end=end, start=config.start, update_every=config.update_every,
                   initial_density=config.initial_density, **common)
    if config.method == "gmp":
        return dst.gmp(config.density, scope=_scope(config), **gradual)
    return dst.granet(config.density, total=max(steps, end), drop_fraction=drop,
                      min_fraction=_min_fraction(drop), scope=_scope(config), **gradual)


def _prunable(config: DstConfig) -> dict:
    """``groups`` and the leaves it prunes: kernels alone, or whole layers."""
    from lotto_jax import masks

    if config.groups == "layer":
        return dict(groups="layer", prunable=masks.all_leaves)
    return dict(groups="leaf", prunable=masks.default_prunable)


def check_layers(config: DstConfig, params) -> None:
    """Checks, on the model's ``params``, that every layer keeps a weight at the
    run's densities and that every ``dense`` pattern names a layer.

    Raises:
      ValueError: naming ``density`` (and the layer) or ``dense`` (and the layers).
    """
    from lotto_jax import dst

    gradual = config.method in ("gmp", "granet")
    for d in (config.density, *((config.initial_density,) if gradual else ())):
        try:
            dst.group_densities(params, d, distribution=config.distribution,
                                overrides=dict.fromkeys(config.dense, 1.0) or None,
                                **_prunable(config))
        except ValueError as e:
            raise _dense_error(e) from None


def schedule(config: DstConfig, u=None) -> list[dict[str, float]]:
    """``[{"step", "density", "drop_fraction"}]`` at every update step of
    updater ``u`` (default: ``updater(config)``): the method's planned density
    (GMP, GraNet; else the target; of units or blocks for those structures, N/M
    for N:M) and exchanged fraction (SET, RigL, GraNet; else 0), from the closed
    forms."""
    import jax.numpy as jnp
    import numpy as np

    from lotto_jax import dst

    u = updater(config) if u is None else u
    steps, end = config.run.train.steps, _end(config)
    drop = _DEFAULT_DROP[config.method] if config.drop_fraction is None else config.drop_fraction
    s = jnp.arange(1, steps + 1)
    at = np.flatnonzero(np.asarray(u.fires(s)))
    density = np.full(steps, target_density(config))
    frac = np.zeros(steps)
    if config.method in ("gmp", "granet"):
        density = np.asarray(dst.gmp_density(s, initial=config.initial_density,
                                             final=config.density, start=config.start,
                                             end=end))
    if config.method == "set":
        frac = np.full(steps, drop)
    elif config.method == "rigl":
        frac = np.asarray(dst.cosine_fraction(s, initial=drop, end=end))
    elif config.method == "granet":
        frac = np.asarray(dst.cosine_fraction(s, initial=drop, end=max(steps, end),
                                              final=_min_fraction(drop)))
    return [{"step": int(i + 1), "density": float(density[i]), "drop_fraction": float(frac[i])}
            for i in at]


def main(config: DstConfig) -> Any:
    """Runs ``lotto dst`` in ``config.out`` (resuming what is there).

    Returns:
      The ``results.json`` record.

    Raises:
      ValueError: a bad hyperparameter (naming it), before anything is loaded.
      lotto_jax.runs.store.RunLockedError: another process writes ``config.out``.
      lotto_jax.runs.store.ConfigMismatchError: ``config.out`` holds another run.
      lotto_jax.runs.store.CorruptCheckpointError: a stored item is altered.
    """
    from lotto_jax.runs import common

    prep = common.prepare(config.run)
    if structured_kind(config) == "weight":
        check_layers(config, prep.params)  # before the run directory is written
    else:
        _check_structure(config, prep)
    return common.run_in_store(config, MUTABLE_FIELDS,
                               lambda store: _main(config, store, prep))


def target_density(config: DstConfig) -> float:
    """The run's final density: of the prunable weights, of each layer's units
    (``neuron``, ``channel``), of the blocks (``layer``), or N/M."""
    from lotto_jax import structured

    st = structured.parse(config.structure)
    return st.n / st.m if st.kind == "nm" else config.density


def structured_kind(config: DstConfig) -> str:
    """``weight``, ``neuron``, ``channel``, ``layer`` or ``nm``."""
    from lotto_jax import structured

    return structured.parse(config.structure).kind


def _topology(config: DstConfig, prep):
    from lotto_jax import structured

    return structured.topology_for(config.structure, prep.module, prep.params)


def _check_structure(config: DstConfig, prep) -> None:
    """Builds the structured updater on the model and draws one start mask, so a
    misfit (a leaf N:M cannot group, a layer left without units) fails before the
    run directory is written."""
    import jax

    u = updater(config, _topology(config, prep))
    try:
        u.init(prep.params, jax.random.key(0))  # every group keeps a unit at the densities
        u.initial_mask(prep.params, jax.random.key(0))
    except ValueError as e:
        head, sep, rest = str(e).partition(":")
        if sep and head in ("n", "m", "prunable"):  # the N:M misfit of a leaf
            raise ValueError(f"structure: {config.structure!r}:{rest}") from None
        raise


def _start(config: DstConfig, prep):
    """``(θ0, data keys, mask keys)`` of the replicates (stacked when S > 1)."""
    import jax

    from lotto_jax.runs import common

    n = config.run.replicates
    seeds = [config.run.seed + i for i in range(n)]
    theta0, data_key = common.start_weights(config.run, prep)
    keys = [jax.random.key_data(jax.random.fold_in(jax.random.key(s), 1)) for s in seeds]
    return theta0, data_key, (common.stack(keys) if n > 1 else keys[0])


def _main(config: DstConfig, store, prep) -> Any:
    import jax

    from lotto_jax import masks, train
    from lotto_jax.runs import common
    from lotto_jax.runs.engine import Engine, Unit, abstract
    from lotto_jax.runs.records import layer_counts
    from lotto_jax.runs.writer import Clock, WriteBehind

    u = updater(config, _topology(config, prep))
    trainer = train.make_trainer(
        train.classifier(prep.module), config.run.train,
        num_train=prep.dataset.train.x.shape[0], mesh=prep.mesh, updater=u)
    stacked = config.run.replicates > 1
    theta0, data_key, keys = _start(config, prep)
    all_true = masks.init(prep.params)
    target = common.stack([all_true] * config.run.replicates) if stacked else all_true

    def make_mask():
        one = lambda p, k: u.initial_mask(p, jax.random.wrap_key_data(k))  # noqa: E731
        return jax.vmap(one)(theta0["params"], keys) if stacked else one(theta0["params"], keys)

    clock = Clock()
    writer = WriteBehind(store, clock)
    try:
        engine = Engine(trainer, prep.dataset, data_key, writer, stacked=stacked,
                        mesh=prep.mesh, save_every=config.save_every,
                        save_interval=config.save_interval, clock=clock)
        start = engine.load_or("init", abstract(theta0), lambda: theta0)
        mask = engine.load_or("start_mask", abstract(target), make_mask)
        (done,) = engine.run(
            [Unit(PREFIX, f"{config.method} {config.density:g}", start, mask, key=keys)],
            lambda names: "+".join(names), metrics_fn=lambda unit, res: res.metrics())
        final = done.final if done.final is not None else engine.final(
            PREFIX, abstract({**theta0, "mask": target}))
        writer.close()
    except BaseException:
        writer.close(raise_errors=False)
        raise
    result = train.summarize([train.EvalRecord(**r) for r in done.metrics["curve"]])
    summary = {
        "method": config.method,
        "model": config.run.model,
        "dataset": config.run.dataset,
        "steps": config.run.train.steps,
        "replicates": config.run.replicates,
        "structure": config.structure,
        "target_density": target_density(config),
        "distribution": config.distribution,
        **layer_counts(final["mask"], _prunable(config)["prunable"], stacked),
        "final_test_accuracy": result.final_test_accuracy,
        "best_test_accuracy": result.best_test_accuracy,
        "early_stop_step": result.early_stop_step,
        "early_stop_test_accuracy": result.early_stop_test_accuracy,
        "schedule": schedule(config, u),
    }
    store.write_json("results.json", summary)
    from lotto_jax.runs.train import _print_table

    _print_table(f"lotto dst: {config.method} on {config.run.model} / {config.run.dataset}",
                 {k: v for k, v in summary.items() if k not in ("schedule", "layers")})
    return summary
