"""Recipes: the papers' settings as named presets of the ``lotto`` commands.

``lotto imp --recipe mnist1d-lottery --out runs/mnist1d`` runs the MNIST-1D lottery
notebook's setting; any explicit flag overrides the recipe's value
(``--recipe lth-lenet300 --dataset npz:mnist.npz --rounds 5``), and the resolved
configuration is what ``config.json`` stores (with the recipe's name). ``lotto
recipes`` lists them, each with its source and what differs from the paper.

A recipe is data: a name, the command it configures, its source, what differs, and
a function that builds the command's config dataclass. :func:`get` looks one up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["RECIPES", "Recipe", "RecipesConfig", "build", "get", "main"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A named preset of one command's configuration.

    Attributes:
      name: the name given to ``--recipe``.
      command: the ``lotto`` command it configures (``train``, ``imp``, ``pai``,
        ``supermask``, ``dst``).
      source: the paper (and table / figure) or notebook whose setting it is.
      differs: what differs from that setting (budget, schedule, data), or ``""``.
      make: builds the command's config (a frozen dataclass) with the recipe's
        values.
    """

    name: str
    command: str
    source: str
    differs: str
    make: Callable[[], Any]


def _train(**kw):
    from lotto_jax.train import TrainConfig

    return TrainConfig(**kw)


def _run(model: str, dataset: str, validation: float = 0, replicates: int = 1, **train):
    from lotto_jax.runs.common import RunConfig

    return RunConfig(model=model, dataset=dataset, validation=validation,
                     replicates=replicates, train=_train(**train))


# The MNIST-1D notebook's optimiser: Adam 2e-2, batch 100 in fixed order, 1500 steps,
# test accuracy every 100 steps.
_MNIST1D = dict(steps=1500, batch_size=100, optimizer="adam", lr=2e-2, shuffle=False,
                eval_every=100)
# Frankle & Carbin 2019's LeNet-300-100 optimiser.
_LENET = dict(batch_size=60, optimizer="adam", lr=1.2e-3)
# edge-popup's MNIST example: SGD 0.1, momentum 0.9, weight decay 5e-4, cosine.
_EDGE_POPUP = dict(steps=3000, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9,
                   weight_decay=5e-4, schedule="cosine", eval_every=500)


def _mnist1d_lottery():
    from lotto_jax.runs.imp import ImpConfig

    return ImpConfig(
        run=_run("mnist1d_mlp", "mnist1d", replicates=3, **_MNIST1D),
        rounds=15, fraction=0.2, output_fraction=None, scope="layerwise",
        groups="layer", prune_biases=True, rewind="init", controls=("random",),
        out="runs/mnist1d",
    )


def _lth_lenet300():
    from lotto_jax.runs.imp import ImpConfig

    return ImpConfig(
        run=_run("lenet300", "tfds:mnist", 5000, steps=20000, eval_every=250, **_LENET),
        rounds=15, fraction=0.2, output_fraction=0.1, scope="layerwise",
        rewind="init", controls=("reinit",), out="runs/lth_lenet300",
    )


# Grokking tickets (Minegishi et al., arXiv:2310.19470; gouki510/Grokking-Tickets):
# AdamW 1e-3, betas (0.9, 0.98), weight decay 1, full batch (911 train pairs).
_GROK = dict(steps=30000, batch_size=911, optimizer="adamw", lr=1e-3, b2=0.98,
             weight_decay=1.0, shuffle=False, eval_every=100, eval_train=True)


def _grokking():
    from lotto_jax.runs.imp import ImpConfig

    return ImpConfig(
        run=_run("grok_mlp", "modular:add:67:0.4", **_GROK),
        rounds=1, fraction=0.6, output_fraction=None, scope="global", rewind="init",
        out="runs/grokking",
    )


def _grokking_pai():
    from lotto_jax.runs.pai import PaiConfig

    return PaiConfig(run=_run("grok_mlp", "modular:add:67:0.4", **_GROK), method="snip",
                     density=0.4, scope="global", out="runs/grokking_pai")


