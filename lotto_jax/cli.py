"""The ``lotto`` command: ``train | imp | pai | supermask | report``.

Each sub-command is a frozen config dataclass (its docstring and ``Attributes:`` are
the help) and a ``main(config)`` function in the module that owns it; this file only
builds the command line from them with tyro. Flags are not prefixed by their nesting
(``--model``, ``--steps``, ``--rounds``), so the field names are unique across a
command's configs.

Examples:
  lotto train --model lenet300 --dataset npz:mnist.npz --steps 50000 \\
      --optimizer adam --lr 1.2e-3 --batch-size 60
  lotto imp --rounds 10 --out runs/imp
  lotto report runs/imp
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
from typing import Any

import numpy as np
import tyro

from lotto_jax.common import RunConfig, write_config

__all__ = ["COMMANDS", "TrainCommand", "main", "run", "train_main"]


@dataclasses.dataclass(frozen=True)
class TrainCommand:
    """Train one network, dense or under a saved mask, and print a summary.

    Attributes:
      run: model, data, seeds and training hyperparameters.
      mask: an orbax checkpoint directory holding a mask pytree for the model's
        params (e.g. a round of ``lotto imp``); dense when not given.
      out: output directory: ``config.json``, ``metrics.jsonl``, ``result.json``
        and the trained params (orbax) under ``params/``.
    """

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    mask: str | None = None
    out: str = "runs/train"


def train_main(config: TrainCommand) -> Any:
    """Runs ``lotto train``: returns the :class:`lotto_jax.train.FitResult`."""
    import orbax.checkpoint as ocp

    from lotto_jax import common, masks, sharding
    from lotto_jax.train import fit

    prep = common.prepare(config.run)
    params = prep.params
    model_state = prep.model_state
    if config.mask:
        path = os.path.abspath(config.mask)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"mask: no checkpoint directory at {path}")
        mask = ocp.StandardCheckpointer().restore(path)
        masks.validate(params, mask, name="mask")
        params = masks.apply(params, mask)
    else:
        mask = masks.init(params)
    out = os.path.abspath(config.out)
    write_config(config, out)
    metrics = os.path.join(out, "metrics.jsonl")
    if os.path.exists(metrics):
        os.remove(metrics)
    if prep.mesh is not None:  # data parallel; masks follow their params' sharding
        shardings = sharding.param_shardings(params, prep.mesh)
        params, mask = sharding.place(params, shardings), sharding.place(mask, shardings)
    state = prep.trainer.init(params, model_state)
    density = masks.density(mask)
    data_key, replicates = prep.data_key, config.run.replicates > 1
    if replicates:  # replicate i: init seed + i, data seed + i, one vmapped step
        n = config.run.replicates
        states = []
        for i in range(n):
            v = common.init_variables(prep.module, prep.dataset.input_shape, config.run.seed + i)
            ms = {k: x for k, x in v.items() if k != "params"}
            states.append(prep.trainer.init(masks.apply(v["params"], mask), ms))
        state, mask = common.stack(states), common.stack([mask] * n)
        data_key = common.replicate_data_keys(config.run.data_seed, n)
    state, result = fit(
        prep.trainer, state, mask, prep.dataset, data_key=data_key,
        replicates=replicates, metrics_path=metrics, description=config.run.model,
    )
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.join(out, "params"), state.params, force=True)
    ckpt.wait_until_finished()
    summary = {
        "model": config.run.model,
        "dataset": config.run.dataset,
        "steps": config.run.train.steps,
        "replicates": config.run.replicates,
        "density": density,
        "final_test_accuracy": result.final_test_accuracy,
        "best_test_accuracy": result.best_test_accuracy,
        "early_stop_step": result.early_stop_step,
        "early_stop_test_accuracy": result.early_stop_test_accuracy,
    }
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(summary, f, indent=2, default=lambda a: np.asarray(a).tolist())
    _print_table(f"lotto train: {config.run.model} on {config.run.dataset}", summary)
    return result


def _print_table(title: str, rows: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        if isinstance(value, np.ndarray | list) and "accuracy" in key:
            arr = 100 * np.asarray(value, float)
            value = f"{arr.mean():.2f} ± {arr.std():.2f}%"
        elif isinstance(value, float):
            value = f"{100 * value:.2f}%" if "accuracy" in key or key == "density" else f"{value:.4g}"
        table.add_row(key, str(value))
    Console().print(table)


# name -> (module, config class, main function); modules are imported on use.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("lotto_jax.cli", "TrainCommand", "train_main"),
    "imp": ("lotto_jax.imp", "ImpConfig", "main"),
    "pai": ("lotto_jax.pai", "PaiConfig", "main"),
    "supermask": ("lotto_jax.supermask", "SupermaskConfig", "main"),
    "report": ("lotto_jax.report", "ReportConfig", "main"),
}


def _command(name: str) -> tuple[type, Any]:
    module_name, cls, fn = COMMANDS[name]
    module = importlib.import_module(module_name)
    return getattr(module, cls), getattr(module, fn)


def _summary(doc: str | None) -> str:
    """A config's docstring without its ``Attributes:`` (tyro shows those per flag)."""
    import inspect

    return inspect.cleandoc(doc or "").split("Attributes:")[0].strip()


def _usage(available: dict[str, tuple[type, Any]]) -> str:
    lines = ["usage: lotto {" + ",".join(available) + "} [OPTIONS]", "",
             "Lottery tickets and sparse training in JAX.", "", "commands:"]
    for name, (cls, _) in available.items():
        lines.append(f"  {name:<10} {(cls.__doc__ or '').strip().splitlines()[0]}")
    lines += ["", "Run 'lotto COMMAND --help' for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lotto`` console script; returns the exit status."""
    run(argv)
    return 0


def run(argv: list[str] | None = None) -> Any:
    """Parses ``argv`` (default ``sys.argv[1:]``), runs the command, returns its result."""
    argv = sys.argv[1:] if argv is None else list(argv)
    available = {}
    for name in COMMANDS:
        try:
            available[name] = _command(name)
        except (ImportError, AttributeError):  # a driver this version does not ship
            continue
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(available))
        return None
    name, rest = argv[0], argv[1:]
    if name not in available:
        print(_usage(available), file=sys.stderr)
        raise SystemExit(f"lotto: unknown command {name!r}; expected one of {list(available)}")
    cls, fn = available[name]
    config = tyro.cli(
        cls,
        args=rest,
        prog=f"lotto {name}",
        description=_summary(cls.__doc__),
        config=(tyro.conf.OmitArgPrefixes,),
    )
    return fn(config)
