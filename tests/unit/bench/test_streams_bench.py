"""bench_streams' rules: the lr tuning is the same for every torch learner (same grid, same prefix
budget, best prefix wins, ties to the earlier entry), baselines are prequential, drifts are abrupt
segments of the named concepts."""

from __future__ import annotations

import itertools
from typing import ClassVar

import numpy as np

from tools.bench import bench_streams as bench


class Recorder:
    """A fake learner whose prefix accuracy is decided by its lr; records what it was shown."""

    seen: ClassVar[list[tuple[float, int]]] = []

    def __init__(self, lr: float, good: float) -> None:
        self.lr, self.good, self.count = lr, good, 0

    def predict(self, x: np.ndarray) -> int:
        return int(x[0]) if self.lr == self.good else -1

    def learn(self, x: np.ndarray, y: int) -> None:
        self.count += 1

    def close(self) -> None:
        Recorder.seen.append((self.lr, self.count))


def stream(n: int) -> bench.RawStream:
    y = np.arange(n) % 2
    return bench.RawStream("toy", "toy", y[:, None].astype(np.float64), y.astype(np.int64), 2)


def test_tuning_tries_every_lr_on_the_same_prefix_then_runs_the_best_in_full() -> None:
    Recorder.seen = []
    s = stream(50)
    hits, _, best, prefix = bench.tuned(lambda lr: lambda: Recorder(lr, good=bench.LR_GRID[2]), s)
    assert best == bench.LR_GRID[2] and prefix[best] == 1.0
    assert Recorder.seen == [(lr, 10) for lr in bench.LR_GRID] + [(best, 50)]  # prefix = n/5, then full
    assert hits.all()


def test_tuning_ties_go_to_the_earlier_grid_entry() -> None:
    Recorder.seen = []
    _, _, best, _ = bench.tuned(lambda lr: lambda: Recorder(lr, good=-1.0), stream(50))
    assert best == bench.LR_GRID[0]


def test_baselines_are_prequential() -> None:
    y = np.array([1, 1, 0, 0, 0, 1])
    b = bench.baselines(y)
    assert b["nochange"] == 3 / 6  # hits at positions 1, 3, 4
    # majority so far predicts -, 1, 1, 1 (a 2-2 tie keeps 1), 1, 0: one hit, at position 1
    assert b["majority"] == 1 / 6


def test_abrupt_drift_is_consecutive_segments_of_each_concept() -> None:
    made = []

    def make(concept: int):
        made.append(concept)
        return (({"a": concept}, concept) for _ in itertools.count())

    labels = [y for _, y in bench._chain(make, [3, 1, 4], 10)]
    assert labels == [3] * 3 + [1] * 3 + [4] * 4 and made == [3, 1, 4]
