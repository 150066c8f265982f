"""Saliency scores: pure functions returning pytrees like the params.

A higher score means more important: pruning keeps the highest-scoring weights. Scores
of unprunable leaves are computed like any other leaf and ignored by
:mod:`lotto_jax.prune`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lotto_jax._types import Params, PRNGKey, Scores

__all__ = ["magnitude", "random"]


def magnitude(params: Params) -> Scores:
    """|θ|: the score of magnitude pruning (Frankle & Carbin 2019, arXiv:1803.03635).

    Args:
      params: any pytree of arrays (trained weights for IMP, θ0 for magnitude at
        initialisation).

    Returns:
      A pytree of ``|param|``.

    Examples:
      >>> import jax.numpy as jnp
      >>> magnitude({"w": jnp.array([-3.0, 1.0])})
      {'w': Array([3., 1.], dtype=float32)}
    """
    return jax.tree.map(jnp.abs, params)


def random(params: Params, *, key: PRNGKey) -> Scores:
    """I.i.d. N(0, 1) scores: random pruning (a global threshold gives about the
    same density in every layer).

    Args:
      params: gives the structure, shapes and dtypes.
      key: a PRNG key; each leaf gets its own subkey.

    Returns:
      A pytree of standard-normal draws shaped like ``params``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> random({"w": jnp.zeros((2, 3))}, key=jax.random.key(0))["w"].shape
      (2, 3)
    """
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    draws = [
        jax.random.normal(
            k,
            jnp.shape(p),
            jnp.result_type(p) if jnp.issubdtype(jnp.result_type(p), jnp.floating)
            else jnp.float32,
        )
        for k, p in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, draws)
