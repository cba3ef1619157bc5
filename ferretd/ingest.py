"""The bounded sample queue and the ledger that makes the counters add up.

Every frame the ingest socket receives ends in exactly one bucket::

    received = trained + dropped + invalid + queued        (queued = waiting + in_flight)

``SampleQueue`` keeps all of them under one lock, so a status snapshot is always consistent.
The ingest thread calls :meth:`SampleQueue.offer` / :meth:`SampleQueue.reject`; the daemon
loop calls :meth:`take` and, when the learner reports a sample's fate, :meth:`settle`.

Overflow policy (``[ingest] overflow``): ``drop_oldest`` (default) evicts the oldest waiting
sample to make room, because in online learning a sample is worth most right after it arrives;
``drop_newest`` refuses the arriving one instead. Either way the loss is counted as
``dropped.queue_full``.

Online accuracy covers every arrival: a sample dropped here (overflow, shutdown, a smaller queue
on reload) is kept aside until the loop scores it with the current model
(:meth:`take_dropped`). That side list holds at most ``capacity`` samples; a drop beyond that is
counted in ``unscored`` instead of being predicted.

Per-device sequence numbers are tracked to count gaps (numbers never received as a valid
sample) and resets (a number at or below the last one: a device restart or reordering). A
sequence number is a u64 chosen by the peer, so those two counters saturate at
:data:`COUNTER_MAX` instead of growing past what msgpack can encode.

Stdlib only.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from ferretd.messages import DropReason, RejectReason, Sample

COUNTER_MAX = 2**63 - 1
"""Counters fed by peers' numbers saturate here, so a status reply can always be packed (msgpack, JSON)."""


@dataclass(frozen=True)
class LedgerSnapshot:
    received: int
    trained: int
    dropped: dict[str, int]
    invalid: dict[str, int]
    waiting: int
    in_flight: int
    seq_gaps: int
    seq_resets: int
    devices: int

    @property
    def queued(self) -> int:
        return self.waiting + self.in_flight

    @property
    def balanced(self) -> bool:
        dropped = sum(self.dropped.values())
        invalid = sum(self.invalid.values())
        return self.received == self.trained + dropped + invalid + self.queued

    def to_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "trained": self.trained,
            "dropped": dict(self.dropped),
            "dropped_total": sum(self.dropped.values()),
            "invalid": dict(self.invalid),
            "invalid_total": sum(self.invalid.values()),
            "queued": self.queued,
            "waiting": self.waiting,
            "in_flight": self.in_flight,
            "balanced": self.balanced,
            "seq_gaps": self.seq_gaps,
            "seq_resets": self.seq_resets,
            "devices": self.devices,
        }


