"""The daemon loop's one inbox: signals and control requests, in arrival order.

gunicorn's rule: a signal handler only enqueues (:meth:`EventQueue.post_signal`, a
``SimpleQueue.put``, which is reentrant and safe in a handler), and a control handler enqueues
a call and waits for its result (:meth:`EventQueue.call`). The loop thread alone acts on them.
Posting a call also runs ``wake`` (the sample queue's), so a loop waiting for samples turns at
once instead of at its next tick.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
from collections.abc import Callable, Iterator
from typing import Any


@dataclasses.dataclass(frozen=True)
class SignalEvent:
    signum: int


@dataclasses.dataclass(frozen=True)
class CallEvent:
    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any]

    def run(self) -> None:
        """Run on the loop thread; the caller gets the result or the exception (never raised here)."""
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            self.future.set_result(self.fn())
        except Exception as exc:
            self.future.set_exception(exc)


Event = SignalEvent | CallEvent


class EventQueue:
    def __init__(self, wake: Callable[[], None] | None = None) -> None:
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._wake = wake or (lambda: None)

    def post_signal(self, signum: int) -> None:
        """From a signal handler: enqueue only."""
        self._queue.put(SignalEvent(signum))

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Enqueue ``fn`` for the loop thread; its future completes once the loop ran it."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put(CallEvent(fn, future))
        self._wake()
        return future

    def call(self, fn: Callable[[], Any], timeout: float) -> Any:
        """Run ``fn`` on the loop thread and wait for its result (how control mutates state)."""
        return self.submit(fn).result(timeout=timeout)

    def get(self, timeout: float) -> Event | None:
        """The next event, waiting up to ``timeout`` seconds; ``None`` when none came."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self) -> Iterator[Event]:
        """Every event queued now, oldest first, without waiting."""
        while True:
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return
