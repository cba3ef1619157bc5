"""The learner interface the daemon drives, and prequential (test-then-train) scoring.

The daemon owns the loop: for every sample popped from the queue it calls ``predict_one`` with
the current model (that prediction is what online accuracy scores), then ``learn_one``. A
learner may train asynchronously (the pipeline engine does); it reports each sample's fate once
through the ``on_done`` callback, from whatever thread finished it, so the daemon's counters
(received = trained + dropped + invalid + queued) stay exact.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from ferretd.engine.plan import Plan


@dataclass(frozen=True, slots=True)
class LearnOutcome:
    """What became of one sample handed to ``learn_one``: trained, or dropped with a reason.

    ``predicted``: the class the training forward gave the sample, before its own update (a
    test-then-train prediction, see :attr:`OnlineLearner.reports_predictions`); ``None`` when
    no forward ran for it (dropped before its forward) or the learner does not report one."""

    trained: bool
    reason: str = ""
    predicted: int | None = None


DoneCallback = Callable[[LearnOutcome], None]


class OnlineLearner(ABC):
    """Predict-then-train learner over a stream of single samples.

    Every learner says what it is (``kind``, the ``"kind"`` of its state dict), how many samples
    it should hold (``in_flight_capacity``) and switches to a new plan of its kind at a safe point
    (``apply_plan``); the daemon calls these on any learner, never checking which one it has.
    """

    kind: str
    """``"sequential"`` or ``"pipeline"``: which plans this learner can run (see ``apply_plan``)."""

    reports_predictions: bool = False
    """True: each outcome carries the class its training forward predicted for the sample (with
    the weights it trains from, before its own update), so the daemon needs no forward of its own
    to score trained samples; a sample without one (``predicted`` None) it scores itself."""

    @abstractmethod
    def predict_one(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities for one sample under the current weights."""

    def predict_many(self, xs: np.ndarray) -> np.ndarray:
        """Class probabilities for a batch of samples (first axis) under the current weights.

        The daemon scores dropped arrivals in batches: one forward for many samples costs far less
        CPU than one forward each, which matters most when the box is overloaded."""
        return np.stack([self.predict_one(x) for x in xs])

    @abstractmethod
    def learn_one(self, x: np.ndarray, y: int, on_done: DoneCallback | None = None) -> None:
        """Accept one labeled sample; ``on_done`` fires exactly once when its update is applied."""

    @abstractmethod
    def flush(self, timeout: float | None = None) -> bool:
        """Apply every accepted sample (a partial microbatch included); False on timeout."""

    @abstractmethod
    def export_module(self) -> nn.Module:
        """A standalone copy of a consistent weight version, in eval mode, for ONNX export."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume learning (weights, optimizer, internal state)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @property
    @abstractmethod
    def updates(self) -> int:
        """Number of optimizer updates applied so far."""

    @abstractmethod
    def in_flight_capacity(self) -> int:
        """Samples the learner should hold at once to keep busy (at least 1)."""

    @abstractmethod
    def apply_plan(self, plan: Plan, timeout: float | None = None) -> bool:
        """Run ``plan`` (a plan of this learner's ``kind``) from a safe point on, keeping the
        learning state; False when in-flight work did not drain within ``timeout``."""

    def status(self) -> dict[str, Any]:
        """Engine details for ``ferretctl status`` (stages, staleness, utilisation)."""
        return {}

    def close(self) -> None:
        """Stop background threads; idempotent."""
        return None


def ema_decay_for(config: Any) -> float | None:
    """``[snapshot] export = "ema"``: the decay of the weight average the learner keeps, else None."""
    return config.snapshot.ema_decay if config.snapshot.export == "ema" else None


def load_extras(state: dict[str, Any], norm: Any, guard: Any) -> None:
    """Restore the normaliser and divergence-guard parts of a learner state (absent: left as is)."""
    if norm is not None and state.get("normalizer"):
        norm.load(state["normalizer"])
    if guard is not None and state.get("guard"):
        guard.load(state["guard"])


class PrequentialScore:
    """Online accuracy (cumulative and over a recent window) beside two reference baselines.

    NoChange predicts the previous label; majority predicts the most frequent label so far. On
    class-sorted streams NoChange alone scores near 100%, so online accuracy is only meaningful
    next to them.

    Every arrival counts once (``seen``) and feeds the baselines. Its model prediction is either
    scored (:meth:`record`) or, for a dropped arrival left out of a scored random sample, only
    counted (:meth:`count`): the sampled ones then carry a ``weight`` (the inverse of their
    sampling probability), so ``hits`` is an unbiased (Horvitz-Thompson) estimate of the hits
    over all arrivals. With every arrival scored, every weight is 1 and the accuracy is exact.
    ``online_accuracy_stderr`` is the estimate's standard error from that sampling alone: each
    batch of ``k`` arrivals of which ``m`` were scored adds ``k (k/m - 1) p (1 - p)`` to the
    variance of the hit count (simple random sampling without replacement), with the estimated
    accuracy as ``p``; 0 when every arrival was scored.
    """

    def __init__(self, window: int = 500) -> None:
        self.window = window
        self.seen = 0
        self.scored = 0
        self.hits = 0.0
        self.sampling_variance = 0.0  # sum over sampled batches of k (k/m - 1), times p (1 - p) at report time
        self.nochange_hits = 0
        self.majority_hits = 0
        self._recent: deque[tuple[int, float]] = deque(maxlen=window)
        self._last_label: int | None = None
        self._label_counts: Counter[int] = Counter()
        self._majority: int | None = None

    def record(self, predicted: int, label: int, weight: float = 1.0) -> bool:
        """One arrival predicted and scored; ``weight`` > 1 when it stands for unscored ones too."""
        hit = int(predicted == label)
        self.scored += 1
        self.hits += hit * weight
        self._recent.append((hit, weight))
        self.count(label)
        return bool(hit)

    def count(self, label: int) -> None:
        """One arrival seen (baselines updated); its model hit is estimated by a scored one's weight."""
        self.seen += 1
        self.nochange_hits += int(self._last_label == label)
        self.majority_hits += int(self._majority == label)
        self._last_label = label
        self._label_counts[label] += 1
        if self._majority is None or self._label_counts[label] > self._label_counts[self._majority]:
            self._majority = label

    def sampled(self, k: int, m: int) -> None:
        """A batch of ``k`` arrivals was scored by a random ``m`` of them (recorded with weight k/m)."""
        if 0 < m < k:
            self.sampling_variance += k * (k / m - 1.0)

    def stderr(self) -> float | None:
        """Standard error of :attr:`accuracy` from scoring by sample (0.0 when exact)."""
        p = self.accuracy
        if p is None:
            return None
        p = min(1.0, max(0.0, p))
        return math.sqrt(self.sampling_variance * p * (1.0 - p)) / self.seen

    @staticmethod
    def _ratio(hits: float, seen: float) -> float | None:
        return hits / seen if seen else None

    @property
    def accuracy(self) -> float | None:
        return self._ratio(self.hits, self.seen)

    def summary(self) -> dict[str, Any]:
        return {
            "samples": self.seen,
            "online_accuracy": self.accuracy,
            "online_accuracy_stderr": self.stderr(),
            "window_accuracy": self._ratio(sum(h * w for h, w in self._recent), sum(w for _, w in self._recent)),
            "window": self.window,
            "scored": self.scored,
            "estimated": self.seen - self.scored,
            "nochange_accuracy": self._ratio(self.nochange_hits, self.seen),
            "majority_accuracy": self._ratio(self.majority_hits, self.seen),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "scored": self.scored,
            "hits": self.hits,
            "sampling_variance": self.sampling_variance,
            "nochange_hits": self.nochange_hits,
            "majority_hits": self.majority_hits,
            "recent": [[h, w] for h, w in self._recent],
            "last_label": self._last_label,
            "label_counts": dict(self._label_counts),
            "majority": self._majority,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Also reads checkpoints from before sampled scoring (integer hits, recent as plain 0/1)."""
        self.seen = int(state["seen"])
        self.scored = int(state.get("scored", self.seen))
        self.hits = float(state["hits"])
        self.sampling_variance = float(state.get("sampling_variance", 0.0))
        self.nochange_hits = int(state["nochange_hits"])
        self.majority_hits = int(state["majority_hits"])
        recent = [(int(r[0]), float(r[1])) if isinstance(r, list | tuple) else (int(r), 1.0) for r in state["recent"]]
        self._recent = deque(recent, maxlen=self.window)
        self._last_label = state["last_label"]
        self._label_counts = Counter({int(k): int(v) for k, v in state["label_counts"].items()})
        self._majority = state["majority"]
