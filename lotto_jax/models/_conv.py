"""Plain convolutional models: LeNet-5 and the lottery-ticket paper's Conv-2/4/6.

Inputs are NHWC images. Convolutions are ``Conv_0``, ``Conv_1``, ..., hidden dense
layers ``Dense_0``, ``Dense_1``, ... and the final layer ``output``. The flatten
before the dense layers is in NHWC order (PyTorch flattens NCHW; this permutes the
rows of ``Dense_0``'s kernel and changes nothing else).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax

from lotto_jax.models._initializers import glorot_normal

__all__ = ["CONV_PLANS", "ConvNet", "LeNet5"]

CONV_PLANS: dict[str, tuple[int | str, ...]] = {
    "conv2": (64, 64, "M"),
    "conv4": (64, 64, "M", 128, 128, "M"),
    "conv6": (64, 64, "M", 128, 128, "M", 256, 256, "M"),
}
"""Convolution plans of Conv-2/4/6: an int is a 3x3 SAME conv + ReLU, ``"M"`` a 2x2
max pool (Frankle & Carbin 2019, Figure 2)."""


class ConvNet(nn.Module):
    """VGG-like CIFAR network of the lottery-ticket paper (Conv-2, Conv-4, Conv-6).

    ``plan`` convolutions (3x3, SAME, stride 1, ReLU, with bias) and 2x2/2 max pools,
    flatten, ``dense`` fully connected ReLU layers, then ``output``. Glorot normal
    weights and zero biases everywhere, as in the paper. On 32x32x3 inputs:

    ========  ==========  ===================  ===================
    network   all params  paper "all weights"  conv weights (paper)
    ========  ==========  ===================  ===================
    Conv-2    4,301,642   4.3M                 38,592 (38K)
    Conv-4    2,425,930   2.4M                 259,776 (260K)
    Conv-6    2,262,602   1.7M (see below)     1,144,512 (1.1M)
    ========  ==========  ===================  ===================

    The paper's Figure 2 gives Conv-6 1.7M weights, which its own architecture
    cannot produce: the 4x4x256 feature map into the first 256-unit dense layer
    alone is 1,048,576 weights on top of its 1.1M conv weights (which do match).
    We implement the architecture as described.

    Attributes:
        plan: conv widths and ``"M"`` pools, e.g. ``CONV_PLANS["conv4"]``.
        dense: widths of the hidden dense layers, ``(256, 256)``.
        num_classes: output width, 10.
        kernel_init: Glorot normal (see :func:`glorot_normal`).

    References:
        Frankle & Carbin 2019, "The Lottery Ticket Hypothesis", arXiv:1803.03635
        (Figure 2 and Appendix); Simonyan & Zisserman 2015, arXiv:1409.1556.
    """

    plan: Sequence[int | str] = CONV_PLANS["conv2"]
    dense: Sequence[int] = (256, 256)
    num_classes: int = 10
    kernel_init: nn.initializers.Initializer = glorot_normal()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Returns logits ``[batch, num_classes]`` for NHWC images; ``train`` unused."""
        del train
        i = 0
        for spec in self.plan:
            if spec == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            else:
                x = nn.Conv(
                    int(spec),
                    (3, 3),
                    padding="SAME",
                    kernel_init=self.kernel_init,
                    name=f"Conv_{i}",
                )(x)
                x = nn.relu(x)
                i += 1
        x = x.reshape(x.shape[0], -1)
        for j, width in enumerate(self.dense):
            x = nn.relu(
                nn.Dense(width, kernel_init=self.kernel_init, name=f"Dense_{j}")(x)
            )
        return nn.Dense(self.num_classes, kernel_init=self.kernel_init, name="output")(
            x
        )


class LeNet5(nn.Module):
    """Classic LeNet-5 layout with ReLU and max pooling, for 28x28 MNIST.

    ``Conv_0`` 6@5x5 SAME (on 28x28 this equals LeCun's VALID conv on the 32x32
    zero-padded image) -> ReLU -> 2x2 max pool -> ``Conv_1`` 16@5x5 VALID -> ReLU ->
    2x2 max pool (5x5x16 = 400) -> ``Dense_0`` 120 -> ``Dense_1`` 84 -> ``output``
    10. Glorot normal weights, zero biases (the lottery-ticket paper's MNIST
    initialiser). 61,706 parameters: 156 + 2,416 + 48,120 + 10,164 + 850.

    Differences from LeCun et al. 1998, chosen as is usual today: ReLU instead of
    scaled tanh, max pooling instead of trainable subsampling, a fully connected
    C3 (LeCun's C3 uses a sparse connection table) and a plain dense output instead
    of RBF units. Han et al. 2015's Caffe "LeNet-5" (20 and 50 filters, 500 hidden,
    431K params) is a different network.

    Attributes:
        num_classes: output width, 10.
        kernel_init: Glorot normal (see :func:`glorot_normal`).
        widths: the widths of ``Conv_0``, ``Conv_1``, ``Dense_0`` and ``Dense_1``;
            ``None`` (the default) is ``(6, 16, 120, 84)``. A compacted network
            (:func:`lotto_jax.export.compact`) has smaller ones.

    References:
        LeCun et al. 1998, "Gradient-based learning applied to document
        recognition"; Frankle & Carbin 2019, arXiv:1803.03635.
    """

    num_classes: int = 10
    kernel_init: nn.initializers.Initializer = glorot_normal()
    widths: tuple[int, int, int, int] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Returns logits ``[batch, num_classes]`` for NHWC images; ``train`` unused."""
        del train
        init = self.kernel_init
        c0, c1, d0, d1 = (6, 16, 120, 84) if self.widths is None else self.widths
        x = nn.relu(
            nn.Conv(c0, (5, 5), padding="SAME", kernel_init=init, name="Conv_0")(x)
        )
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(
            nn.Conv(c1, (5, 5), padding="VALID", kernel_init=init, name="Conv_1")(x)
        )
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(d0, kernel_init=init, name="Dense_0")(x))
        x = nn.relu(nn.Dense(d1, kernel_init=init, name="Dense_1")(x))
        return nn.Dense(self.num_classes, kernel_init=init, name="output")(x)
