"""Drift made visible: a Page-Hinkley test on the online 0/1 error, its status, and an optional reaction.

Role: the daemon feeds every scored arrival's error (1 = the test-then-train prediction was
wrong) to :class:`DriftMonitor`; a detection is counted, logged once (by the daemon) and shown in
``ferretctl status`` under ``drift``. No new dependency: the test is a dozen lines.

Page-Hinkley (Page 1954; the form of Gama et al. and River's ``drift.PageHinkley``, mode "up",
so it detects the error *rising*): with ``mean_t`` the running mean of the errors so far,
``m_t = alpha * m_{t-1} + (x_t - mean_t - delta)`` and ``M_t = min_k m_k``; drift when
``t >= min_samples`` and ``m_t - M_t > threshold``; the test then starts afresh. ``delta`` is the
tolerated rise, ``threshold`` (lambda) trades detection delay against false alarms, ``alpha``
fades old deviations. Arithmetic and defaults are River's (a unit test checks the two agree
sample by sample). Measured on Bernoulli error streams (5 x 20k stationary samples per rate):
threshold 50 raised 0 false alarms at error 0.1 and 4 at 0.3 and at 0.5 (about one per 25k
arrivals), and detected a rise of the error by 0.2 after 80-380 arrivals; threshold 100 raised
none but needed 300-650 arrivals, and missed an abrupt label swap that the default MLP re-learns
within ~50 samples (the daemon integration test). With the reaction off a false alarm costs a
log line, so the default stays 50.

Reaction (``[drift] reaction``, off by default): ``"norm_decay"`` raises the input
normaliser's decay to ``reaction_decay`` for ``reaction_samples`` arrivals after a detection,
so the running statistics follow the new distribution quickly, then restores the configured
decay. A learner without a normaliser is left alone. A checkpoint taken during a boost stores
the boosted decay; a restart resets it to the configured value.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class PageHinkley:
    """Page-Hinkley test for an increase in the mean of a stream."""

    def __init__(
        self, delta: float = 0.005, threshold: float = 50.0, min_samples: int = 30, alpha: float = 0.9999
    ) -> None:
        if threshold <= 0 or min_samples < 1 or not 0.0 < alpha <= 1.0 or delta < 0:
            raise ValueError("page_hinkley: threshold > 0, min_samples >= 1, alpha in (0, 1], delta >= 0")
        self.delta = delta
        self.threshold = threshold
        self.min_samples = min_samples
        self.alpha = alpha
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.sum = 0.0
        self.min = float("inf")

    @property
    def statistic(self) -> float:
        """``m_t - M_t``: how far the cumulative deviation rose above its minimum."""
        return self.sum - self.min if self.n else 0.0

    def update(self, x: float) -> bool:
        """Add one observation; True when it completes a detection (the test then restarts)."""
        self.n += 1
        self.mean += (x - self.mean) / self.n
        self.sum = self.alpha * self.sum + (x - self.mean - self.delta)
        self.min = min(self.min, self.sum)
        if self.n >= self.min_samples and self.sum - self.min > self.threshold:
            self.reset()
            return True
        return False


class DriftMonitor:
    """Thread-safe drift bookkeeping for the daemon: detector, counts, state, optional reaction."""

    def __init__(
        self,
        detector: PageHinkley | None,
        *,
        reaction: str = "none",
        reaction_decay: float = 0.01,
        reaction_samples: int = 1000,
        learner: Callable[[], Any] | None = None,
        base_decay: float = 0.0,
    ) -> None:
        self.detector = detector
        self.reaction = reaction
        self.reaction_decay = reaction_decay
        self.reaction_samples = reaction_samples
        self.learner = learner
        self.base_decay = base_decay
        self.samples = 0
        self.detections = 0
        self.last_at: float | None = None
        self.last_at_sample: int | None = None
        self.reacting_until: int | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Any, learner: Callable[[], Any] | None = None) -> DriftMonitor:
        """``learner``: returns the daemon's current learner (a re-plan may swap it)."""
        d = config.drift
        detector = PageHinkley(d.delta, d.threshold, d.min_samples, d.alpha) if d.detector == "page_hinkley" else None
        base_decay = float(getattr(config.model, "normalize_decay", 0.0))
        return cls(
            detector,
            reaction=d.reaction,
            reaction_decay=d.reaction_decay,
            reaction_samples=d.reaction_samples,
            learner=learner,
            base_decay=base_decay,
        )

    def update(self, error: bool) -> bool:
        """One scored arrival; True when it completes a detection (the caller logs it)."""
        if self.detector is None:
            return False
        with self._lock:
            self.samples += 1
            if self.reacting_until is not None and self.samples >= self.reacting_until:
                self.reacting_until = None
                self._set_decay(self.base_decay)
            if not self.detector.update(1.0 if error else 0.0):
                return False
            self.detections += 1
            self.last_at = time.time()
            self.last_at_sample = self.samples
            if self.reaction == "norm_decay" and self._set_decay(max(self.base_decay, self.reaction_decay)):
                self.reacting_until = self.samples + self.reaction_samples
            return True

    def _set_decay(self, decay: float) -> bool:
        norm = getattr(self.learner(), "norm", None) if self.learner is not None else None
        if norm is None or not hasattr(norm, "decay"):
            return False
        norm.decay = float(decay)
        return True

    def status(self) -> dict[str, Any]:
        with self._lock:
            if self.detector is None:
                state = "off"
            elif self.reacting_until is not None:
                state = "reacting"
            elif self.last_at_sample is not None and self.samples - self.last_at_sample < self.detector.min_samples:
                state = "drift"
            elif self.detector.n < self.detector.min_samples:
                state = "warming_up"
            else:
                state = "stable"
            return {
                "detector": "page_hinkley" if self.detector is not None else "none",
                "state": state,
                "detections": self.detections,
                "last_at": self.last_at,
                "last_at_sample": self.last_at_sample,
                "samples": self.samples,
                "statistic": round(self.detector.statistic, 3) if self.detector is not None else None,
                "threshold": self.detector.threshold if self.detector is not None else None,
                "reaction": self.reaction,
            }
