"""The score component: test-then-train accuracy over every arrival, and drift detection.

Every valid arrival is predicted once with the current model and scored
(:class:`~ferretd.engine.learner.PrequentialScore`): a sample about to be trained right before
its update, a dropped one (overflow, shutdown) when the loop gets to it. Dropped samples are
predicted in batches of up to :data:`DROPPED_BATCH` with one forward each: under overload most
arrivals are dropped, and one forward per dropped sample used to take the CPU that training
needed. Samples whose shape does not stack (a custom model with variable input) fall back to
one forward each. The online 0/1 error feeds the Page-Hinkley drift monitor; one log line per
detection.

Scoring runs on the loop thread; ``summary`` and ``capture`` may be called from any thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import structlog

from ferretd.config import Config
from ferretd.drift import DriftMonitor
from ferretd.engine.learner import OnlineLearner, PrequentialScore
from ferretd.messages import Sample

log = structlog.get_logger("ferretd")

DROPPED_BATCH = 256


class ScoreComponent:
    def __init__(self, config: Config, learner: Callable[[], OnlineLearner]) -> None:
        self._config = config
        self._learner = learner
        self._lock = threading.Lock()
        self._score = PrequentialScore(config.metrics.window)
        self.drift = DriftMonitor.from_config(config, learner=learner)

    @property
    def seen(self) -> int:
        """Arrivals scored so far."""
        with self._lock:
            return self._score.seen

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return self._score.summary()

    def score_one(self, sample: Sample) -> None:
        """Predict one arrival with the current model and score it (once)."""
        self._record([sample], self._learner().predict_one(sample.features)[None, :])

    def score_many(self, samples: list[Sample]) -> None:
        """Predict a batch of arrivals with one forward and score each (once).

        Samples whose shapes do not stack (a custom model with variable input) are predicted one by one."""
        if not samples:
            return
        try:
            features = np.stack([sample.features for sample in samples])
        except ValueError:
            for sample in samples:
                self.score_one(sample)
        else:
            self._record(samples, self._learner().predict_many(features))

    def batch_due(self, awaiting: int, capacity: int) -> bool:
        """Whether enough dropped samples wait to score them now, while training goes on.

        One forward over many samples costs far less per sample than over a few (MLP: ~3 us per
        sample at 256, ~40 us at 14), so under overload the loop scores drops in large batches;
        at half the side list's capacity, so that it never overflows between two turns."""
        return awaiting >= max(1, min(DROPPED_BATCH, capacity // 2))

    def score_dropped(self, take_dropped: Callable[[int], list[Sample]], until: float | None = None) -> None:
        """Score the dropped samples ``take_dropped`` hands out, a batch at a time.

        ``until`` (shutdown): stop at that monotonic time; what is left stays unscored."""
        while batch := take_dropped(DROPPED_BATCH):
            self.score_many(batch)
            if until is not None and time.monotonic() >= until:
                return

    def _record(self, samples: list[Sample], probabilities: np.ndarray) -> None:
        predicted = np.argmax(probabilities, axis=1)
        for sample, guess in zip(samples, predicted, strict=True):
            with self._lock:
                hit = self._score.record(int(guess), sample.label)
            if self.drift.update(not hit):
                drift = self.drift.status()
                log.warning(
                    "drift_detected",
                    detections=drift["detections"],
                    at_sample=drift["last_at_sample"],
                    reaction=drift["reaction"],
                    window_accuracy=self.summary()["window_accuracy"],
                )

    # ------------------------------------------------------------------ component

    def capture(self) -> dict[str, Any]:
        with self._lock:
            return {"score": self._score.state_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._score.load_state_dict(state["score"])

    def reconfigure(self, config: Config) -> None:
        """No live key: ``[metrics] window`` and ``[drift]`` need a restart."""
        self._config = config

    def reset(self) -> None:
        """A fresh score and drift monitor (after a resume that failed half-way)."""
        with self._lock:
            self._score = PrequentialScore(self._config.metrics.window)
        self.drift = DriftMonitor.from_config(self._config, learner=self._learner)
