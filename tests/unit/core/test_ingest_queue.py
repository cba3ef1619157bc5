"""SampleQueue: overflow policies, sequence gaps, and counters that always add up."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from ferretd.ingest import SampleQueue
from ferretd.messages import RejectReason, Sample


def sample(seq: int, device: str = "d") -> Sample:
    return Sample(device=device, seq=seq, timestamp=0.0, features=np.zeros(2, np.float32), label=0)


def test_drop_oldest_keeps_the_newest_samples():
    q = SampleQueue(3, "drop_oldest")
    for i in range(5):
        q.offer(sample(i))
    assert [s.seq for s in q.take(10, timeout=0)] == [2, 3, 4]
    snap = q.snapshot()
    assert snap.dropped == {"queue_full": 2} and snap.in_flight == 3 and snap.balanced


def test_drop_newest_refuses_arrivals_when_full():
    q = SampleQueue(3, "drop_newest")
    results = [q.offer(sample(i)) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert [s.seq for s in q.take(10, timeout=0)] == [0, 1, 2]


def test_settle_moves_in_flight_to_trained_or_dropped():
    q = SampleQueue(10)
    for i in range(4):
        q.offer(sample(i))
    q.reject(RejectReason.NON_FINITE)
    q.take(4, timeout=0)
    q.settle(True)
    q.settle(True)
    q.settle(False, "engine")
    snap = q.snapshot()
    assert (snap.received, snap.trained, snap.in_flight, snap.waiting) == (5, 2, 1, 0)
    assert snap.dropped == {"engine": 1} and snap.invalid == {"non_finite": 1} and snap.balanced
    q.settle(True)
    with pytest.raises(RuntimeError):
        q.settle(True)


def test_sequence_gaps_and_resets_per_device():
    q = SampleQueue(100)
    for seq in [0, 1, 4, 5]:
        q.offer(sample(seq, "a"))
    for seq in [10, 11, 0]:
        q.offer(sample(seq, "b"))
    snap = q.snapshot()
    assert snap.seq_gaps == 2 and snap.seq_resets == 1 and snap.devices == 2


def test_device_table_is_bounded():
    q = SampleQueue(10, max_devices=3)
    for i in range(10):
        q.offer(sample(0, f"dev-{i}"))
    assert q.snapshot().devices == 3


def test_counters_add_up_under_concurrent_producers_and_consumer():
    q = SampleQueue(50, "drop_oldest")
    stop = threading.Event()
    imbalances: list[object] = []

    def produce(device: str) -> None:
        rng = random.Random(device)
        for i in range(3000):
            if rng.random() < 0.1:
                q.reject(RejectReason.MALFORMED)
            else:
                q.offer(sample(i, device))

    def consume() -> None:
        while not stop.is_set() or len(q):
            for _ in q.take(4, timeout=0.01):
                q.settle(True)

    def watch() -> None:
        while not stop.is_set():
            snap = q.snapshot()
            if not snap.balanced:
                imbalances.append(snap)

    threads = [threading.Thread(target=produce, args=(f"p{i}",)) for i in range(3)]
    consumer, watcher = threading.Thread(target=consume), threading.Thread(target=watch)
    consumer.start()
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    consumer.join()
    watcher.join()
    snap = q.snapshot()
    assert imbalances == []
    assert snap.received == 9000 and snap.queued == 0 and snap.balanced
    assert snap.trained + snap.dropped.get("queue_full", 0) + snap.invalid["malformed"] == 9000


def test_drop_waiting_counts_shutdown_losses():
    q = SampleQueue(10)
    for i in range(3):
        q.offer(sample(i))
    assert q.drop_waiting() == 3
    assert q.snapshot().dropped == {"shutdown": 3}


def test_take_respects_the_in_flight_cap_and_settle_wakes_the_taker():
    q = SampleQueue(100)
    for i in range(10):
        q.offer(sample(i))
    assert len(q.take(8, timeout=0, max_in_flight=3)) == 3
    assert q.take(8, timeout=0.01, max_in_flight=3) == []
    woke: list[int] = []
    taker = threading.Thread(target=lambda: woke.append(len(q.take(8, timeout=5, max_in_flight=3))))
    taker.start()
    q.settle(True)
    taker.join(5)
    assert woke == [1]
    assert q.snapshot().in_flight == 3 and q.snapshot().waiting == 6 and q.snapshot().balanced


def test_arrival_interval_is_measured_after_enough_frames(monkeypatch):
    import ferretd.ingest as ingest

    clock = iter(i * 0.01 for i in range(1, 1000))
    monkeypatch.setattr(ingest.time, "monotonic", lambda: next(clock))
    q = SampleQueue(1000)
    for i in range(50):
        q.offer(sample(i))
    assert q.arrival_interval_s() is None, "too few frames to say"
    for i in range(50, 150):
        q.reject(RejectReason.MALFORMED) if i % 10 == 0 else q.offer(sample(i))
    assert q.arrival_interval_s() == pytest.approx(0.01)
