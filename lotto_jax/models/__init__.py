"""Flax models of the lottery-ticket papers, selectable by name.

``build(name)`` returns a linen module; every model's final layer is named
``output`` (:data:`OUTPUT_LAYER`), so pruning rules can find it by key path
(``params['output']['kernel']``). See :data:`NAMES` for the models.

References:
    Frankle & Carbin 2019, "The Lottery Ticket Hypothesis", arXiv:1803.03635.
"""

from lotto_jax.models._conv import CONV_PLANS, ConvNet, LeNet5
from lotto_jax.models._grok import GrokMLP
from lotto_jax.models._initializers import (
    glorot_normal,
    kaiming_normal,
    pytorch_uniform,
)
from lotto_jax.models._mlp import MLP, MNIST1DMLP, LeNet300
from lotto_jax.models._nnx import LeNet300NNX
from lotto_jax.models._registry import (
    NAMES,
    OUTPUT_LAYER,
    build,
    count_params,
    init,
    input_shape,
)
from lotto_jax.models._resmlp import ResMLP
from lotto_jax.models._resnet import BasicBlock, CifarResNet
from lotto_jax.models._vgg import VGG, VGG_PLANS

__all__ = [
    "CONV_PLANS",
    "MLP",
    "MNIST1DMLP",
    "NAMES",
    "OUTPUT_LAYER",
    "VGG",
    "VGG_PLANS",
    "BasicBlock",
    "CifarResNet",
    "ConvNet",
    "GrokMLP",
    "LeNet5",
    "LeNet300",
    "LeNet300NNX",
    "ResMLP",
    "build",
    "count_params",
    "glorot_normal",
    "init",
    "input_shape",
    "kaiming_normal",
    "pytorch_uniform",
]
