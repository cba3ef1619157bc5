"""Real labeled streams that install offline, shared by the replay tool, the demo and benchmarks.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, shipped inside the
  package), features scaled to [0, 1], seeded random order; the last ``test_fraction`` is
  held out for test accuracy.
* ``digits-split``: the same images ordered by class (a class-incremental stream, where
  NoChange alone scores near 100% and online accuracy means little without it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Stream:
    name: str
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_shape: tuple[int, ...]
    classes: int


def load_stream(name: str = "digits", seed: int = 0, test_fraction: float = 0.2, image: bool = False) -> Stream:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    n_test = int(len(y) * test_fraction)
    x_train, y_train, x_test, y_test = x[n_test:], y[n_test:], x[:n_test], y[:n_test]
    if name == "digits-split":
        by_class = np.argsort(y_train, kind="stable")
        x_train, y_train = x_train[by_class], y_train[by_class]
    elif name != "digits":
        raise ValueError(f"unknown stream {name!r}; known: digits, digits-split")
    shape: tuple[int, ...] = (64,)
    if image:
        shape = (1, 8, 8)
        x_train, x_test = x_train.reshape(-1, *shape), x_test.reshape(-1, *shape)
    return Stream(name, x_train, y_train, x_test, y_test, shape, 10)
