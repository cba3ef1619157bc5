"""The control socket: a ROUTER on an ipc file with mode 0600, and its client.

Wire: a DEALER (or REQ) sends ``[b"", msgpack({"cmd": ..., "args": {...}})]`` and receives
``[b"", msgpack({"ok": ..., "result": ..., "error": ...})]``. The server thread only moves
messages: ``handle`` (supplied by the daemon) turns a request into a reply, enqueueing any
state change for the daemon loop.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import structlog
import zmq

from ferretd.messages import ControlReply, ControlRequest
from transports.codec import pack, unpack

log = structlog.get_logger(__name__)

Handler = Callable[[ControlRequest], ControlReply]


def ipc_path(endpoint: str) -> str | None:
    return endpoint[len("ipc://") :] if endpoint.startswith("ipc://") else None


def bind_private(socket: zmq.Socket, endpoint: str) -> None:
    """Bind; an ipc file is created under umask 077 and then set to 0600 explicitly."""
    path = ipc_path(endpoint)
    if path is None:
        socket.bind(endpoint)
        return
    old = os.umask(0o077)
    try:
        socket.bind(endpoint)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)


class ControlServer:
    def __init__(self, context: zmq.Context, endpoint: str, handle: Handler) -> None:
        self.endpoint = endpoint
        self._handle = handle
        self._socket = context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        bind_private(self._socket, endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._socket.close(linger=0)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                continue
            envelope, payload = frames[:-1], frames[-1]
            reply = self._answer(payload)
            try:
                self._socket.send_multipart([*envelope, pack(reply.to_dict())])
            except zmq.ZMQError as exc:
                log.warning("control_reply_failed", error=str(exc))

    def _answer(self, payload: bytes) -> ControlReply:
        try:
            request = ControlRequest.from_dict(unpack(payload))
        except ValueError as exc:
            return ControlReply(ok=False, error=f"bad request: {exc}")
        try:
            return self._handle(request)
        except Exception as exc:
            log.exception("control_handler_failed", cmd=request.cmd)
            return ControlReply(ok=False, error=f"{request.cmd} failed: {exc}")


class ControlClient:
    """A short-lived DEALER for one or a few commands (what ``ferretctl`` uses)."""

    def __init__(self, endpoint: str, timeout_s: float = 5.0, context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self.timeout_ms = int(timeout_s * 1000)
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
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
