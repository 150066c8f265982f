"""A deep residual MLP: the small model whose residual blocks can play the lottery."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lotto_jax.models._initializers import pytorch_uniform

__all__ = ["ResMLP"]


class ResMLP(nn.Module):
    """``input`` -> ``blocks`` pre-norm residual blocks -> LayerNorm -> ``output``.

    ``h = input(x)``; each block ``h = h + fc2(relu(fc1(LayerNorm(h))))`` (params
    ``block_{i}/{norm,fc1,fc2}``); ``logits = output(relu(LayerNorm(h)))`` with the
    final norm named ``norm``. A block whose parameters are all zero (its norm's scale
    and offset, both kernels and biases) adds exactly 0: the block is the identity, so
    removing a block (:mod:`lotto_jax.structured`'s layers) and deleting it give the
    same network. Dense layers use PyTorch's default initialiser
    (:func:`pytorch_uniform`); ``fc2`` starts scaled by ``1 / sqrt(blocks)`` so the
    residual stream keeps its scale with depth.

    With the defaults (8 blocks, width 128, hidden 128) on MNIST-1D (40 inputs):
    5,248 + 8 x 33,280 + 256 + 1,290 = 273,034 parameters; on 28x28 MNIST
    (784 inputs): 368,266.

    Attributes:
        blocks: the number of residual blocks (``block_0`` ... ``block_{blocks-1}``).
        width: the residual stream's width (``input``'s outputs).
        hidden: each block's inner width (``fc1``'s outputs: the block's neurons).
        num_classes: output width, 10.
        hiddens: per-block inner widths (``len(hiddens) == blocks``), overriding
            ``hidden``; ``None`` (the default) gives every block ``hidden``. A
            compacted network (:func:`lotto_jax.export.compact`) has one per block.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> model = ResMLP(blocks=2, width=8, hidden=4, num_classes=3)
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 5)))
        >>> sorted(variables["params"])
        ['block_0', 'block_1', 'input', 'norm', 'output']
        >>> model.apply(variables, jnp.ones((2, 5))).shape
        (2, 3)

    References:
        He et al. 2016, "Identity Mappings in Deep Residual Networks",
        arXiv:1603.05027 (pre-activation blocks); Jordao et al. 2023, "When Layers
        Play the Lottery, all Tickets Win at Initialization", arXiv:2301.10835.
    """

    blocks: int = 8
    width: int = 128
    hidden: int = 128
    num_classes: int = 10
    hiddens: tuple[int, ...] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Returns logits ``[batch, num_classes]``; ``train`` is unused (no BN)."""
        del train
        if self.blocks < 1:
            raise ValueError(f"ResMLP.blocks: expected >= 1, got {self.blocks}")
        hiddens = (self.hidden,) * self.blocks if self.hiddens is None else tuple(self.hiddens)
        if len(hiddens) != self.blocks:
            raise ValueError(
                f"ResMLP.hiddens: expected {self.blocks} widths (one per block), got "
                f"{len(hiddens)}"
            )
        x = x.reshape(x.shape[0], -1)
        h = self._dense(self.width, x.shape[-1], "input")(x)
        for i in range(self.blocks):
            h = h + _Block(self.width, int(hiddens[i]), self.blocks, name=f"block_{i}")(h)
        h = nn.relu(nn.LayerNorm(name="norm")(h))
        return self._dense(self.num_classes, self.width, "output")(h)

    @staticmethod
    def _dense(features: int, fan_in: int, name: str, scale: float = 1.0) -> nn.Dense:
        return nn.Dense(
            features,
            kernel_init=_scaled(pytorch_uniform(), scale),
            bias_init=_scaled(pytorch_uniform(fan_in=fan_in), scale),
            name=name,
        )


def _scaled(init, scale: float):
    if scale == 1.0:
        return init
    return lambda key, shape, dtype=jnp.float32: scale * init(key, shape, dtype)


class _Block(nn.Module):
    """``fc2(relu(fc1(LayerNorm(h))))``: the residual branch of one block."""

    width: int
    hidden: int
    depth: int

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        y = nn.LayerNorm(name="norm")(h)
        y = nn.relu(ResMLP._dense(self.hidden, self.width, "fc1")(y))
        return ResMLP._dense(self.width, self.hidden, "fc2", scale=self.depth**-0.5)(y)
