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
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import structlog
import zmq

from transports.codec import pack, unpack

log = structlog.get_logger(__name__)

TOPIC = b"snapshot"
LatestProvider = Callable[[], dict[str, Any] | None]
FetchProvider = Callable[[int], tuple[dict[str, Any], bytes] | None]


class SnapshotService:
    def __init__(
        self,
        context: zmq.Context,
        announce_endpoint: str,
        latest_endpoint: str,
        latest: LatestProvider,
        fetch: FetchProvider,
    ) -> None:
        self._latest = latest
        self._fetch = fetch
        self._pub = context.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind(announce_endpoint)
        self._router = context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.bind(latest_endpoint)
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
            self._pub.send_multipart([TOPIC, pack(manifest)])
            self.announced += 1

    def _serve_one(self) -> None:
        try:
            frames = self._router.recv_multipart(zmq.NOBLOCK)
        except zmq.ZMQError:
            return
        self.requests += 1
        envelope, payload = frames[:-1], frames[-1]
        try:
            reply = self._answer(unpack(payload))
        except Exception as exc:
            reply = {"ok": False, "error": f"bad request: {exc}"}
        self._router.send_multipart([*envelope, pack(reply)])

    def _answer(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict):
            raise ValueError("request must be a mapping")
        op = request.get("op")
        if op == "latest":
            manifest = self._latest()
            return {"ok": True, "manifest": manifest} if manifest else {"ok": False, "error": "no snapshot yet"}
        if op == "fetch":
            seq = request.get("seq")
            if type(seq) is not int:
                raise ValueError("fetch needs an integer 'seq'")
            found = self._fetch(seq)
            if found is None:
                return {"ok": False, "error": f"snapshot {seq} is not kept"}
            manifest, data = found
            return {"ok": True, "manifest": manifest, "data": data}
        raise ValueError(f"unknown op {op!r}")
