"""Snapshot distribution: a PUB that announces new manifests and a ROUTER that answers
"latest" and "fetch" requests (the Clone pattern: subscribe first, then ask for the latest, and
ignore announcements with a sequence number you already have).

Wire:
* announce (PUB): ``[b"snapshot", msgpack(manifest)]``
* request (DEALER/REQ -> ROUTER): ``[b"", msgpack({"op": "latest"})]`` or
  ``{"op": "fetch", "seq": N}``; reply ``{"ok": true, "manifest": {...}}`` plus ``"data":
  <onnx bytes>`` for fetch, or ``{"ok": false, "error": "..."}``.

One thread owns both sockets. Manifests reach it through a thread-safe queue, and the daemon
answers requests through two callbacks so this module never touches the snapshot store.

The thread survives any request: garbage, an unknown op, a failing callback or an unpackable
reply each get ``{"ok": false, "error": ...}`` and count in ``errors``. Requests above
``max_request_bytes`` make ZeroMQ drop the peer; with CURVE keys both sockets are CURVE servers
on tcp, so only authorized clients subscribe or fetch, and clients that pin the daemon's public
key cannot be fooled by another process serving snapshots (``transports.security``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import structlog
import zmq

from ferretd.logs import RateLimitedLog
from transports.security import CurveKeys, bind_server
from transports.wire import SNAPSHOT_TOPIC, pack, unpack

log = structlog.get_logger(__name__)

TOPIC = SNAPSHOT_TOPIC
LatestProvider = Callable[[], dict[str, Any] | None]
FetchProvider = Callable[[int], tuple[dict[str, Any], bytes] | None]


class SnapshotService:
    def __init__(
        self,
        context: zmq.SyncContext,
        announce_endpoint: str,
        latest_endpoint: str,
        latest: LatestProvider,
        fetch: FetchProvider,
        *,
        max_request_bytes: int = 4096,
        rcvhwm: int = 16,
        curve: CurveKeys | None = None,
    ) -> None:
        self._latest = latest
        self._fetch = fetch
        self._pub = context.socket(zmq.PUB)
        # inbound on a PUB: subscriptions only
        bind_server(self._pub, announce_endpoint, max_message_bytes=max_request_bytes, rcvhwm=rcvhwm, curve=curve)
        self._router = context.socket(zmq.ROUTER)
        bind_server(self._router, latest_endpoint, max_message_bytes=max_request_bytes, rcvhwm=rcvhwm, curve=curve)
        self._bad = RateLimitedLog(log)
        self.errors = 0
        self._outbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snapshots", daemon=True)
        self.announced = 0
        self.requests = 0

    def start(self) -> None:
        self._thread.start()

    def announce(self, manifest: dict[str, Any]) -> None:
        """Thread-safe: queue a manifest for publication."""
        self._outbox.put(manifest)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._pub.close(linger=0)
        self._router.close(linger=0)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        while not self._stop.is_set():
            self._drain_outbox()
            if poller.poll(50):
                self._serve_one()
        self._drain_outbox()

    def _drain_outbox(self) -> None:
        while True:
            try:
                manifest = self._outbox.get_nowait()
            except queue.Empty:
                return
            try:
                self._pub.send_multipart([TOPIC, pack(manifest)])
            except Exception as exc:  # an unpackable manifest must not end the thread
                self.errors += 1
                self._bad.warning("snapshot_announce_failed", "snapshot_announce_failed", error=str(exc)[:200])
                continue
            self.announced += 1

    def _serve_one(self) -> None:
        try:
            frames = self._router.recv_multipart(zmq.NOBLOCK)
        except zmq.ZMQError:
            return
        self.requests += 1
        envelope, payload = frames[:-1], frames[-1]
        try:
            reply = pack(self._answer(unpack(payload)))
        except Exception as exc:  # garbage, a failing callback, an unpackable manifest: one error reply
            self.errors += 1
            detail = str(exc)[:200]
            self._bad.warning("snapshot_bad_request", "snapshot_bad_request", error=detail)
            reply = pack({"ok": False, "error": f"bad request: {detail}"})
        try:
            self._router.send_multipart([*envelope, reply])
        except zmq.ZMQError as exc:
            self.errors += 1
            self._bad.warning("snapshot_reply_failed", "snapshot_reply_failed", error=str(exc))

    def _answer(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict):
            raise ValueError("request must be a mapping")
        op = request.get("op")
        if op == "latest":
            manifest = self._latest()
            return {"ok": True, "manifest": manifest} if manifest else {"ok": False, "error": "no snapshot yet"}
        if op == "fetch":
            seq = request.get("seq")
            if type(seq) is not int or not 0 <= seq < 2**63:
                raise ValueError("fetch needs a non-negative integer 'seq'")
            found = self._fetch(seq)
            if found is None:
                return {"ok": False, "error": f"snapshot {seq} is not kept"}
            manifest, data = found
            return {"ok": True, "manifest": manifest, "data": data}
        raise ValueError(f"unknown op {str(op)[:40]!r}")
