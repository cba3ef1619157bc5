"""The score component: test-then-train accuracy over every arrival, and drift detection.

Every valid arrival counts once (:class:`~ferretd.engine.learner.PrequentialScore`): a sample
about to be trained is predicted right before its update, a dropped one (overflow, shutdown)
when the loop gets to it. Dropped samples are predicted in batches of up to
:data:`DROPPED_BATCH` with one forward each. Samples whose shape does not stack (a custom model
with variable input) fall back to one forward each.

Under overload most arrivals are dropped, and predicting every one of them can take the whole
loop (the conv net at 4x: 95% of the loop thread, training 5%). While samples wait to be
trained, scoring dropped ones may take at most ``[metrics] drop_scoring_share`` of the loop's
time (:class:`ScoringBudget`): of each batch of ``k`` dropped arrivals, a uniform random ``m``
are scored with weight ``k / m`` and the others only counted, so the online accuracy stays an
unbiased estimate over all arrivals (``estimated`` in the summary says for how many). Idle,
paused and shutting-down turns score every dropped arrival exactly.

The online 0/1 error of scored samples feeds the Page-Hinkley drift monitor; one log line per
detection.

Scoring runs on the loop thread; ``summary`` and ``capture`` may be called from any thread.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
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
BURST_S = 0.5
"""The scoring budget saves up at most this many seconds of loop time (times the share)."""


class ScoringBudget:
    """A token bucket of loop time for scoring dropped arrivals: ``share`` seconds per second.

    :meth:`affordable` says how many of ``k`` waiting samples to score now from the time saved
    up and the measured cost per sample (at least one, so that every batch has a sample to
    stand for it); :meth:`spent` charges what scoring took. ``share`` 1.0: no limit."""

    def __init__(self, share: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.share = share
        self._clock = clock
        self._at = clock()
        self._saved = share * BURST_S
        self._cost_per_sample: float | None = None

    def affordable(self, k: int) -> int:
        if self.share >= 1.0 or self._cost_per_sample is None:
            return k
        now = self._clock()
        self._saved = min(self.share * BURST_S, self._saved + self.share * (now - self._at))
        self._at = now
        return max(1, min(k, int(self._saved / self._cost_per_sample)))

    def spent(self, seconds: float, samples: int) -> None:
        self._saved -= seconds
        per_sample = seconds / max(1, samples)
        cost = self._cost_per_sample
        self._cost_per_sample = per_sample if cost is None else 0.8 * cost + 0.2 * per_sample


class ScoreComponent:
    def __init__(self, config: Config, learner: Callable[[], OnlineLearner], seed: int = 0) -> None:
        self._config = config
        self._learner = learner
        self._lock = threading.Lock()
        self._score = PrequentialScore(config.metrics.window)
        self.drift = DriftMonitor.from_config(config, learner=learner)
        self.budget = ScoringBudget(config.metrics.drop_scoring_share)
        self._sampler = random.Random(seed)
        self._predicted: deque[tuple[Sample, int | None]] = deque()  # appended by engine threads

    def on_predicted(self, sample: Sample, predicted: int | None) -> None:
        """From any thread: the learner predicted ``sample`` in its training forward (None: no forward
        ran for it). Recorded by the loop thread in :meth:`record_predicted`."""
        self._predicted.append((sample, predicted))

    def record_predicted(self) -> None:
        """Loop thread: score what the learner predicted while training; predict those it could not."""
        pending: list[tuple[Sample, int | None]] = []
        while self._predicted:
            pending.append(self._predicted.popleft())
        for sample, guess in pending:
            if guess is not None:
                self._record_one(sample, guess, 1.0)
        self.score_many([sample for sample, guess in pending if guess is None])

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
        if samples:
            self._record(samples, self._predict(samples))

    def score_sample(self, samples: list[Sample]) -> None:
        """Score what the budget affords of ``samples``: a uniform random subset standing for all.

        Each of the ``m`` scored samples is weighted ``len(samples) / m``; the others only count
        as arrivals (and feed the baselines), in arrival order."""
        k = len(samples)
        m = self.budget.affordable(k)
        started = time.monotonic()
        if m >= k:
            self.score_many(samples)
        else:
            chosen = sorted(self._sampler.sample(range(k), m))
            picked = [samples[i] for i in chosen]
            probabilities = self._predict(picked)
            guesses = dict(zip(chosen, np.argmax(probabilities, axis=1).tolist(), strict=True))
            weight = k / m
            for i, sample in enumerate(samples):
                if i in guesses:
                    self._record_one(sample, guesses[i], weight)
                else:
                    with self._lock:
                        self._score.count(sample.label)
            with self._lock:
                self._score.sampled(k, m)
        self.budget.spent(time.monotonic() - started, m)

    def _predict(self, samples: list[Sample]) -> np.ndarray:
        """Class probabilities, one row per sample: one forward, or one per sample if shapes differ."""
        try:
            return self._learner().predict_many(np.stack([sample.features for sample in samples]))
        except ValueError:
            return np.stack([self._learner().predict_one(sample.features) for sample in samples])

    def batch_due(self, awaiting: int, capacity: int) -> bool:
        """Whether enough dropped samples wait to score them now, while training goes on.

        One forward over many samples costs far less per sample than over a few (MLP: ~3 us per
        sample at 256, ~40 us at 14), so under overload the loop scores drops in large batches;
        at half the side list's capacity, so that it never overflows between two turns."""
        return awaiting >= max(1, min(DROPPED_BATCH, capacity // 2))

    def score_dropped(
        self, take_dropped: Callable[[int], list[Sample]], until: float | None = None, *, exact: bool = True
    ) -> None:
        """Score the dropped samples ``take_dropped`` hands out, a batch at a time.

        ``exact`` False (samples wait to be trained): one batch, scored by sample within the
        budget, then back to training (drops arriving meanwhile wait for the next turn, else a
        flood would keep the loop here, scoring them as they come in batches of one or two).
        ``until`` (shutdown): stop at that monotonic time; what is left stays unscored."""
        if not exact:
            if batch := take_dropped(DROPPED_BATCH):
                self.score_sample(batch)
            return
        while batch := take_dropped(DROPPED_BATCH):
            self.score_many(batch)
            if until is not None and time.monotonic() >= until:
                return

    def _record(self, samples: list[Sample], probabilities: np.ndarray) -> None:
        for sample, guess in zip(samples, np.argmax(probabilities, axis=1).tolist(), strict=True):
            self._record_one(sample, guess, 1.0)

    def _record_one(self, sample: Sample, guess: int, weight: float) -> None:
        with self._lock:
            hit = self._score.record(int(guess), sample.label, weight)
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
        """Loop thread, learner flushed: every prediction the learner reported is recorded first."""
        self.record_predicted()
        with self._lock:
            return {"score": self._score.state_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._score.load_state_dict(state["score"])

    def reconfigure(self, config: Config) -> None:
        """``[metrics] drop_scoring_share`` is live; ``[metrics] window`` and ``[drift]`` need a restart."""
        self._config = config
        self.budget = ScoringBudget(config.metrics.drop_scoring_share)

    def reset(self) -> None:
        """A fresh score and drift monitor (after a resume that failed half-way)."""
        with self._lock:
            self._score = PrequentialScore(self._config.metrics.window)
        self._predicted.clear()
        self.drift = DriftMonitor.from_config(self._config, learner=self._learner)