def _grokking_train():
    from lotto_jax.runs.train import TrainCommand

    return TrainCommand(run=_run("grok_mlp", "modular:add:67:0.4", **_GROK),
                        out="runs/grokking_train")


def _lenet300_dense():
    from lotto_jax.runs.train import TrainCommand

    return TrainCommand(
        run=_run("lenet300", "tfds:mnist", 5000, steps=50000, eval_every=500, **_LENET),
        out="runs/lenet300_dense",
    )


# The structured-tickets experiments: ResMLP on MNIST-1D (Adam 2e-3: 2e-2 is too
# large for the pre-norm blocks) and LeNet-300-100 with 5,000 steps per training.
_RESMLP = dict(steps=1500, batch_size=100, optimizer="adam", lr=2e-3, eval_every=250)
_LENET_5K = dict(steps=5000, eval_every=500, **_LENET)


def _structured_imp(model, dataset, validation, rounds, **train):
    from lotto_jax.runs.imp import ImpConfig

    return ImpConfig(run=_run(model, dataset, validation, replicates=3, **train),
                     rounds=rounds, fraction=0.2, scope="layerwise", rewind="init",
                     out="runs/structured")


def _structured_pai(model, dataset, validation, method, density, structure, **train):
    from lotto_jax.runs.pai import PaiConfig

    return PaiConfig(run=_run(model, dataset, validation, replicates=3, **train),
                     method=method, density=density, scope="global", structure=structure,
                     out="runs/structured_pai")


def _colt(command: str):
    """COLT (``colt``) or its IMP comparison (``imp``) on LeNet-300-100: 3,000 steps
    per network, 15 % of the kernels pruned globally per round, output layer pooled."""
    run = _run("lenet300", "tfds:mnist", 5000, steps=3000, eval_every=500, **_LENET)
    if command == "colt":
        from lotto_jax.runs.colt import ColtConfig

        return ColtConfig(run=run, rounds=12, fraction=0.15, output_fraction=None,
                          scope="global", out="runs/colt")
    from lotto_jax.runs.imp import ImpConfig

    return ImpConfig(run=run, rounds=22, fraction=0.15, output_fraction=None, scope="global",
                     rewind="init", out="runs/colt_imp")


def _bip(model, dataset, validation, bip_steps, **train):
    """BiP from the dense network of the IMP recipe it is compared with (the same
    pretraining = IMP's round 0), keeps 20 % to 2 %, the reference's SGD."""
    from lotto_jax.runs.bip import BipConfig

    return BipConfig(run=_run(model, dataset, validation, replicates=3, **train),
                     keep=(0.2, 0.1, 0.05, 0.02), bip_steps=bip_steps, bip_lr=0.1,
                     mask_lr=0.1, bip_momentum=0.9, bip_weight_decay=1e-4, ig_scale=1e-4,
                     correction="paper", out="runs/bip")


def _pai(model, dataset, validation, controls, **train):
    from lotto_jax.runs.pai import PaiConfig

    return PaiConfig(run=_run(model, dataset, validation, **train), method="synflow",
                     density=0.01, scope="global", controls=controls, out="runs/pai")


def _edge_popup(model, dataset, validation):
    from lotto_jax.runs.supermask import SupermaskConfig

    return SupermaskConfig(run=_run(model, dataset, validation, **_EDGE_POPUP),
                           method="edge-popup", keep=0.5,
                           weight_init="scaled-signed-constant", out="runs/edge_popup")


def _dst(model, dataset, validation, **train):
    from lotto_jax.runs.dst import DstConfig

    return DstConfig(run=_run(model, dataset, validation, replicates=3, **train),
                     method="rigl", density=0.05, distribution="erk", update_every=100,
                     out="runs/dst")


