"""Independent numpy references shared by the tests."""

import jax
import numpy as np


def mlp_accuracy(params, split) -> float:
    """Accuracy of lotto's ``mlp`` (Dense_0, Dense_1 with ReLU, then ``output``) on
    ``split``, by a float64 numpy forward pass on ``params`` (e.g. weights ⊙ mask)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = np.asarray(split.x, np.float64).reshape(len(split.x), -1)
    for layer in ("Dense_0", "Dense_1"):
        h = np.maximum(h @ p[layer]["kernel"] + p[layer]["bias"], 0.0)
    logits = h @ p["output"]["kernel"] + p["output"]["bias"]
    return float(np.mean(logits.argmax(1) == split.y))
