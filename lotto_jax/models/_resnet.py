"""CIFAR ResNets (He et al. 2016, Section 4.2), ResNet-20 by default."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lotto_jax.models._initializers import kaiming_normal

__all__ = ["BasicBlock", "CifarResNet"]

_SHORTCUTS = ("projection", "zero_pad")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual connection.

    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``. The shortcut is the
    identity when shapes agree; otherwise (first block of stages 2 and 3: stride 2,
    doubled width) it is ``"projection"`` (1x1 stride-2 conv without bias, then
    BatchNorm: ``shortcut_conv``, ``shortcut_bn``; open_lth's choice, He et al.'s
    option B) or ``"zero_pad"`` (subsample by 2 and zero-pad the new channels, no
    parameters; He et al.'s option A for CIFAR).

    Attributes:
        features: output channels.
        strides: stride of ``conv1`` (and of the shortcut), 1 or 2.
        shortcut: ``"projection"`` or ``"zero_pad"``.
        kernel_init: conv kernel initialiser.
        bn_scale_init: BatchNorm scale initialiser.
        bn_momentum: flax BatchNorm momentum.

    References:
        He et al. 2016, "Deep Residual Learning for Image Recognition",
        arXiv:1512.03385.
    """

    features: int
    strides: int = 1
    shortcut: str = "projection"
    kernel_init: nn.initializers.Initializer = kaiming_normal()
    bn_scale_init: nn.initializers.Initializer = nn.initializers.ones
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Applies the block to NHWC ``x``; ``train`` selects batch statistics."""
        bn = self._bn(train)
        conv = self._conv
        y = nn.relu(bn("bn1")(conv(3, self.strides, "conv1")(x)))
        y = bn("bn2")(conv(3, 1, "conv2")(y))
        if x.shape[-1] != self.features or self.strides != 1:
            if self.shortcut == "projection":
                x = bn("shortcut_bn")(conv(1, self.strides, "shortcut_conv")(x))
            elif self.shortcut == "zero_pad":
                x = x[:, :: self.strides, :: self.strides, :]
                extra = self.features - x.shape[-1]
                x = jnp.pad(
                    x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2))
                )
            else:
                raise ValueError(
                    f"BasicBlock.shortcut: expected one of {_SHORTCUTS}, got "
                    f"{self.shortcut!r}"
                )
        return nn.relu(y + x)

    def _conv(self, size: int, strides: int, name: str) -> nn.Conv:
        # Symmetric padding size // 2, as PyTorch's padding=1: with stride 2, flax's
        # "SAME" would pad (0, 1) and sample a grid shifted by one pixel.
        return nn.Conv(
            self.features, (size, size), strides=(strides, strides),
            padding=size // 2, use_bias=False,
            kernel_init=self.kernel_init, name=name,
        )  # fmt: skip

    def _bn(self, train: bool):
        def make(name: str) -> nn.BatchNorm:
            return nn.BatchNorm(
                use_running_average=not train, momentum=self.bn_momentum,
                epsilon=1e-5, scale_init=self.bn_scale_init, name=name,
            )  # fmt: skip

        return make


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2): conv 3x3 -> 3 stages of n basic blocks -> avg pool -> output.

    Stem ``conv`` (3x3, ``width`` filters, no bias) + ``bn`` + ReLU; stages of
    ``n = (depth - 2) / 6`` :class:`BasicBlock` s (``block{stage}_{index}``) with
    ``width``, ``2*width``, ``4*width`` filters, the first block of stages 2 and 3
    striding by 2; global average pool; dense ``output``. ResNet-20 (``depth=20``,
    ``width=16``) has 272,474 parameters with projection shortcuts (open_lth's
    ``cifar_resnet_20``) and 269,722 with zero-pad shortcuts (He et al.'s "0.27M").

    Initialisation as open_lth: conv and dense kernels Kaiming normal, fan-in mode,
    untruncated (He et al. 2015, which He et al. 2016 cite; :func:`kaiming_normal`);
    the ``output`` bias is zero; BatchNorm scale 1, offset 0 (open_lth's default
    draws the scale from U(0, 1): pass ``bn_scale_init=nn.initializers.uniform(1.0)``).
    BatchNorm: PyTorch momentum 0.1 (flax 0.9), epsilon 1e-5. ``train=True`` uses
    batch statistics and needs ``mutable=['batch_stats']``.

    Attributes:
        depth: 6n+2 (20, 32, 44, 56, 110, ...).
        width: filters of the first stage, 16.
        num_classes: output width, 10.
        shortcut: ``"projection"`` (default) or ``"zero_pad"``.
        kernel_init: conv and dense kernel initialiser.
        bn_scale_init: BatchNorm scale initialiser (ones).
        bn_momentum: flax BatchNorm momentum (0.9 == PyTorch 0.1).

    Raises:
        ValueError: (when called) if ``depth`` is not 6n+2 with n >= 1.

    References:
        He et al. 2016, "Deep Residual Learning for Image Recognition",
        arXiv:1512.03385 (Section 4.2); open_lth ``cifar_resnet`` (Frankle et al.
        2020, arXiv:1912.05671).
    """

    depth: int = 20
    width: int = 16
    num_classes: int = 10
    shortcut: str = "projection"
    kernel_init: nn.initializers.Initializer = kaiming_normal()
    bn_scale_init: nn.initializers.Initializer = nn.initializers.ones
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Returns logits ``[batch, num_classes]`` for NHWC images.

        Args:
            x: images ``[batch, height, width, channels]``.
            train: use batch statistics (and update ``batch_stats``, which the
                caller must declare mutable) instead of the running averages.
        """
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"CifarResNet.depth: expected 6n+2 >= 8, got {self.depth}")
        n = (self.depth - 2) // 6
        x = nn.Conv(
            self.width, (3, 3), padding="SAME", use_bias=False,
            kernel_init=self.kernel_init, name="conv",
        )(x)  # fmt: skip
        x = nn.BatchNorm(
            use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5,
            scale_init=self.bn_scale_init, name="bn",
        )(x)  # fmt: skip
        x = nn.relu(x)
        for stage in range(3):
            for index in range(n):
                x = BasicBlock(
                    self.width * 2**stage,
                    strides=2 if stage > 0 and index == 0 else 1,
                    shortcut=self.shortcut,
                    kernel_init=self.kernel_init,
                    bn_scale_init=self.bn_scale_init,
                    bn_momentum=self.bn_momentum,
                    name=f"block{stage}_{index}",
                )(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=self.kernel_init, name="output")(
            x
        )