_SHORT_PAI = ("the papers prune VGG/ResNet on CIFAR; this is their procedure on "
              "{model} with a short budget ({steps} steps)")

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe(
        "mnist1d-lottery", "imp",
        "Greydanus 2020, MNIST-1D repository, notebooks/lottery-tickets.ipynb "
        "(residual MLP 40-500-500-10, Adam 2e-2, 1500 steps, max test accuracy)",
        "20 % of each layer's survivors per round for 15 rounds (to 3.5 %) instead of "
        "the notebook's 100 retrains on linspace(0, 1, 100) sparsities; 3 replicates "
        "and a random-mask control in one run",
        _mnist1d_lottery,
    ),
    Recipe(
        "grokking", "imp",
        "Minegishi et al. (Grokking Tickets, arXiv:2310.19470; gouki510/Grokking-Tickets): "
        "OnlyMLP on (a + b) mod 67, a <= b pairs, 40 % train, AdamW 1e-3 betas "
        "(0.9, 0.98) wd 1, full batch; round 0 the dense grokking run, round 1 its "
        "ticket: global magnitude, 40 % kept (all four weight matrices), rewound to init",
        "the ticket trains with the dense run's weight decay 1 (the reference's "
        "config_pruning.py retrains it with 0); 30,000 steps each; test accuracy "
        "every 100 steps; --replicates for seeds",
        _grokking,
    ),
    Recipe(
        "grokking-pai", "pai",
        "Minegishi et al. (arXiv:2310.19470): the pruning-at-init baselines of the "
        "grokking ticket (--method random|snip|grasp|synflow), 40 % kept globally, "
        "trained like the recipe grokking",
        "the reference scores the PaI masks on its whole train set; here SNIP and "
        "GraSP score 10 x 67 random train pairs and SynFlow the all-ones input (every "
        "token at once: grok_mlp's soft tokens) instead of the train pairs",
        _grokking_pai,
    ),
    Recipe(
        "grokking-train", "train",
        "Minegishi et al. (arXiv:2310.19470): one network trained like the recipe "
        "grokking; with --mask, a mask rewound to init (e.g. a ticket drawn during "
        "memorisation: round 1 of lotto imp --recipe grokking --steps K)",
        "",
        _grokking_train,
    ),
    Recipe(
        "lth-lenet300", "imp",
        "Frankle & Carbin 2019 (arXiv:1803.03635), LeNet-300-100 on MNIST, Figures 3-4",
        "20,000 iterations per round instead of 50,000 (every early-stop iteration "
        "of the paper's LeNet figures is below 20,000)",
        _lth_lenet300,
    ),
    Recipe(
        "lenet300-dense", "train",
        "Frankle & Carbin 2019 (arXiv:1803.03635), the dense LeNet-300-100 of "
        "Figure 3 (Adam 1.2e-3, batch 60, 50,000 iterations, 5,000 validation images)",
        "",
        _lenet300_dense,
    ),
    Recipe(
        "pai-lenet300", "pai",
        "Tanaka et al. 2020 (SynFlow, arXiv:2006.05467) and Frankle et al. 2021 "
        "(sanity checks, arXiv:2009.08576): prune at init to 1 % with a global "
        "threshold, train, with shuffle and reinit checks",
        _SHORT_PAI.format(model="LeNet-300-100 / MNIST", steps="3,000"),
        lambda: _pai("lenet300", "tfds:mnist", 5000, ("shuffle", "reinit"),
                     steps=3000, eval_every=250, **_LENET),
    ),
    Recipe(
        "pai-mnist1d", "pai",
        "Tanaka et al. 2020 (arXiv:2006.05467) and Frankle et al. 2021 "
        "(arXiv:2009.08576) on the MNIST-1D notebook's MLP and optimiser",
        _SHORT_PAI.format(model="the MNIST-1D MLP", steps="1,500"),
        lambda: _pai("mnist1d_mlp", "mnist1d", 0, ("shuffle", "reinit", "invert"),
                     **_MNIST1D),
    ),
    Recipe(
        "dst-lenet300", "dst",
        "Evci et al. 2020 (RigL, arXiv:1911.11134; ERK, drop 0.3 cosine to 0 at 75 %, "
        "update every 100 steps) and Frankle & Carbin's LeNet-300-100 optimiser; "
        "--method static|set|gmp|granet for the others",
        "6,000 steps (6.5 epochs) instead of RigL's 200 MNIST epochs; Adam 1.2e-3 "
        "batch 60 instead of RigL's Nesterov SGD 0.2 batch 100; 3 replicates",
        lambda: _dst("lenet300", "tfds:mnist", 5000, steps=6000, eval_every=500, **_LENET),
    ),
    Recipe(
        "dst-mnist1d", "dst",
        "Evci et al. 2020 (RigL, arXiv:1911.11134) on the MNIST-1D notebook's MLP and "
        "optimiser; --method static|set|gmp|granet for the others",
        "1,500 steps; the papers have no MNIST-1D result; 3 replicates",
        lambda: _dst("mnist1d_mlp", "mnist1d", 0, **_MNIST1D),
    ),
    Recipe(
        "resmlp-imp", "imp",
        "Jordao et al. 2023 (layer tickets, arXiv:2301.10835) and Li et al. 2017 (unit "
        "norms, arXiv:1608.08710) on a residual MLP: IMP of weights, neurons (--structure "
        "neuron) or blocks (--structure layer --rounds 4 --fraction 0.25)",
        "ResMLP (8 pre-norm blocks, width 128) on MNIST-1D, Adam 2e-3, 1,500 steps per "
        "round, 8 rounds of 20 % layerwise; 3 replicates; the papers use ResNets on CIFAR",
        lambda: _structured_imp("resmlp", "mnist1d", 0, 8, **_RESMLP),
    ),
    Recipe(
        "resmlp-pai", "pai",
        "Jordao et al. 2023 (arXiv:2301.10835): layer tickets at initialisation, block "
        "scores summed from SNIP (--method snip|synflow|random), half the blocks kept",
        "their criterion is unverified (a reconstruction: a per-weight saliency summed "
        "per block); ResMLP on MNIST-1D as resmlp-imp; 3 replicates",
        lambda: _structured_pai("resmlp", "mnist1d", 0, "snip", 0.5, "layer", **_RESMLP),
    ),
    Recipe(
        "lenet300-5k-imp", "imp",
        "Frankle & Carbin 2019 (arXiv:1803.03635) LeNet-300-100 optimiser, for the "
        "structured tickets (--structure weight|neuron) and the stability analysis",
        "5,000 iterations per round (not 50,000), 10 rounds of 20 % layerwise (output "
        "10 %); 3 replicates",
        lambda: _structured_imp("lenet300", "tfds:mnist", 5000, 10, **_LENET_5K),
    ),
    Recipe(
        "lenet300-5k-pai", "pai",
        "Pruning at init on LeNet-300-100 with lenet300-5k-imp's training, for mask "
        "overlap with IMP at one density (--method synflow|snip|random --density D)",
        "5,000 iterations; no sanity checks; 3 replicates",
        lambda: _structured_pai("lenet300", "tfds:mnist", 5000, "synflow", 0.109, "weight",
                                **_LENET_5K),
    ),
    Recipe(
        "colt-lenet300", "colt",
        "Hossain et al. 2022 (COLT, arXiv:2212.12770; ismail31416/COLT): classes 0-4 / "
        "5-9 (labels remapped), one network per range per round, the next mask the "
        "intersection of their global magnitude masks (15 % per round), rewind to init",
        "LeNet-300-100 / MNIST instead of conv nets on CIFAR; Adam 1.2e-3, 3,000 steps per "
        "network (not 50 epochs of SGD with early stopping); output layer pruned with the "
        "others; 12 rounds",
        lambda: _colt("colt"),
    ),
    Recipe(
        "colt-imp-lenet300", "imp",
        "IMP beside colt-lenet300 (Hossain et al. 2022 compare COLT with IMP at equal "
        "density): the same training and 15 % global pruning per round, one network",
        "as colt-lenet300; 22 rounds (to about COLT's 2.8 %)",
        lambda: _colt("imp"),
    ),
    Recipe(
        "bip-lenet300", "bip",
        "Zhang et al. 2022 (BiP, arXiv:2210.04092; OPTML-Group/BiP configs/CIFAR10/"
        "bip.yml): scores = the pretrained weights, global top-k, SGD 0.1 momentum 0.9 "
        "wd 1e-4 cosine on weights and scores, implicit-gradient coefficient 1e-4",
        "LeNet-300-100 / MNIST instead of ResNets on CIFAR; pretraining = lenet300-5k-imp's "
        "round 0 (Adam 1.2e-3, 5,000 steps); 5,000 BiP steps (2,500 θ-steps, 2,500 "
        "m-steps, batch 60) instead of 100 epochs; no fine-tuning; 3 replicates",
        lambda: _bip("lenet300", "tfds:mnist", 5000, 5000, **_LENET_5K),
    ),
    Recipe(
        "bip-mnist1d", "bip",
        "Zhang et al. 2022 (BiP, arXiv:2210.04092) on the MNIST-1D MLP, as bip-lenet300",
        "pretraining = mnist1d-lottery's round 0 (Adam 2e-2, 1,500 steps, fixed order); "
        "1,500 BiP steps; 3 replicates",
        lambda: _bip("mnist1d_mlp", "mnist1d", 0, 1500, **_MNIST1D),
    ),
    Recipe(
        "edge-popup-lenet300", "supermask",
        "Ramanujan et al. 2020 (arXiv:1911.13299), edge-popup with the scaled signed "
        "constant init; optimiser of the paper's MNIST example",
        "3,000 steps (~7 epochs) instead of 100 epochs; LeNet-300-100",
        lambda: _edge_popup("lenet300", "tfds:mnist", 5000),
    ),
    Recipe(
        "edge-popup-mnist1d", "supermask",
        "Ramanujan et al. 2020 (arXiv:1911.13299), edge-popup on the MNIST-1D MLP",
        "3,000 steps; the paper has no MNIST-1D result",
        lambda: _edge_popup("mnist1d_mlp", "mnist1d", 0),
    ),
)}
"""Every recipe by name."""


