"""A tiny learnable data set for end-to-end command tests: 40 features, 10 classes
drawn around random centres (600 training and 200 test examples), written as an
``npz:`` file."""

from __future__ import annotations

import numpy as np

__all__ = ["clusters_npz"]


def clusters_npz(directory) -> object:
    """Writes ``directory/tiny.npz`` (seed 0) and returns its path."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 40))

    def draw(n):
        y = rng.integers(0, 10, n)
        return (centres[y] + rng.normal(size=(n, 40))).astype(np.float32), y

    (xt, yt), (xs, ys) = draw(600), draw(200)
    path = directory / "tiny.npz"
    np.savez(path, x_train=xt, y_train=yt, x_test=xs, y_test=ys)
    return path
