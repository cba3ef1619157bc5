"""The control socket's client: what ``ferretctl`` (and tools, tests) use to talk to ferretd.

Wire: a DEALER sends ``[b"", msgpack({"cmd": ..., "args": {...}})]`` and receives
``[b"", msgpack({"ok": ..., "result": ..., "error": ...})]`` from the daemon's ROUTER
(``transports.zmq_control.ControlServer``). Needs zmq, msgpack and ``ferretd.messages`` only:
no structlog, no numpy.
"""

from __future__ import annotations

from typing import Any

import zmq

from ferretd.messages import ControlReply, ControlRequest
from transports.security import ClientCurve, apply_client_curve
from transports.wire import pack, unpack


class ControlClient:
    """A short-lived DEALER for one or a few commands (what ``ferretctl`` uses)."""

    def __init__(
        self,
        endpoint: str,
        timeout_s: float = 5.0,
        context: zmq.SyncContext | None = None,
        *,
        curve: ClientCurve | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout_ms = int(timeout_s * 1000)
        self._own_context = context is None
        self._context: zmq.SyncContext = context or zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        apply_client_curve(self._socket, curve, endpoint)
        self._socket.connect(endpoint)

    def call(self, cmd: str, **args: Any) -> ControlReply:
        """Send one command; ``TimeoutError`` when the daemon does not answer in time."""
        self._socket.send_multipart([b"", pack(ControlRequest(cmd, args).to_dict())])
        if not self._socket.poll(self.timeout_ms, zmq.POLLIN):
            raise TimeoutError(f"no answer from {self.endpoint} within {self.timeout_ms / 1000:.1f}s")
        frames = self._socket.recv_multipart()
        return ControlReply.from_dict(unpack(frames[-1]))

    def close(self) -> None:
        self._socket.close(linger=0)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
