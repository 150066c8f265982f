"""Models by name: ``build``, default input shapes, ``init`` and ``count_params``.

The table below is a constant built once; nothing registers itself at import time.
"""

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lotto_jax._types import Params, PRNGKey
from lotto_jax.models._conv import CONV_PLANS, ConvNet, LeNet5
from lotto_jax.models._grok import GrokMLP
from lotto_jax.models._mlp import MLP, MNIST1DMLP, LeNet300
from lotto_jax.models._resmlp import ResMLP
from lotto_jax.models._resnet import CifarResNet
from lotto_jax.models._vgg import VGG, VGG_PLANS

__all__ = ["NAMES", "OUTPUT_LAYER", "build", "count_params", "init", "input_shape"]

OUTPUT_LAYER = "output"
"""Name of every model's final (logits) layer: ``params[OUTPUT_LAYER]['kernel']``."""

_MNIST = (28, 28, 1)
_CIFAR = (32, 32, 3)


class _Entry(NamedTuple):
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]


_MODELS: dict[str, _Entry] = {
    "lenet300": _Entry(LeNet300, _MNIST),
    "lenet5": _Entry(LeNet5, _MNIST),
    "conv2": _Entry(functools.partial(ConvNet, plan=CONV_PLANS["conv2"]), _CIFAR),
    "conv4": _Entry(functools.partial(ConvNet, plan=CONV_PLANS["conv4"]), _CIFAR),
    "conv6": _Entry(functools.partial(ConvNet, plan=CONV_PLANS["conv6"]), _CIFAR),
    "vgg11": _Entry(functools.partial(VGG, plan=VGG_PLANS[11]), _CIFAR),
    "vgg16": _Entry(functools.partial(VGG, plan=VGG_PLANS[16]), _CIFAR),
    "resnet20": _Entry(functools.partial(CifarResNet, depth=20), _CIFAR),
    "mnist1d_mlp": _Entry(MNIST1DMLP, (40,)),
    "mlp": _Entry(MLP, _MNIST),
    "resmlp": _Entry(ResMLP, (40,)),
    "grok_mlp": _Entry(GrokMLP, (2,)),
}

NAMES: tuple[str, ...] = tuple(_MODELS)
"""Names accepted by :func:`build` and :func:`input_shape`."""


def _entry(name: str) -> _Entry:
    try:
        return _MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"model: unknown model name {name!r}; expected one of {', '.join(NAMES)}"
        ) from None


def build(name: str, *, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Builds the linen model called ``name``.

    Every model maps ``x`` (NHWC images, or any ``[batch, ...]`` for the MLPs, which
    flatten) to logits ``[batch, num_classes]`` via ``__call__(x, *, train=False)``
    and names its final layer ``output``.

    Args:
        name: one of :data:`NAMES`: ``lenet300``, ``lenet5``, ``conv2``, ``conv4``,
            ``conv6``, ``vgg11``, ``vgg16``, ``resnet20``, ``mnist1d_mlp``, ``mlp``, ``resmlp``,
            ``grok_mlp`` (token pairs of a ``modular:`` dataset; ``num_classes`` is
            the modulus).
        num_classes: width of the ``output`` layer.
        **kwargs: fields of the model class, e.g. ``features=(100, 100)`` for
            ``mlp``, ``hidden=``/``residual=`` for ``mnist1d_mlp``,
            ``blocks=``/``width=``/``hidden=`` for ``resmlp``,
            ``d_emb=``/``d_model=`` for ``grok_mlp``,
            ``kernel_init=``, ``bn_scale_init=`` (vgg, resnet20),
            ``shortcut="zero_pad"`` (resnet20).

    Returns:
        An unbound ``flax.linen.Module``.

    Raises:
        ValueError: if ``name`` is unknown (the message lists :data:`NAMES`).
        TypeError: if a keyword is not a field of the model.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> model = build("mlp", features=(16,), num_classes=3)
        >>> variables = init(model, jax.random.key(0), input_shape("mlp"))
        >>> model.apply(variables, jnp.zeros((2, 28, 28, 1))).shape
        (2, 3)
        >>> count_params(variables)
        12611

    References:
        Frankle & Carbin 2019, arXiv:1803.03635; He et al. 2016, arXiv:1512.03385;
        Simonyan & Zisserman 2015, arXiv:1409.1556; Greydanus 2020,
        arXiv:2011.14439.
    """
    return _entry(name).factory(num_classes=num_classes, **kwargs)


def input_shape(name: str) -> tuple[int, ...]:
    """The default per-example input shape of model ``name`` (no batch axis).

    ``(28, 28, 1)`` for ``lenet300``, ``lenet5`` and ``mlp``; ``(32, 32, 3)`` for
    ``conv2/4/6``, ``vgg11/16`` and ``resnet20``; ``(40,)`` for ``mnist1d_mlp`` and ``resmlp``;
    ``(2,)`` (a token pair) for ``grok_mlp``.

    Args:
        name: one of :data:`NAMES`.

    Returns:
        The shape, e.g. ``(28, 28, 1)``.

    Raises:
        ValueError: if ``name`` is unknown.

    Examples:
        >>> input_shape("resnet20")
        (32, 32, 3)
    """
    return _entry(name).input_shape


def init(
    model: nn.Module, key: PRNGKey, input_shape: tuple[int, ...]
) -> dict[str, Any]:
    """Initialises ``model`` on a batch of one zero input, in inference mode.

    ``model.init`` is jitted with the model as a static argument, so equal models
    (linen modules compare and hash by their fields) share one compilation: repeated
    initialisations, e.g. reinitialisation controls, do not recompile. Models with
    unhashable fields (say ``features=[100, 100]``) are still jitted, uncached.

    Args:
        model: a linen model, e.g. from :func:`build`.
        key: the PRNG key for the parameters.
        input_shape: per-example input shape, e.g. ``input_shape(name)``.

    Returns:
        The variables dict: ``{'params': ...}`` plus ``'batch_stats'`` for models
        with BatchNorm.

    Examples:
        >>> import jax
        >>> variables = init(build("lenet300"), jax.random.key(0), (28, 28, 1))
        >>> variables["params"]["output"]["kernel"].shape
        (100, 10)
    """
    x = jnp.zeros((1, *input_shape), jnp.float32)
    try:
        hash(model)
    except TypeError:
        return jax.jit(functools.partial(_init_impl, model))(key, x)
    return _init_jit(model, key, x)


def _init_impl(model: nn.Module, key: PRNGKey, x: jax.Array) -> dict[str, Any]:
    return model.init(key, x, train=False)


_init_jit = jax.jit(_init_impl, static_argnums=0)


def count_params(variables_or_params: Mapping[str, Any] | Params) -> int:
    """Number of scalar parameters (the ``params`` collection only).

    Accepts linen variables (``{'params': ..., 'batch_stats': ...}``: only
    ``params`` is counted), a params pytree (linen ``variables['params']``, nnx
    ``State``, plain dicts) or the abstract output of ``jax.eval_shape``.

    Args:
        variables_or_params: variables with a ``'params'`` key, or params.

    Returns:
        The total number of elements of all leaves.

    Examples:
        >>> import jax.numpy as jnp
        >>> count_params({"params": {"w": jnp.ones((3, 4))}, "batch_stats": {"m": jnp.ones(4)}})
        12
    """
    tree = variables_or_params
    if isinstance(tree, Mapping) and "params" in tree:
        tree = tree["params"]
    return sum(math.prod(jnp.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree))
