"""lotto_jax: sparse training and lottery tickets in JAX.

Masks are pytrees shaped like the params; pure functions create, apply, score, prune
and combine them, and train steps take the mask as an ordinary traced argument.

Two layers. The algorithms (``lotto_jax.masks``, ``scores``, ``prune``, ``sparse``,
``train``, ``imp``, ``pai``, ``supermask``, ``dst``, ``analysis``, ``data``, ``models``,
``sharding``) are
pure JAX: no files, no printing. The run layer ``lotto_jax.runs`` holds the store,
the engine, one driver per ``lotto`` command, recipes, reports and the CLI; it
imports the algorithms, never the other way round.
"""

from lotto_jax import (
    analysis,
    colt,
    data,
    dst,
    export,
    imp,
    masks,
    models,
    oneshot,
    pai,
    prune,
    runs,
    scores,
    sft,
    sharding,
    sparse,
    structured,
    supermask,
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
    "analysis",
    "colt",
    "data",
    "dst",
    "export",
    "imp",
    "masks",
    "models",
    "oneshot",
    "pai",
    "prune",
    "runs",
    "scores",
    "sft",
    "sharding",
    "sparse",
    "structured",
    "supermask",
    "train",
]
