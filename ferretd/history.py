"""A bounded in-memory history of how learning goes, for ``ferretctl history`` and its plot.

Every ``[metrics] history_every_s`` seconds the daemon loop records one point: the time, the
ledger totals (received, trained, dropped, invalid), online accuracy (all arrivals and the
recent window) and the update count; the newest ``[metrics] history_points`` are kept (a deque,
so memory is bounded). Throughput and drop rates are the differences between points, computed
by the reader. Cheap to record: no psutil, no status assembly. Not persisted: it starts empty
after a restart (the checkpoint keeps the cumulative counters and accuracy).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferretd.status import StatusSources

FIELDS = ("t", "received", "trained", "dropped", "invalid", "online_accuracy", "window_accuracy", "updates")


class History:
    def __init__(self, every_s: float, points: int) -> None:
        self.every_s = every_s
        self._points: deque[tuple[Any, ...]] = deque(maxlen=points)
        self._next = 0.0  # monotonic time of the next point
        self._lock = threading.Lock()

    def maybe_record(self, parts: StatusSources, now: float | None = None) -> bool:
        """Record a point when one is due (called from the daemon loop); True when it did."""
        now = time.monotonic() if now is None else now
        if now < self._next:
            return False
        self._next = now + self.every_s
        ledger = parts.ingest.queue.snapshot()
        score = parts.score.summary()
        point = (
            round(time.time(), 3),
            ledger.received,
            ledger.trained,
            sum(ledger.dropped.values()),
            sum(ledger.invalid.values()),
            score.get("online_accuracy"),
            score.get("window_accuracy"),
            parts.trainer.updates,
        )
        with self._lock:
            self._points.append(point)
        return True

    def to_dict(self, last: int | None = None) -> dict[str, Any]:
        with self._lock:
            points = list(self._points)
        if last is not None:
            points = points[-last:] if last > 0 else []
        return {
            "every_s": self.every_s,
            "capacity": self._points.maxlen,
            "fields": list(FIELDS),
            "points": [list(p) for p in points],
        }
