"""The loop's one inbox: signals and calls in arrival order, a call's result or exception
reaches its caller, a posted call wakes a loop waiting for samples."""

from __future__ import annotations

import signal
import threading

import pytest

from ferretd.events import CallEvent, EventQueue, SignalEvent
from ferretd.ingest import SampleQueue


def test_signals_and_calls_come_out_in_arrival_order_and_calls_wake_the_loop():
    wakes: list[int] = []
    events = EventQueue(wake=lambda: wakes.append(1))
    events.post_signal(signal.SIGHUP)
    future = events.submit(lambda: 42)
    events.post_signal(signal.SIGTERM)
    drained = list(events.drain())
    assert [type(e) for e in drained] == [SignalEvent, CallEvent, SignalEvent]
    assert [e.signum for e in drained if isinstance(e, SignalEvent)] == [signal.SIGHUP, signal.SIGTERM]
    assert wakes == [1], "a call wakes the loop; a signal handler only enqueues"
    assert not future.done()
    drained[1].run()
    assert future.result(timeout=0) == 42
    assert list(events.drain()) == [] and events.get(timeout=0) is None


def test_a_failing_call_reaches_its_caller_not_the_loop():
    events = EventQueue()
    future = events.submit(lambda: 1 / 0)
    event = events.get(timeout=0)
    assert isinstance(event, CallEvent)
    event.run()  # must not raise on the loop thread
    with pytest.raises(ZeroDivisionError):
        future.result(timeout=0)


def test_wake_ends_a_take_that_waits_without_a_timeout():
    queue = SampleQueue(8)
    taken: list[list[object]] = []
    waiter = threading.Thread(target=lambda: taken.append(queue.take(1, timeout=None)), daemon=True)
    waiter.start()
    queue.wake()
    waiter.join(30)
    assert not waiter.is_alive() and taken == [[]]
    assert queue.take(1, timeout=0) == [], "a wake is used up by the take it ended"
