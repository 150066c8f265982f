"""Fully connected models: the generic MLP, LeNet-300-100 and the MNIST-1D MLP.

Layer names are fixed so that masks and pruning rules can match them by key path:
hidden layers are ``Dense_0``, ``Dense_1``, ... and the final layer is ``output``.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax

from lotto_jax.models._initializers import glorot_normal, pytorch_uniform

__all__ = ["MLP", "MNIST1DMLP", "LeNet300"]


class MLP(nn.Module):
    """Fully connected ReLU network: ``features`` hidden layers then ``output``.

    Inputs of any shape ``[batch, ...]`` are flattened to ``[batch, -1]``.

    Attributes:
        features: widths of the hidden layers, named ``Dense_0``, ``Dense_1``, ...
        num_classes: width of the final layer ``output`` (logits).
        kernel_init: initialiser of every kernel; Glorot normal (TF1's truncated
            variant, see :func:`glorot_normal`) by default.
        bias_init: initialiser of every bias; zeros by default.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> model = MLP(features=(8, 4), num_classes=3)
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 5)))
        >>> model.apply(variables, jnp.ones((2, 5))).shape
        (2, 3)

    References:
        Frankle & Carbin 2019, "The Lottery Ticket Hypothesis", arXiv:1803.03635.
    """

    features: Sequence[int] = (100, 100)
    num_classes: int = 10
    kernel_init: nn.initializers.Initializer = glorot_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Returns logits ``[batch, num_classes]``; ``train`` is unused (no BN)."""
        del train
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.features):
            x = nn.Dense(
                width,
                kernel_init=self.kernel_init,
                bias_init=self.bias_init,
                name=f"Dense_{i}",
            )(x)
            x = nn.relu(x)
        return nn.Dense(
            self.num_classes,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            name="output",
        )(x)


class LeNet300(MLP):
    """LeNet-300-100: 784-300-100-10, ReLU, Glorot normal weights, zero biases.

    266,610 parameters on 28x28 MNIST (266,200 weights + 410 biases; the paper's
    "266K"). The kernels are drawn from Glorot normal as in the paper; we use the
    truncated-and-rescaled variant of TF1's ``glorot_normal_initializer`` (the
    empirical standard deviation is still ``sqrt(2 / (fan_in + fan_out))``).
    open_lth's ``mnist_lenet_300_100`` instead uses PyTorch's untruncated
    ``kaiming_normal_``; pass ``kernel_init=`` to reproduce it.

    Attributes:
        features: hidden widths, ``(300, 100)``.
        num_classes: output width, 10.
        kernel_init: Glorot normal.
        bias_init: zeros.

    References:
        Frankle & Carbin 2019, "The Lottery Ticket Hypothesis", arXiv:1803.03635
        (Figure 2); LeCun et al. 1998, "Gradient-based learning applied to document
        recognition".
    """

    features: Sequence[int] = (300, 100)


class MNIST1DMLP(nn.Module):
    """The MNIST-1D lottery-ticket notebook's MLP: 40 -> 500 -> 500 -> 10, residual.

    ``h = relu(W1 x + b1); h = h + relu(W2 h + b2); logits = W3 h + b3`` (the second
    layer is residual when ``residual=True``). Weights and biases use PyTorch's
    default ``nn.Linear`` init ``U(±1/sqrt(fan_in))`` (see :func:`pytorch_uniform`),
    as in the notebook. With the defaults: 40*500+500 + 500*500+500 + 500*10+10 =
    276,010 parameters.

    This is the notebook's model (``notebooks/lottery_tickets.ipynb``, hidden size
    500), *not* the MNIST-1D paper's 40-100-100-10 MLP baseline; for that, use
    ``MLP(features=(100, 100))`` (Glorot init) or this class with ``hidden=100,
    residual=False``.

    Attributes:
        hidden: width of both hidden layers (``Dense_0``, ``Dense_1``), 500.
        residual: add the skip connection around the second layer.
        num_classes: output width, 10.

    References:
        Greydanus 2020, "Scaling down Deep Learning" (MNIST-1D), arXiv:2011.14439,
        and its repository's lottery-ticket notebook; Frankle & Carbin 2019,
        arXiv:1803.03635.
    """

    hidden: int = 500
    residual: bool = True
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Returns logits ``[batch, num_classes]``; ``train`` is unused (no BN)."""
        del train
        x = x.reshape(x.shape[0], -1)
        h = nn.relu(self._dense(self.hidden, x.shape[-1], "Dense_0")(x))
        z = nn.relu(self._dense(self.hidden, self.hidden, "Dense_1")(h))
        h = h + z if self.residual else z
        return self._dense(self.num_classes, self.hidden, "output")(h)

    @staticmethod
    def _dense(features: int, fan_in: int, name: str) -> nn.Dense:
        return nn.Dense(
            features,
            kernel_init=pytorch_uniform(),
            bias_init=pytorch_uniform(fan_in=fan_in),
            name=name,
        )
