"""What every driver shares: the run configuration, the store options and the set-up.

:class:`RunConfig` names the model, the dataset, the seeds and the training
hyperparameters; :func:`prepare` turns it into arrays and compiled functions. The
drivers (:mod:`lotto_jax.runs.imp`, :mod:`lotto_jax.runs.pai`,
:mod:`lotto_jax.runs.supermask` and :mod:`lotto_jax.runs.train`) embed a
:class:`RunConfig` in their own configs, which inherit :class:`RunOptions` (where
the run is stored and how: the flags every command shares), and run in
:func:`run_in_store`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, NamedTuple

import flax.linen as nn
import jax

from lotto_jax import data as data_lib
from lotto_jax import models
from lotto_jax.runs.records import check_save_every, check_save_interval
from lotto_jax.train import TrainConfig, Trainer, classifier, make_trainer

__all__ = [
    "STORE_FIELDS",
    "Prepared",
    "RunConfig",
    "RunOptions",
    "config_to_dict",
    "init_variables",
    "prepare",
    "replicate_data_keys",
    "replicate_variables",
    "run_in_store",
    "stack",
    "start_weights",
    "write_config",
]


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Model, data, seeds and training of one run.

    Attributes:
      model: a name from ``lotto_jax.models.NAMES``.
      dataset: ``mnist1d``, ``tfds:NAME[:CONFIG]`` or ``npz:PATH``.
      validation: examples held out of train for validation (an int, or a float
        fraction); Frankle & Carbin 2019 hold out 5,000 MNIST images.
      seed: the seed of the weights' initialisation.
      data_seed: the seed of the validation split and of the data order.
      data_dir: TFDS data directory.
      replicates: independent replicates trained together in one vmapped step;
        replicate ``i`` uses init seed ``seed + i`` and the data order of
        ``data_seed + i`` (replicate 0 is the single run); all replicates share the
        validation split drawn with ``data_seed``. Results carry a leading replicate
        axis.
      mesh: devices as ``"data=N[,model=M]"`` (see :mod:`lotto_jax.sharding`):
        batches split over ``data``; ``None`` runs on JAX's default device.
      train: the training hyperparameters.
    """

    model: str = "mnist1d_mlp"
    dataset: str = "mnist1d"
    validation: float = 0
    seed: int = 0
    data_seed: int = 0
    data_dir: str | None = None
    replicates: int = 1
    mesh: str | None = None
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self):
        try:  # a malformed modular: spec is refused before anything is written
            data_lib.check_spec(self.dataset)
        except ValueError as e:
            raise ValueError(f"dataset: {e}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Where a command's run is stored and how: the options every command shares.

    Each command's config inherits them (``class ImpConfig(RunOptions)``), so they
    are flags of every command (``--out``, ``--save-every``, ...), fields of its
    ``config.json``, and fields a rerun on the same directory may change
    (:data:`STORE_FIELDS`). They are keyword-only: positional arguments of a config
    stay its own fields. ``out`` has no default here: each command redeclares it
    with its own (``out: str = dataclasses.field(default="runs/imp",
    kw_only=True)``) and documents what its directory holds.

    Attributes:
      out: the run directory (its layout: the command's module docs). Rerunning
        the same command on it resumes a killed run; a finished one trains
        nothing.
      save_every: steps between mid-training checkpoints (IMP: within a round),
        taken at evaluation points; ``None``: every ``save_interval`` seconds.
      save_interval: with ``save_every=None``, seconds of training between
        mid-training checkpoints (at evaluation points); 0 checkpoints at every
        evaluation.
      overwrite: delete an existing run in ``out`` and start afresh.
      new_dir: if ``out`` holds a run with another config, run in ``out_1``,
        ``out_2``, ... instead of refusing.
      repair: before running, verify every stored item, print the corrupt or
        partial units and discard them, then recompute them from the last good
        state (what each corrupt item discards, per kind of run:
        :mod:`lotto_jax.runs.repair`).
      recipe: a named preset of the papers' settings (``lotto recipes``): its
        values are the defaults of every other flag, which override them.
    """

    out: str
    save_every: int | None = None
    save_interval: float = 60.0
    overwrite: bool = False
    new_dir: bool = False
    repair: bool = False
    recipe: str | None = None

    def __post_init__(self):
        check_save_every(self.save_every)
        check_save_interval(self.save_interval)


STORE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunOptions))
"""The :class:`RunOptions` fields: a rerun may change every one of them (each
command's ``MUTABLE_FIELDS`` starts with them)."""


class Prepared(NamedTuple):
    """The arrays and compiled functions of a :class:`RunConfig`."""

    dataset: data_lib.Dataset
    module: nn.Module
    variables: dict[str, Any]
    trainer: Trainer
    data_key: jax.Array
    mesh: Any = None

    @property
    def params(self):
        return self.variables["params"]

    @property
    def model_state(self) -> dict[str, Any]:
        return {k: v for k, v in self.variables.items() if k != "params"}


def init_variables(module: nn.Module, input_shape, seed: int) -> dict[str, Any]:
    """Initial variables of ``module`` from ``seed`` (the reinit control draws another)."""
    return models.init(module, jax.random.key(seed), input_shape)


def stack(trees) -> Any:
    """Stacks pytrees along a new leading (replicate) axis."""
    return jax.tree.map(lambda *xs: jax.numpy.stack(xs), *trees)


def replicate_variables(module: nn.Module, input_shape, seed: int, replicates: int):
    """Variables of ``replicates`` networks from seeds ``seed, seed + 1, ...``, stacked."""
    return stack([init_variables(module, input_shape, seed + i) for i in range(replicates)])


def start_weights(run: RunConfig, prep: Prepared) -> tuple[dict[str, Any], jax.Array]:
    """``(θ0, data key)`` of ``run.replicates`` networks: ``{"params", "model_state"}``
    from seeds ``seed + i`` and data keys ``data_seed + i``, stacked along a leading
    replicate axis when there are several (replicate 0 is the single run)."""
    if run.replicates > 1:
        variables = replicate_variables(prep.module, prep.dataset.input_shape, run.seed,
                                        run.replicates)
        data_key = replicate_data_keys(run.data_seed, run.replicates)
    else:
        variables, data_key = prep.variables, prep.data_key
    return ({"params": variables["params"],
             "model_state": {k: v for k, v in variables.items() if k != "params"}}, data_key)


def replicate_data_keys(data_seed: int, replicates: int) -> jax.Array:
    """Data-order keys ``key(data_seed + i)``, stacked (replicate 0 = the single run)."""
    return jax.numpy.stack([jax.random.key(data_seed + i) for i in range(replicates)])


def prepare(config: RunConfig) -> Prepared:
    """Loads the dataset, builds and initialises the model, compiles the trainer.

    The variables and data key are those of replicate 0; drivers that honour
    ``config.replicates`` build the others with :func:`replicate_variables` and
    :func:`replicate_data_keys`.
    """
    if not isinstance(config.replicates, int) or config.replicates < 1:
        raise ValueError(f"replicates: expected an int >= 1, got {config.replicates!r}")
    validation = config.validation
    if isinstance(validation, float) and validation.is_integer() and validation >= 1:
        validation = int(validation)
    mesh = None
    if config.mesh:  # first: a bad mesh fails before data and model are built
        from lotto_jax.sharding import make_mesh

        mesh = make_mesh(config.mesh)
    dataset = data_lib.load(
        config.dataset, seed=config.data_seed, validation=validation,
        data_dir=config.data_dir,
    )
    module = models.build(config.model, num_classes=dataset.num_classes)
    try:  # MLPs flatten any input; conv nets need images (H, W, C)
        variables = init_variables(module, dataset.input_shape, config.seed)
    except Exception as err:
        raise ValueError(
            f"model {config.model!r} cannot take dataset {dataset.name!r}: inputs of "
            f"shape {dataset.input_shape}, the model's default is "
            f"{models.input_shape(config.model)} ({type(err).__name__}: {err})"
        ) from err
    trainer = make_trainer(
        classifier(module), config.train, num_train=dataset.train.x.shape[0], mesh=mesh
    )
    data_key = jax.random.key(config.data_seed)
    return Prepared(dataset, module, variables, trainer, data_key, mesh)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=list))


def write_config(config: Any, directory: str) -> str:
    """Writes the resolved config as ``config.json`` in ``directory``."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "config.json")
    with open(path, "w") as f:
        json.dump(config_to_dict(config), f, indent=2, sort_keys=True)
    return path


def _defaults(config: Any) -> dict[str, Any]:
    """The resolved config of ``type(config)()``: every field at its default (so a
    field added to a command after a run was written does not refuse its resume);
    empty for a config without a default for every field."""
    try:
        return config_to_dict(type(config)())
    except (TypeError, ValueError):
        return {}


def run_in_store(config: Any, mutable: tuple[str, ...], body: Any) -> Any:
    """Runs ``body(store)`` in ``config.out`` as its one writer: every command's frame.

    Opens the directory (:meth:`lotto_jax.runs.store.RunStore.open` with the
    config's ``overwrite``, ``new_dir`` and the ``mutable`` fields), discards the
    corrupt units first when ``config.repair`` is set
    (:func:`lotto_jax.runs.repair.repair`), names ``--repair`` in a corrupt item's
    error otherwise, and releases the lock on every way out.
    """
    from lotto_jax.runs import repair
    from lotto_jax.runs.store import CorruptCheckpointError, RunStore

    store = RunStore.open(config.out, config_to_dict(config), overwrite=config.overwrite,
                          new_dir=config.new_dir, mutable=mutable,
                          defaults=_defaults(config))
    try:
        if config.repair:
            repair.repair(store, echo=print)
        return body(store)
    except CorruptCheckpointError as e:
        if config.repair:
            raise
        raise CorruptCheckpointError(
            f"{e}; rerun with --repair to discard the corrupt units and recompute them"
        ) from e
    finally:
        store.close()
