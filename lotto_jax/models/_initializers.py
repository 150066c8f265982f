"""Weight initialisers used by the papers' models.

Flax's own initialisers cover most cases; this module names the exact variants the
papers use, so each model states its choice in one word, and adds the PyTorch
default ``nn.Linear`` / ``nn.Conv2d`` initialiser (uniform in ``±1/sqrt(fan_in)``
for weights *and* biases), which JAX does not ship.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.nn.initializers import Initializer, variance_scaling

__all__ = ["glorot_normal", "kaiming_normal", "pytorch_uniform"]

# The truncated normal below is rescaled by flax/jax so that the *truncated*
# distribution has the requested standard deviation (factor 1/0.8796...), exactly as
# TF1's ``tf.glorot_normal_initializer`` does.


def glorot_normal() -> Initializer:
    """Glorot (Xavier) normal: std ``sqrt(2 / (fan_in + fan_out))``, truncated at 2σ.

    This is ``jax.nn.initializers.glorot_normal()``: a normal truncated at two
    standard deviations and rescaled so the truncated distribution has the Glorot
    standard deviation. It matches TF1's ``tf.glorot_normal_initializer`` (the
    framework of the original lottery-ticket experiments); PyTorch's
    ``xavier_normal_`` (open_lth) is the untruncated normal with the same standard
    deviation, available as ``variance_scaling(1.0, "fan_avg", "normal")``. Fans of a
    convolution kernel ``(h, w, in, out)`` are ``h*w*in`` and ``h*w*out``.

    Returns:
        A JAX initializer ``(key, shape, dtype) -> Array``.

    Examples:
        >>> import jax
        >>> w = glorot_normal()(jax.random.key(0), (300, 100))
        >>> w.shape
        (300, 100)

    References:
        Glorot & Bengio 2010, "Understanding the difficulty of training deep
        feedforward neural networks", AISTATS.
    """
    return jax.nn.initializers.glorot_normal()


def kaiming_normal() -> Initializer:
    """He (Kaiming) normal, fan-in mode: untruncated normal, std ``sqrt(2 / fan_in)``.

    This is PyTorch's ``torch.nn.init.kaiming_normal_`` with its defaults (fan_in,
    ReLU gain), which open_lth applies to every convolution and linear weight of its
    CIFAR VGG and ResNet. (Flax's ``nn.initializers.kaiming_normal`` is *truncated*;
    this one is not.)

    Returns:
        A JAX initializer ``(key, shape, dtype) -> Array``.

    References:
        He et al. 2015, "Delving Deep into Rectifiers", arXiv:1502.01852.
    """
    return variance_scaling(2.0, "fan_in", "normal")


def pytorch_uniform(fan_in: int | None = None) -> Initializer:
    """PyTorch's default ``nn.Linear``/``nn.Conv2d`` init: ``U(-1/sqrt(fan_in), +1/sqrt(fan_in))``.

    PyTorch draws weights with ``kaiming_uniform_(a=sqrt(5))``, whose bound reduces to
    ``1/sqrt(fan_in)``, and biases uniformly with the same bound. A kernel knows its
    own fan-in (the product of all but its last axis: ``in`` for a dense kernel
    ``(in, out)``, ``h*w*in`` for a conv kernel ``(h, w, in, out)``); a bias does not,
    so pass the layer's ``fan_in`` explicitly for biases.

    Args:
        fan_in: the fan-in to use. ``None`` derives it from the shape, which needs a
            kernel of rank >= 2.

    Returns:
        A JAX initializer ``(key, shape, dtype) -> Array``.

    Raises:
        ValueError: (when called) if ``fan_in`` is not given and the shape has rank
            < 2, or if the fan-in is not positive.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> b = pytorch_uniform(fan_in=4)(jax.random.key(0), (1000,))
        >>> bool(jnp.all(jnp.abs(b) <= 0.5))
        True

    References:
        PyTorch ``torch.nn.Linear.reset_parameters``; used by the MNIST-1D
        lottery-ticket notebook (Greydanus 2020, arXiv:2011.14439).
    """

    def init(
        key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32
    ) -> jax.Array:
        shape = tuple(shape)
        if fan_in is None:
            if len(shape) < 2:
                raise ValueError(
                    f"pytorch_uniform: cannot infer fan_in from shape {shape}; "
                    "pass fan_in= for biases"
                )
            n = math.prod(shape[:-1])
        else:
            n = fan_in
        if n <= 0:
            raise ValueError(f"pytorch_uniform: fan_in must be positive, got {n}")
        bound = 1.0 / math.sqrt(n)
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
