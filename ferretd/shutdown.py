"""The graceful stop's time budget and its first phase, draining the sample queue.

``[daemon] shutdown_timeout_s`` is shared out (:class:`ShutdownBudget`): draining the queue
ends at ``DRAIN``, the engine flush at ``FLUSH``; the final checkpoint comes next (always
attempted: it is the state), then the final snapshot only if the time left before ``CLOSE``
covers its expected export time; the last ``CLOSE`` share is kept for closing the sockets.

:func:`drain` trains what is queued until the drain deadline, then drops what is still waiting
(counted as ``shutdown``) and scores the dropped samples while drain time is left, so every
arrival stays in exactly one counter.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import ClassVar

from ferretd.components.score import ScoreComponent
from ferretd.components.trainer import Trainer
from ferretd.ingest import SampleQueue
from ferretd.messages import DropReason, Sample


@dataclasses.dataclass(frozen=True)
class ShutdownBudget:
    """Monotonic deadlines of the stop phases, from its start and ``shutdown_timeout_s``."""

    DRAIN: ClassVar[float] = 0.4
    FLUSH: ClassVar[float] = 0.5
    CLOSE: ClassVar[float] = 0.1

    started: float
    budget_s: float

    @property
    def drain_until(self) -> float:
        return self.started + self.DRAIN * self.budget_s

    @property
    def flush_until(self) -> float:
        return self.started + self.FLUSH * self.budget_s

    @property
    def snapshot_until(self) -> float:
        return self.deadline - self.CLOSE * self.budget_s

    @property
    def deadline(self) -> float:
        return self.started + self.budget_s

    @staticmethod
    def left(until: float) -> float:
        return max(0.0, until - time.monotonic())


def drain(
    queue: SampleQueue,
    trainer: Trainer,
    score: ScoreComponent,
    *,
    microbatch: int,
    wait_s: float,
    process: Callable[[list[Sample]], None],
    between: Callable[[], None],
    until: float,
) -> int:
    """Train queued samples (``process``; ``between`` handles events) until ``until``, then drop
    and score the rest. Returns how many were dropped."""
    while time.monotonic() < until and len(queue):
        between()
        process(queue.take(microbatch, timeout=wait_s, max_in_flight=trainer.in_flight_cap()))
    dropped = queue.drop_waiting(DropReason.SHUTDOWN)
    score.score_dropped(queue.take_dropped, until=until)
    return dropped
