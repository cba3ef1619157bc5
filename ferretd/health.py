"""Health as a pure function of a small status snapshot, and the bookkeeping that feeds it.

``ferretctl health``: 0 healthy, 1 degraded, 2 down. The daemon fills a :class:`HealthSnapshot`
(plain values read from its components) and :func:`assess` turns it into the answer, so every
rule is testable without threads or sockets. Degraded means one of: the counters do not add
up, the loop has not turned for ``STALL_S``, training is paused, samples are waiting but none
was trained for ``STALL_S``, the last snapshot export failed, the last checkpoint write failed,
more than ``[metrics] max_drop_share`` of the valid samples of the last ``[metrics]
drop_window_s`` were dropped, a component reported an issue (:class:`HealthIssues`, e.g. resume
had to skip unusable checkpoints), or the divergence guard discarded an update within
``DIVERGED_RECENT_S``. Stopping or stopped is down.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from typing import Any

STALL_S = 30.0
DIVERGED_RECENT_S = 60.0


@dataclasses.dataclass(frozen=True)
class HealthSnapshot:
    """What health is judged on; durations in seconds, ``None`` when the event never happened."""

    state: str
    balanced: bool = True
    queued: int = 0
    paused: bool = False
    loop_idle_s: float = 0.0
    since_progress_s: float = 0.0
    export_failed: bool = False
    checkpoint_error: str | None = None
    drop_share: float | None = None
    drop_window_samples: int = 0
    max_drop_share: float = 0.5
    issues: tuple[str, ...] = ()
    since_divergence_s: float | None = None


def assess(snap: HealthSnapshot) -> dict[str, Any]:
    """``{"code", "status", "reasons"}`` for one snapshot (reads ``STALL_S`` and ``DIVERGED_RECENT_S`` now)."""
    if snap.state in ("stopping", "stopped"):
        return {"code": 2, "status": "down", "reasons": [f"daemon is {snap.state}"]}
    reasons: list[str] = []
    if not snap.balanced:
        reasons.append("counters do not add up")
    if snap.loop_idle_s > STALL_S:
        reasons.append(f"loop has not turned for {snap.loop_idle_s:.0f} s")
    if snap.paused:
        reasons.append("training is paused")
    elif snap.queued and snap.since_progress_s > STALL_S:
        reasons.append(f"{snap.queued} samples queued but none trained for {snap.since_progress_s:.0f} s")
    if snap.export_failed:
        reasons.append("the last snapshot export failed")
    if snap.checkpoint_error is not None:
        reasons.append(f"the last checkpoint write failed ({snap.checkpoint_error})")
    if snap.drop_share is not None and snap.drop_share > snap.max_drop_share:
        reasons.append(
            f"{snap.drop_share:.0%} of the last {snap.drop_window_samples} valid samples were dropped "
            f"(limit {snap.max_drop_share:.0%})"
        )
    reasons += snap.issues
    if snap.since_divergence_s is not None and snap.since_divergence_s < DIVERGED_RECENT_S:
        reasons.append(f"a training update diverged {snap.since_divergence_s:.0f} s ago and was discarded")
    return {"code": 1 if reasons else 0, "status": "degraded" if reasons else "healthy", "reasons": reasons}


class Liveness:
    """The loop's heartbeat and training progress, for health and the systemd watchdog."""

    def __init__(self) -> None:
        self.heartbeat = time.monotonic()
        self.last_progress_at = time.monotonic()
        self._last_trained = 0

    def beat(self) -> None:
        """The loop turned."""
        self.heartbeat = time.monotonic()

    def resumed(self, trained: int) -> None:
        self._last_trained = trained

    def progressing(self, trained: int, queued: int, paused: bool) -> bool:
        """Trained moved, or there is nothing to train, or training is paused on purpose; else
        whether the last progress is less than ``STALL_S`` old (the watchdog pings only then)."""
        now = time.monotonic()
        if trained != self._last_trained or queued == 0 or paused:
            self._last_trained = trained
            self.last_progress_at = now
            return True
        return now - self.last_progress_at < STALL_S


class HealthIssues:
    """Reasons for ``degraded`` that components set and clear (thread-safe, keyed by component)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reasons: dict[str, str] = {}

    def set(self, key: str, reason: str) -> None:
        with self._lock:
            self._reasons[key] = reason

    def clear(self, key: str) -> None:
        with self._lock:
            self._reasons.pop(key, None)

    def reasons(self) -> list[str]:
        with self._lock:
            return list(self._reasons.values())


class DropWindow:
    """Share of valid samples dropped over the last ``window_s`` seconds (from ledger samples)."""

    MIN_SAMPLES = 20

    def __init__(self, window_s: float, every_s: float = 1.0) -> None:
        self.window_s = window_s
        self.every_s = every_s
        self._points: deque[tuple[float, int, int]] = deque()
        self._lock = threading.Lock()

    def observe(self, now: float, accepted: int, dropped: int) -> None:
        """Record the cumulative counters; cheap to call on every loop turn."""
        with self._lock:
            if self._points and now - self._points[-1][0] < self.every_s:
                return
            self._points.append((now, accepted, dropped))
            while len(self._points) > 2 and now - self._points[1][0] >= self.window_s:
                self._points.popleft()

    def share(self) -> tuple[float, int] | None:
        """(dropped share, accepted samples) over the window; ``None`` with too few samples."""
        with self._lock:
            if len(self._points) < 2:
                return None
            (_, a0, d0), (_, a1, d1) = self._points[0], self._points[-1]
        accepted = a1 - a0
        if accepted < self.MIN_SAMPLES:
            return None
        return max(0, d1 - d0) / accepted, accepted
