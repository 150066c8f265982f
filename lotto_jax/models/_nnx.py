"""Flax NNX versions of the models (LeNet-300-100), for code that works on nnx State.

The layer attributes carry the same names as the linen modules' params (``Dense_0``,
``Dense_1``, ``output``, each with ``kernel`` ``(in, out)`` and ``bias``), so
``nnx.split(model, nnx.Param, ...)`` yields a State whose key paths match
``variables['params']`` of :class:`~lotto_jax.models.LeNet300`, and masks built for
one apply to the other.
"""

from collections.abc import Sequence

import jax
from flax import nnx

from lotto_jax.models._initializers import glorot_normal

__all__ = ["LeNet300NNX"]


class LeNet300NNX(nnx.Module):
    """LeNet-300-100 as an ``nnx.Module``: 784-300-100-10, ReLU, Glorot normal.

    Same layers, names and initialisers as the linen :class:`LeNet300` (266,610
    parameters), hence the same forward pass given the same weights.

    Args:
        num_classes: output width, 10.
        in_features: flattened input size, 784 (28x28x1).
        features: hidden widths, ``(300, 100)``; layers ``Dense_0``, ``Dense_1``.
        rngs: the ``nnx.Rngs`` to draw the weights from (keyword-only).

    Examples:
        >>> from flax import nnx
        >>> model = LeNet300NNX(rngs=nnx.Rngs(0))
        >>> graphdef, params = nnx.split(model, nnx.Param)
        >>> params["output"]["kernel"].shape
        (100, 10)

    References:
        Frankle & Carbin 2019, "The Lottery Ticket Hypothesis", arXiv:1803.03635.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_features: int = 784,
        features: Sequence[int] = (300, 100),
        rngs: nnx.Rngs,
    ):
        if len(features) != 2:
            raise ValueError(
                f"LeNet300NNX.features: expected two hidden widths, got {features!r}"
            )
        init = glorot_normal()
        widths = (in_features, *features)
        self.Dense_0 = nnx.Linear(widths[0], widths[1], kernel_init=init, rngs=rngs)
        self.Dense_1 = nnx.Linear(widths[1], widths[2], kernel_init=init, rngs=rngs)
        self.output = nnx.Linear(widths[2], num_classes, kernel_init=init, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Returns logits ``[batch, num_classes]``; inputs are flattened first."""
        del train
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.Dense_0(x))
        x = nnx.relu(self.Dense_1(x))
        return self.output(x)
