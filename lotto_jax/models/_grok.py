"""The grokking tickets paper's MLP on token pairs (``OnlyMLP``)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["GrokMLP"]


def _normal_fan_in() -> nn.initializers.Initializer:
    """Untruncated normal with std ``1/sqrt(fan_in)`` (the reference's ``MLP`` and
    ``Unembed``: ``normal_(std=1/sqrt(d_in))``)."""
    return nn.initializers.variance_scaling(1.0, "fan_in", "normal")


class GrokMLP(nn.Module):
    """Embed two tokens, project, sum, ReLU, project back, unembed; no biases.

    ``logits = relu(sum_t E[x_t] W_in) W_out W_U`` for a pair ``x = (a, b)`` of
    tokens in ``[0, vocab)``. Parameters and their initial stds (the reference's
    ``OnlyMLP`` with ``num_layers=0``, ``weight_scale=1``):

    - ``embed/embedding`` ``(vocab, d_emb)``, std ``1/sqrt(vocab)`` (``W_E``);
    - ``inproj/kernel`` ``(d_emb, d_model)``, std ``1/sqrt(d_emb)``;
    - ``outproj/kernel`` ``(d_model, d_emb)``, std ``1/sqrt(d_model)``;
    - ``output/kernel`` ``(d_emb, num_classes)``, std ``1/sqrt(d_emb)`` (``W_U``).

    All four are matrices, so the default prunable leaves (``ndim >= 2``) are the
    whole network, as in the reference, whose pruner masks every weight matrix
    including both embeddings. With the defaults and ``p = 67``: 115,000
    parameters.

    Inputs are integer token pairs ``[batch, 2]`` (``modular:`` datasets). A
    floating input ``c`` is read as soft tokens: ``c`` times the all-ones vector
    over the vocabulary in place of a one-hot, so its embedding is ``c`` times the
    sum of the embedding rows. That is what SynFlow's all-ones input means for an
    embedding (every input unit at 1: every row is on a path), and the zero input
    of :func:`lotto_jax.models.init` embeds to zero. Token ids stored as floats
    must be cast to int first.

    Attributes:
        num_classes: the output width (the modulus ``p``).
        vocab: the number of tokens; ``None``: ``num_classes``.
        d_emb: the embedding width, 500.
        d_model: the hidden width, 48.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> model = GrokMLP(num_classes=7, d_emb=16, d_model=4)
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
        >>> model.apply(variables, jnp.array([[1, 2], [3, 6]])).shape
        (2, 7)
        >>> sorted(variables["params"])
        ['embed', 'inproj', 'outproj', 'output']

    References:
        Minegishi, Iwasawa & Matsuo, "Grokking Tickets: Lottery Tickets Accelerate
        Grokking", arXiv:2310.19470 (gouki510/Grokking-Tickets ``model.OnlyMLP``).
    """

    num_classes: int = 67
    vocab: int | None = None
    d_emb: int = 500
    d_model: int = 48

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Returns logits ``[batch, num_classes]``; ``train`` is unused (no BN)."""
        del train
        vocab = self.num_classes if self.vocab is None else self.vocab
        x = x.reshape(x.shape[0], -1)
        embed = nn.Embed(vocab, self.d_emb, name="embed",
                         embedding_init=nn.initializers.normal(vocab ** -0.5))
        if jnp.issubdtype(x.dtype, jnp.integer):
            h = embed(x)
        else:  # soft tokens: c * (all-ones over the vocabulary) @ E
            h = x[..., None] * embed.embedding.sum(axis=0).astype(x.dtype)[None, None]
        h = nn.Dense(self.d_model, use_bias=False, kernel_init=_normal_fan_in(),
                     name="inproj")(h)
        h = nn.relu(h.sum(axis=1))
        h = nn.Dense(self.d_emb, use_bias=False, kernel_init=_normal_fan_in(),
                     name="outproj")(h)
        return nn.Dense(self.num_classes, use_bias=False, kernel_init=_normal_fan_in(),
                        name="output")(h)
