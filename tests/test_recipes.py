"""Recipes: every recipe builds its command's config; flags override; errors name
the recipe; every experiment script runs through a recipe."""

import dataclasses
import glob
import os
import re
import subprocess
import sys

import pytest
import tyro

from lotto_jax.runs import cli, recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(command, args):
    cls, _ = cli._command(command)
    name = cli._recipe_name(args)
    default = None if name is None else recipes.build(name, command)
    return tyro.cli(cls, args=args, default=default, config=(tyro.conf.OmitArgPrefixes,))


@pytest.mark.parametrize("name", list(recipes.RECIPES))
def test_every_recipe_builds_and_parses_to_itself(name):
    recipe = recipes.RECIPES[name]
    cfg = recipes.build(name)
    cls, _ = cli._command(recipe.command)
    assert type(cfg) is cls and cfg.recipe == name
    assert recipe.source and isinstance(recipe.differs, str)
    assert _parse(recipe.command, ["--recipe", name]) == cfg


def test_main_job_recipe_values():
    """The README's main job: the notebook's optimiser, pooled biases, 15 rounds to
    0.8^15 = 3.5 %, 3 replicates and a random control."""
    cfg = recipes.build("mnist1d-lottery")
    t = cfg.run.train
    assert (cfg.run.model, cfg.run.dataset, cfg.run.replicates) == ("mnist1d_mlp", "mnist1d", 3)
    assert (t.steps, t.batch_size, t.optimizer, t.lr, t.shuffle, t.eval_every) == (
        1500, 100, "adam", 2e-2, False, 100)
    assert (cfg.prune_biases, cfg.groups, cfg.output_fraction, cfg.rewind) == (
        True, "layer", None, "init")
    assert cfg.rounds == 15 and abs(0.8 ** cfg.rounds - 0.035) < 0.001
    assert "random" in cfg.controls


def test_explicit_flags_override_the_recipe():
    cfg = _parse("imp", ["--recipe", "lth-lenet300", "--rounds", "2", "--dataset",
                         "npz:/data/mnist.npz", "--lr", "0.01", "--controls"])
    base = recipes.build("lth-lenet300")
    assert (cfg.rounds, cfg.run.dataset, cfg.run.train.lr, cfg.controls) == (
        2, "npz:/data/mnist.npz", 0.01, ())
    # everything else is the recipe's
    assert cfg.run.train.steps == base.run.train.steps == 20000
    assert cfg.output_fraction == base.output_fraction == 0.1
    assert dataclasses.replace(cfg, rounds=base.rounds, controls=base.controls,
                               run=base.run) == base
    assert _parse("imp", ["--recipe=mnist1d-lottery"]).rounds == 15


def test_unknown_or_misplaced_recipe_is_a_named_error():
    with pytest.raises(ValueError, match=r"recipe: unknown recipe 'nope' \(expected one of"):
        recipes.get("nope")
    with pytest.raises(ValueError, match=r"recipe: 'mnist1d-lottery' configures 'lotto imp', "
                                         r"not 'lotto pai'"):
        recipes.build("mnist1d-lottery", "pai")
    with pytest.raises(ValueError, match="recipe: expected a name after --recipe"):
        cli._recipe_name(["--recipe"])


def test_recipe_errors_and_listing_through_the_entry_point():
    run = lambda *a: subprocess.run([sys.executable, "-m", "lotto_jax.runs.cli", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    bad = run("pai", "--recipe", "mnist1d-lottery")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        bad.stderr.strip().splitlines()[0]] and "configures 'lotto imp'" in bad.stderr
    listing = run("recipes")
    assert listing.returncode == 0
    for name in recipes.RECIPES:
        assert name in listing.stdout
    assert "Greydanus 2020" in listing.stdout


def test_every_experiment_script_uses_a_recipe():
    scripts = glob.glob(os.path.join(ROOT, "experiments", "*.sh"))
    assert scripts
    commands = "|".join(sorted({r.command for r in recipes.RECIPES.values()}))
    checked = 0
    for path in scripts:
        text = open(path).read()
        if not re.findall(rf"lotto ({commands})\b", text):
            continue  # only commands without recipes (lotto sft, lotto stability, ...)
        checked += 1
        used = re.findall(r"--recipe[ =]\"?\$?\{?([\w-]+)", text) + re.findall(
            r"--recipe ([\w-]+)", text)
        assert "--recipe" in text, f"{path} runs lotto without a recipe"
        for name in used:
            if not name.startswith(("ARGS", "SETTING")):
                assert name in recipes.RECIPES, (path, name)
    assert checked >= 5
