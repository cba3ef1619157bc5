"""The ingest socket: a ZeroMQ PULL bound for devices, drained on its own thread.

Each received frame goes to ``handle_frame`` (the daemon decodes, validates and enqueues it).
A multipart message is handed over as ``None`` so it can be counted as malformed.

Memory is bounded by ``RCVHWM`` (``[ingest] rcvhwm`` frames buffered per connected peer) times
``MAXMSGSIZE``, which is the configured message limit plus :data:`GUARD_SLACK_BYTES`: a frame a
little past the limit is still received and counted as ``too_large`` (so a misconfigured device
shows up in the counters), while a frame past the guard makes ZeroMQ drop that peer before any
byte reaches us (it cannot be counted). On tcp with CURVE keys only authorized devices connect
(``transports.security``); an ipc socket file is owner-only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog
import zmq

from ferretd.logs import RateLimitedLog
from transports.security import CurveKeys, bind_server

log = structlog.get_logger(__name__)

GUARD_SLACK_BYTES = 64 << 10

FrameHandler = Callable[[bytes | None, float], None]


class IngestServer:
    """Owns the PULL socket; ``start()`` spawns the receive thread, ``stop()`` joins it."""

    def __init__(
        self,
        context: zmq.SyncContext,
        endpoint: str,
        handle_frame: FrameHandler,
        *,
        max_message_bytes: int,
        rcvhwm: int = 1000,
        batch: int = 256,
        curve: CurveKeys | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._handle = handle_frame
        self._batch = batch
        self._socket = context.socket(zmq.PULL)
        self.guard_bytes = max_message_bytes + GUARD_SLACK_BYTES
        bind_server(self._socket, endpoint, max_message_bytes=self.guard_bytes, rcvhwm=rcvhwm, curve=curve)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
        self._bad = RateLimitedLog(log)
        self.frames = 0
        self.handler_errors = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop receiving; frames still in ZeroMQ's buffer were never accepted and stay uncounted."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._socket.close(linger=0)

    def _run(self) -> None:
        sock = self._socket
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            for _ in range(self._batch):
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                except zmq.ZMQError as exc:  # socket closed under us during shutdown
                    if self._stop.is_set():
                        return
                    log.error("ingest_receive_failed", error=str(exc))
                    time.sleep(0.1)
                    break
                self.frames += 1
                try:
                    self._handle(parts[0] if len(parts) == 1 else None, time.monotonic())
                except Exception as exc:  # a handler bug must not kill ingestion (nor flood the log)
                    self.handler_errors += 1
                    self._bad.warning("handler", "ingest_handler_failed", error=f"{type(exc).__name__}: {exc}"[:200])
