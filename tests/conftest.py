"""Test-wide JAX settings: strict like equinox's suite.

Implicit rank promotion raises, so a broadcast the code did not mean to do fails the
test instead of silently computing the wrong shape.
"""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
