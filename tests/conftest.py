"""Test-wide JAX settings: strict like equinox's suite.

Implicit rank promotion raises, so a broadcast the code did not mean to do fails the
test instead of silently computing the wrong shape.

float32 matrix products run at full precision: on GPUs JAX's default lets them use
TF32 (10-bit mantissas, relative errors near 1e-4), which the numpy references of
the suite (rtol 1e-5 and below) would reject. On a CPU this changes nothing.
"""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")