def get(name: str, command: str | None = None) -> Recipe:
    """The recipe called ``name`` (for ``command``, if given).

    Raises:
      ValueError: an unknown name (listing the known ones), or a recipe of another
        command.

    Examples:
      >>> get("mnist1d-lottery").command
      'imp'
    """
    if name not in RECIPES:
        raise ValueError(f"recipe: unknown recipe {name!r} (expected one of {list(RECIPES)})")
    recipe = RECIPES[name]
    if command is not None and recipe.command != command:
        raise ValueError(
            f"recipe: {name!r} configures 'lotto {recipe.command}', not 'lotto {command}' "
            f"(recipes of {command}: {[r.name for r in RECIPES.values() if r.command == command]})"
        )
    return recipe


def build(name: str, command: str | None = None) -> Any:
    """The config of recipe ``name``, with its ``recipe`` field set to the name.

    Examples:
      >>> cfg = build("mnist1d-lottery")
      >>> cfg.rounds, cfg.run.replicates, cfg.recipe
      (15, 3, 'mnist1d-lottery')
    """
    recipe = get(name, command)
    return dataclasses.replace(recipe.make(), recipe=name)


@dataclasses.dataclass(frozen=True)
class RecipesConfig:
    """List the recipes: the papers' settings as presets of the commands.

    Attributes:
      command: only the recipes of this command (train, imp, pai, supermask).
    """

    command: str | None = None


def main(config: RecipesConfig) -> list[Recipe]:
    """Prints each recipe with its command, source and what differs from the paper."""
    from rich.console import Console
    from rich.table import Table

    chosen = [r for r in RECIPES.values() if config.command in (None, r.command)]
    if not chosen:
        raise ValueError(
            f"command: no recipe configures {config.command!r} "
            f"(commands with recipes: {sorted({r.command for r in RECIPES.values()})})"
        )
    table = Table(title="lotto recipes: lotto COMMAND --recipe NAME [flags that override]")
    for col in ("name", "command", "source", "differs from the paper"):
        table.add_column(col, overflow="fold")
    for r in chosen:
        table.add_row(r.name, r.command, r.source, r.differs or "-")
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
    return chosen
