"""Real labeled streams that install offline, shared by the replay tool, the demo and benchmarks.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, shipped inside the
  package), features scaled to [0, 1], seeded random order; the last ``test_fraction`` is
  held out for test accuracy.
* ``digits-split``: the same images ordered by class (a class-incremental stream, where
  NoChange alone scores near 100% and online accuracy means little without it).
* ``sp500``: a stream with natural drift, from the ``river`` package's bundled ``sp500.csv.gz``
  (1,257 trading days 2013-02 .. 2018-02; no download). Features: that day's returns (%) of 10
  large US stocks, scaled by their standard deviation over the training part; label: whether the
  next day's S&P 500 return is positive (2 classes). Kept in time order (market regimes drift);
  the *last* ``test_fraction`` of days is held out, so test accuracy is measured on the future.
  The label is close to unpredictable: expect online accuracy near the majority baseline.
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


STREAMS = ("digits", "digits-split", "sp500")


def load_sp500(test_fraction: float = 0.2) -> Stream:
    """The river-bundled S&P 500 table as a time-ordered up/down stream (ImportError without river)."""
    import csv
    import gzip
    from importlib.resources import files

    path = files("river.datasets").joinpath("sp500.csv.gz")
    with gzip.open(str(path), "rt") as fh:
        rows = list(csv.DictReader(fh))
    cols = [c for c in rows[0] if c not in ("date", "next_day_return")]
    x = np.array([[float(r[c]) for c in cols] for r in rows], dtype=np.float32)
    y = np.array([float(r["next_day_return"]) > 0 for r in rows], dtype=np.int64)
    n_train = len(y) - int(len(y) * test_fraction)
    x = x / x[:n_train].std(axis=0, keepdims=True)
    return Stream("sp500", x[:n_train], y[:n_train], x[n_train:], y[n_train:], (len(cols),), 2)


def load_stream(name: str = "digits", seed: int = 0, test_fraction: float = 0.2, image: bool = False) -> Stream:
    from sklearn.datasets import load_digits

    if name == "sp500":
        return load_sp500(test_fraction)

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
        raise ValueError(f"unknown stream {name!r}; known: {', '.join(STREAMS)}")
    shape: tuple[int, ...] = (64,)
    if image:
        shape = (1, 8, 8)
        x_train, x_test = x_train.reshape(-1, *shape), x_test.reshape(-1, *shape)
    return Stream(name, x_train, y_train, x_test, y_test, shape, 10)
