"""The control socket's server: a ROUTER on an ipc file with mode 0600 (the client is
``transports.control_client``, re-exported here).

Wire: a DEALER (or REQ) sends ``[b"", msgpack({"cmd": ..., "args": {...}})]`` and receives
``[b"", msgpack({"ok": ..., "result": ..., "error": ...})]``. The server thread only moves
messages: ``handle`` (supplied by the daemon) turns a request into a reply, enqueueing any
state change for the daemon loop.

The thread survives any request: garbage, a failing handler or a reply that cannot be packed
each get an ``ok: false`` reply and are counted in ``errors``; a request above
``max_request_bytes`` makes ZeroMQ drop that peer (see ``transports.security``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog
import zmq

from ferretd.logs import RateLimitedLog
from ferretd.messages import ControlReply, ControlRequest
from transports.control_client import ControlClient
from transports.security import CurveKeys, bind_private, bind_server, ipc_path
from transports.wire import pack, unpack

log = structlog.get_logger(__name__)

Handler = Callable[[ControlRequest], ControlReply]
__all__ = ["ControlClient", "ControlServer", "bind_private", "ipc_path"]


class ControlServer:
    def __init__(
        self,
        context: zmq.SyncContext,
        endpoint: str,
        handle: Handler,
        *,
        max_request_bytes: int = 65536,
        rcvhwm: int = 16,
        curve: CurveKeys | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._handle = handle
        self._socket = context.socket(zmq.ROUTER)
        bind_server(self._socket, endpoint, max_message_bytes=max_request_bytes, rcvhwm=rcvhwm, curve=curve)
        self.requests = 0
        self.errors = 0
        self._bad = RateLimitedLog(log)
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
            self.requests += 1
            envelope, payload = frames[:-1], frames[-1]
            try:
                self._socket.send_multipart([*envelope, self._reply_bytes(payload)])
            except Exception as exc:  # a vanished peer or a bad envelope: never the thread's end
                self.errors += 1
                self._bad.warning("control_reply_failed", "control_reply_failed", error=str(exc))

    def _reply_bytes(self, payload: bytes) -> bytes:
        reply = self._answer(payload)
        try:
            return pack(reply.to_dict())
        except Exception as exc:  # e.g. an integer past 2**64 in a result
            self.errors += 1
            self._bad.warning("control_unpackable", "control_reply_unpackable", error=f"{type(exc).__name__}: {exc}")
            return pack({"ok": False, "result": {}, "error": f"reply could not be encoded: {type(exc).__name__}"})

    def _answer(self, payload: bytes) -> ControlReply:
        try:
            request = ControlRequest.from_dict(unpack(payload))
        except Exception as exc:
            self.errors += 1
            self._bad.warning("control_bad_request", "control_bad_request", error=str(exc)[:200])
            return ControlReply(ok=False, error=f"bad request: {str(exc)[:200]}")
        try:
            return self._handle(request)
        except Exception as exc:
            self.errors += 1
            log.exception("control_handler_failed", cmd=request.cmd[:64])
            return ControlReply(ok=False, error=f"{request.cmd[:64]} failed: {str(exc)[:200]}")
