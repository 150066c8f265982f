"""lotto_jax: sparse training and lottery tickets in JAX.

Masks are pytrees shaped like the params; pure functions create, apply, score, prune
and combine them, and train steps take the mask as an ordinary traced argument.

The public modules are imported here: ``lotto_jax.masks``, ``lotto_jax.scores``,
``lotto_jax.prune``, ``lotto_jax.sparse`` and the rest.
"""

from lotto_jax import (
    common,
    data,
    imp,
    masks,
    models,
    pai,
    plots,
    prune,
    recipes,
    report,
    scores,
    sharding,
    sparse,
    store,
    supermask,
    sweeps,
    train,
)
from lotto_jax._types import Groups, KeyPath, Mask, Params, PRNGKey, Prunable, Scores

__version__ = "0.1.0"

__all__ = [
    "Groups",
    "KeyPath",
    "Mask",
    "PRNGKey",
    "Params",
    "Prunable",
    "Scores",
    "common",
    "data",
    "imp",
    "masks",
    "models",
    "pai",
    "plots",
    "prune",
    "recipes",
    "report",
    "scores",
    "sharding",
    "sparse",
    "store",
    "supermask",
    "sweeps",
    "train",
]