class SampleQueue:
    """Bounded FIFO of accepted samples plus the counters of every frame's fate."""

    def __init__(self, capacity: int, overflow: str = "drop_oldest", max_devices: int = 10_000) -> None:
        if overflow not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"unknown overflow policy {overflow!r}")
        self.capacity = capacity
        self.overflow = overflow
        self.max_devices = max_devices
        self._items: deque[Sample] = deque()
        self._dropped_items: deque[Sample] = deque()
        self._unscored = 0
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._woken = False
        self._received = 0
        self._trained = 0
        self._in_flight = 0
        self._dropped: Counter[str] = Counter()
        self._invalid: Counter[str] = Counter()
        self._last_seq: OrderedDict[str, int] = OrderedDict()
        self._seq_gaps = 0
        self._seq_resets = 0
        self.last_received_at = 0.0
        self._interval_ema: float | None = None
        self._intervals = 0

    # ------------------------------------------------------------------ producer side

    def _arrived(self) -> None:
        now = time.monotonic()
        if self.last_received_at:
            gap = now - self.last_received_at
            self._interval_ema = gap if self._interval_ema is None else 0.99 * self._interval_ema + 0.01 * gap
            self._intervals += 1
        self.last_received_at = now

    def arrival_interval_s(self, min_samples: int = 100) -> float | None:
        """Mean time between frames (EMA over about the last 100); None until ``min_samples`` arrived."""
        with self._lock:
            return self._interval_ema if self._intervals >= min_samples else None

    def reject(self, reason: RejectReason) -> None:
        with self._lock:
            self._received += 1
            self._invalid[reason.value] += 1
            self._arrived()

    def offer(self, sample: Sample) -> bool:
        """Enqueue an accepted sample; False when the overflow policy refused or evicted one."""
        with self._lock:
            accepted = self._offer(sample)
            self._not_empty.notify()
            return accepted

    def offer_many(self, samples: list[Sample]) -> int:
        """:meth:`offer` for a batch under one lock; returns how many the overflow policy dropped."""
        with self._lock:
            refused = sum(not self._offer(sample) for sample in samples)
            self._not_empty.notify()
            return refused

    def _offer(self, sample: Sample) -> bool:
        """Call with the lock held."""
        self._received += 1
        self._arrived()
        self._track_sequence(sample.device, sample.seq)
        if len(self._items) < self.capacity:
            self._items.append(sample)
            return True
        self._dropped[DropReason.QUEUE_FULL.value] += 1
        if self.overflow == "drop_newest":
            self._set_aside(sample)
        else:
            self._set_aside(self._items.popleft())
            self._items.append(sample)
        return False

    def _set_aside(self, sample: Sample) -> None:
        """Call with the lock held: keep a dropped sample for scoring, or count it unscored."""
        if len(self._dropped_items) < self.capacity:
            self._dropped_items.append(sample)
        else:
            self._unscored += 1

    def take_dropped(self, max_items: int | None = None) -> list[Sample]:
        """Dropped samples not yet scored (oldest first), at most ``max_items``."""
        with self._lock:
            n = len(self._dropped_items) if max_items is None else min(max_items, len(self._dropped_items))
            return [self._dropped_items.popleft() for _ in range(n)]

    @property
    def awaiting_score(self) -> int:
        """Dropped samples set aside and not yet scored."""
        with self._lock:
            return len(self._dropped_items)

    @property
    def unscored(self) -> int:
        with self._lock:
            return self._unscored

    def _track_sequence(self, device: str, seq: int) -> None:
        last = self._last_seq.get(device)
        if last is None:
            if len(self._last_seq) >= self.max_devices:
                self._last_seq.popitem(last=False)
        elif seq > last:
            self._seq_gaps = min(COUNTER_MAX, self._seq_gaps + (seq - last - 1))
        else:
            self._seq_resets = min(COUNTER_MAX, self._seq_resets + 1)
        self._last_seq[device] = seq
        self._last_seq.move_to_end(device)

    # ------------------------------------------------------------------ consumer side

    def take(self, max_items: int = 1, timeout: float | None = None, max_in_flight: int | None = None) -> list[Sample]:
        """Pop up to ``max_items`` (waiting up to ``timeout`` for the first); they become in flight.

        With ``max_in_flight``, never let more than that many samples be in flight: the rest keep
        waiting here, where the overflow policy drops the stalest when arrivals outpace training
        (instead of a backlog growing inside the engine, where every sample gets older).
        """

        def ready() -> bool:
            return self._woken or (bool(self._items) and (max_in_flight is None or self._in_flight < max_in_flight))

        with self._not_empty:
            if not ready() and timeout != 0:
                self._not_empty.wait_for(ready, timeout=timeout)
            self._woken = False
            room = len(self._items) if max_in_flight is None else max(0, max_in_flight - self._in_flight)
            batch = [self._items.popleft() for _ in range(min(max_items, len(self._items), room))]
            self._in_flight += len(batch)
            return batch

    def wake(self) -> None:
        """End a waiting ``take`` now, with whatever is ready (the loop has an event to handle)."""
        with self._lock:
            self._woken = True
            self._not_empty.notify_all()

    def settle(self, trained: bool, reason: str = DropReason.ENGINE.value) -> None:
        """One in-flight sample finished: trained, or dropped with ``reason``."""
        with self._lock:
            if self._in_flight <= 0:
                raise RuntimeError("settle() without a matching take()")
            self._in_flight -= 1
            self._not_empty.notify()
            if trained:
                self._trained += 1
            else:
                self._dropped[reason] += 1

    def drop_waiting(self, reason: DropReason = DropReason.SHUTDOWN) -> int:
        """Discard every waiting sample (counted under ``reason``); returns how many."""
        with self._lock:
            n = len(self._items)
            for sample in self._items:
                self._set_aside(sample)
            self._items.clear()
            if n:
                self._dropped[reason.value] += n
            return n

    def reconfigure(self, capacity: int, overflow: str) -> None:
        """Change capacity and policy live (config reload); a smaller queue drops its oldest."""
        if overflow not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"unknown overflow policy {overflow!r}")
        with self._lock:
            self.capacity, self.overflow = capacity, overflow
            while len(self._items) > capacity:
                self._set_aside(self._items.popleft())
                self._dropped[DropReason.QUEUE_FULL.value] += 1

    def restore_counts(self, received: int, trained: int, dropped: dict[str, int], invalid: dict[str, int]) -> None:
        """Continue the counters of a previous run (checkpoint resume); only when empty."""
        with self._lock:
            if self._items or self._in_flight or self._received:
                raise RuntimeError("restore_counts() on a queue that has seen samples")
            self._received, self._trained = int(received), int(trained)
            self._dropped = Counter({k: int(v) for k, v in dropped.items()})
            self._invalid = Counter({k: int(v) for k, v in invalid.items()})

    # ------------------------------------------------------------------ inspection

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def snapshot(self) -> LedgerSnapshot:
        with self._lock:
            return LedgerSnapshot(
                received=self._received,
                trained=self._trained,
                dropped=dict(self._dropped),
                invalid=dict(self._invalid),
                waiting=len(self._items),
                in_flight=self._in_flight,
                seq_gaps=self._seq_gaps,
                seq_resets=self._seq_resets,
                devices=len(self._last_seq),
            )
