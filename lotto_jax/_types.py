"""Type aliases shared across lotto_jax.

A *mask* is a pytree with exactly the tree structure of the params it masks and
boolean leaves of the same shapes. *Scores* are pytrees of the same structure with
floating leaves. A *prunable* predicate decides, from a leaf's key path and the leaf
(a param, mask or score leaf: they share shapes), whether pruning may touch it.
"""

from collections.abc import Callable
from typing import Any, TypeAlias

import jax

__all__ = ["Groups", "KeyPath", "Mask", "PRNGKey", "Params", "Prunable", "Scores"]

Params: TypeAlias = Any
"""Any pytree of arrays: linen ``variables['params']``, nnx ``State``, dicts, lists."""
Mask: TypeAlias = Any
"""A pytree like the params with boolean leaves (``True`` = kept)."""
Scores: TypeAlias = Any
"""A pytree like the params with floating leaves (higher = more important)."""
PRNGKey: TypeAlias = jax.Array
KeyPath: TypeAlias = tuple[Any, ...]
Prunable: TypeAlias = Callable[[KeyPath, Any], bool]
Groups: TypeAlias = str | Callable[[KeyPath], str]
"""How prunable leaves pool into pruning groups: ``"leaf"``, ``"layer"`` or a function
``(key_path) -> group name`` (:func:`lotto_jax.masks.group_name`)."""
