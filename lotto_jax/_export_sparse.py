"""Sparse inference for :mod:`lotto_jax.export`: kernels as sparse matrices, and the
MLPs' forward pass over them (re-exported there)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse

from lotto_jax import masks
from lotto_jax._types import Mask, Params
from lotto_jax.models import MLP, MNIST1DMLP, ResMLP

__all__ = ["DEFAULT_FORMAT", "FORMATS", "GatherKernel", "sparse_apply", "to_bcoo",
           "to_sparse"]

FORMATS = ("bcoo", "bcsr", "gather")
"""Sparse kernel formats of :func:`to_sparse`."""

DEFAULT_FORMAT = "bcsr"
"""The fastest format measured: BCSR of the transposed kernel.

benchmarks/inference.py, LeNet-300-100 at 2 % (layerwise), jitted forward, speed-up
over the dense network, median of 5 paired repeats, three runs on the loaded 2-core
CPU of BENCHMARKS.md (2026-12-01): batch 256: bcsr 2.8x / 8.5x / 4.1x, bcoo 1.8x /
1.6x / 1.8x, gather 0.62x / 0.95x / 1.25x; batch 1: bcsr 1.01x / 0.85x / 1.64x, bcoo
0.97x / 0.60x / 1.15x, gather 1.02x / 0.65x / 1.38x (at batch 1 the calls, not the
arithmetic, cost the time)."""


class GatherKernel(flax.struct.PyTreeNode):
    """A kernel ``W (in, out)`` as its kept entries: ``W[rows[k], cols[k]] = data[k]``,
    sorted by ``cols``. ``x @ W`` is a gather of ``x``'s columns ``rows``, a product
    with ``data`` and a sorted segment sum over ``cols``."""

    data: jax.Array
    rows: jax.Array
    cols: jax.Array
    shape: tuple[int, int] = flax.struct.field(pytree_node=False)

    def __rmatmul__(self, x: jax.Array) -> jax.Array:
        """``x @ W`` for ``x`` of shape ``(batch, in)``."""
        prod = (x[:, self.rows] * self.data[None, :]).T  # (nse, batch)
        y = jax.ops.segment_sum(prod, self.cols, num_segments=self.shape[1],
                                indices_are_sorted=True)
        return y.T


def _sparse_kernel(w: np.ndarray, m: np.ndarray, format: str):
    cols, rows = np.nonzero(m.T)  # column-major: sorted by output column
    rows, cols = rows.astype(np.int32), cols.astype(np.int32)
    data = jnp.asarray(w[rows, cols])
    if format == "gather":
        return GatherKernel(data, jnp.asarray(rows), jnp.asarray(cols), tuple(w.shape))
    if format == "bcoo":
        order = np.lexsort((cols, rows))
        return sparse.BCOO((data[order], jnp.asarray(np.stack([rows, cols], 1)[order])),
                           shape=tuple(w.shape), indices_sorted=True, unique_indices=True)
    # bcsr: the transposed kernel (out, in), rows = output units: y^T = W^T x^T
    indptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=w.shape[1]))])
    return sparse.BCSR((data, jnp.asarray(rows), jnp.asarray(indptr.astype(np.int32))),
                       shape=(w.shape[1], w.shape[0]))


def to_sparse(params: Params, mask: Mask, *, format: str = DEFAULT_FORMAT) -> Params:
    """Every dense kernel (2-D leaf) as a sparse matrix of its kept entries.

    Args:
      params: the params (nested dicts of arrays).
      mask: a boolean pytree like ``params``; a kernel keeps the entries where it
        is True (the values stored are ``params`` there, zeros included).
      format: ``"bcoo"`` (:class:`jax.experimental.sparse.BCOO` of shape ``(in,
        out)``), ``"bcsr"`` (:class:`jax.experimental.sparse.BCSR` of the
        *transposed* kernel ``(out, in)``: row-wise products) or ``"gather"``
        (:class:`GatherKernel`); default :data:`DEFAULT_FORMAT`, the fastest.

    Returns:
      ``params`` with every 2-D leaf replaced by its sparse form; other leaves
      (biases, norms, conv kernels) unchanged and dense.

    Raises:
      ValueError: an unknown ``format``, or a mask that does not fit ``params``.
    """
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {format!r}")
    masks.validate(params, mask, name="mask")

    def one(w, m):
        if jnp.ndim(w) != 2:
            return w
        return _sparse_kernel(np.asarray(w), np.asarray(m, bool), format)

    return jax.tree.map(one, params, mask)


def to_bcoo(params: Params, mask: Mask) -> Params:
    """:func:`to_sparse` with ``format="bcoo"``: every dense kernel as a
    :class:`jax.experimental.sparse.BCOO` of shape ``(in, out)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> p = {"Dense_0": {"kernel": jnp.array([[1.0, 2.0], [3.0, 4.0]]),
      ...                  "bias": jnp.zeros(2)}}
      >>> m = {"Dense_0": {"kernel": jnp.array([[True, False], [False, True]]),
      ...                  "bias": jnp.ones(2, bool)}}
      >>> k = to_bcoo(p, m)["Dense_0"]["kernel"]
      >>> k.nse, k.todense().tolist()
      (2, [[1.0, 0.0], [0.0, 4.0]])
    """
    return to_sparse(params, mask, format="bcoo")


def _matmul(x: jax.Array, w: Any) -> jax.Array:
    if isinstance(w, sparse.BCSR):
        return (w @ x.T).T
    if isinstance(w, GatherKernel):
        return w.__rmatmul__(x)
    return x @ w


def _dense(p: dict[str, Any], x: jax.Array) -> jax.Array:
    return _matmul(x, p["kernel"]) + p["bias"][None, :]


def sparse_apply(module: nn.Module, sparse_params: Params, x: jax.Array) -> jax.Array:
    """The forward pass of an MLP over :func:`to_sparse` params (any format, dense
    kernels too): the outputs of ``module.apply({"params": masked_params}, x)``.

    ``module`` is an ``MLP`` (``LeNet300``), ``MNIST1DMLP`` or ``ResMLP`` (its layer
    norms stay dense). Jit it with the module static:
    ``jax.jit(functools.partial(sparse_apply, module))``.

    Args:
      module: the model.
      sparse_params: its params with sparse kernels.
      x: inputs ``[batch, ...]`` (flattened).

    Returns:
      Logits ``[batch, num_classes]``.

    Raises:
      ValueError: a model other than the MLPs.
    """
    p = sparse_params
    x = x.reshape(x.shape[0], -1)
    if isinstance(module, MNIST1DMLP):
        h = nn.relu(_dense(p["Dense_0"], x))
        z = nn.relu(_dense(p["Dense_1"], h))
        return _dense(p["output"], h + z if module.residual else z)
    if isinstance(module, MLP):
        for i in range(len(module.features)):
            x = nn.relu(_dense(p[f"Dense_{i}"], x))
        return _dense(p["output"], x)
    if isinstance(module, ResMLP):
        norm = nn.LayerNorm()
        h = _dense(p["input"], x)
        for i in range(module.blocks):
            b = p[f"block_{i}"]
            y = norm.apply({"params": b["norm"]}, h)
            h = h + _dense(b["fc2"], nn.relu(_dense(b["fc1"], y)))
        return _dense(p["output"], nn.relu(norm.apply({"params": p["norm"]}, h)))
    raise ValueError(
        f"model: sparse_apply runs MLP, LeNet300, MNIST1DMLP and ResMLP, not "
        f"{type(module).__name__}"
    )
