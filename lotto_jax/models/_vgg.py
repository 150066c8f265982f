"""CIFAR VGG networks with BatchNorm, as in open_lth's ``cifar_vgg``."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lotto_jax.models._initializers import kaiming_normal

__all__ = ["VGG", "VGG_PLANS"]

VGG_PLANS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512,
         "M", 512, 512, 512, 512),
}  # fmt: skip
"""open_lth's CIFAR VGG plans: an int is conv 3x3 + BN + ReLU, ``"M"`` a max pool.
The fifth pool of ImageNet VGG is replaced by the global average pool."""


class VGG(nn.Module):
    """CIFAR VGG: (conv3x3 -> BatchNorm -> ReLU | maxpool)* -> global avg pool -> output.

    Each int in ``plan`` is a 3x3 SAME convolution with bias (``Conv_i``), BatchNorm
    (``BatchNorm_i``) and ReLU; ``"M"`` is a 2x2/2 max pool. After the stack the
    feature map (2x2x512 on 32x32 inputs) is averaged over space (open_lth's
    ``AvgPool2d(2)`` on 32x32 inputs; a global mean for other sizes) and fed to a
    single dense layer ``output`` (512 -> num_classes). There are no hidden dense
    layers. Parameter counts (params collection) on CIFAR-10: VGG-11 9,231,114;
    VGG-16 14,728,266 (the "14.7M" usually quoted).

    Initialisation follows open_lth: conv and dense weights Kaiming normal, fan-in,
    untruncated (:func:`kaiming_normal`); biases zero (PyTorch leaves them at its
    uniform default; they are redundant before BatchNorm). BatchNorm scale is 1 and
    offset 0 by default; open_lth's default ``batchnorm_init='uniform'`` draws the
    scale from U(0, 1): pass ``bn_scale_init=nn.initializers.uniform(1.0)``.
    BatchNorm uses PyTorch's running-average momentum 0.1 (flax ``momentum=0.9``)
    and epsilon 1e-5. With ``train=True`` batch statistics are used and
    ``batch_stats`` must be mutable.

    Attributes:
        plan: a value of :data:`VGG_PLANS` (default VGG-16).
        num_classes: output width, 10.
        kernel_init: conv and dense kernel initialiser.
        bn_scale_init: BatchNorm scale initialiser (ones).
        bn_momentum: flax BatchNorm momentum (0.9 == PyTorch 0.1).

    References:
        Simonyan & Zisserman 2015, arXiv:1409.1556; Frankle et al. 2019/2020
        (open_lth ``cifar_vgg``), arXiv:1903.01611; Tanaka et al. 2020 (SynFlow),
        arXiv:2006.05467; He et al. 2015, arXiv:1502.01852 (init).
    """

    plan: Sequence[int | str] = VGG_PLANS[16]
    num_classes: int = 10
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
        i = 0
        for spec in self.plan:
            if spec == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                continue
            x = nn.Conv(
                int(spec), (3, 3), padding="SAME", kernel_init=self.kernel_init,
                name=f"Conv_{i}",
            )(x)  # fmt: skip
            x = nn.BatchNorm(
                use_running_average=not train, momentum=self.bn_momentum,
                epsilon=1e-5, scale_init=self.bn_scale_init, name=f"BatchNorm_{i}",
            )(x)  # fmt: skip
            x = nn.relu(x)
            i += 1
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=self.kernel_init, name="output")(
            x
        )
