"""Client libraries for the people around the daemon.

* :class:`SamplePublisher` for device code: ``pub.publish(features, label)``.
* :class:`SnapshotSubscriber` for any process that wants the model snapshots.
* :class:`InferenceClient` for applications asking ``ferret-infer`` for predictions.

All three speak plain ZeroMQ + msgpack (``transports.wire``; arrays through
``transports.arrays``) and need neither torch, structlog nor the daemon's code, so they can be
vendored onto a device (the ``client`` extra: pyzmq, msgpack, numpy). Each takes an optional ``curve``
(:class:`transports.security.ClientCurve`: the client's key pair and the server's public key)
for tcp endpoints whose server requires CURVE authentication.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import zmq

from ferretd.messages import MANIFEST_LIMITS
from transports.arrays import ArrayLike, Float32Array, as_float32, encode_sample, pack_array
from transports.security import ClientCurve, apply_client_curve
from transports.wire import SNAPSHOT_TOPIC, pack, unpack

MAX_ANNOUNCE_BYTES = 1 << 20
"""Largest announcement a subscriber accepts (a manifest is a few hundred bytes)."""
MAX_REPLY_BYTES = MANIFEST_LIMITS["max_size_bytes"] + (1 << 20)
"""Largest "latest"/"fetch" reply: the biggest snapshot a manifest may declare, plus its manifest."""


class SamplePublisher:
    """PUSHes labeled samples to ferretd. Sequence numbers count up per publisher.

    ``publish`` returns True when the sample was queued on a live connection to a daemon
    (ZeroMQ then delivers it in the background; there is no per-sample acknowledgement: the
    daemon's counters are the receipt). It returns False when no daemon was connected within
    ``send_timeout_ms`` (nothing listens on the endpoint, over tcp or ipc alike) or the send
    buffer stayed full that long: that sample was not sent. The socket uses ZMQ_IMMEDIATE, so
    nothing is buffered for a daemon that is not there; the first ``publish`` after start waits
    for the connection. The sequence number is consumed either way, so the daemon sees the
    loss as a sequence gap. ``sent`` and ``unsent`` count the two outcomes.
    """

    def __init__(
        self,
        endpoint: str,
        device: str,
        *,
        send_timeout_ms: int = 1000,
        sndhwm: int = 10_000,
        start_seq: int = 0,
        context: zmq.SyncContext | None = None,
        curve: ClientCurve | None = None,
    ) -> None:
        self.device = device
        self._own_context = context is None
        self._context: zmq.SyncContext = context or zmq.Context()
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, sndhwm)
        self._socket.setsockopt(zmq.SNDTIMEO, send_timeout_ms)
        self._socket.setsockopt(zmq.LINGER, 2000)
        self._socket.setsockopt(zmq.IMMEDIATE, 1)  # no peer, no queueing: publish() says False
        apply_client_curve(self._socket, curve, endpoint)
        self._socket.connect(endpoint)
        self._seq = itertools.count(start_seq)
        self.sent = 0
        self.unsent = 0

    def publish(self, features: ArrayLike, label: int, timestamp: float | None = None) -> bool:
        """True: queued on a live connection to the daemon; False: not sent (see the class doc)."""
        frame = encode_sample(self.device, next(self._seq), features, label, timestamp)
        return self.send_raw(frame)

    def send_raw(self, frame: bytes | list[bytes]) -> bool:
        """Send an already encoded frame (or a multipart list) as is; tools and tests use it."""
        try:
            if isinstance(frame, list):
                self._socket.send_multipart(frame)
            else:
                self._socket.send(frame)
        except zmq.Again:
            self.unsent += 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        self._socket.close()
        if self._own_context:
            self._context.term()

    def __enter__(self) -> SamplePublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SnapshotSubscriber:
    """Subscribes to announcements first, then asks for the latest manifest (Clone pattern).

    The request for the latest manifest is sent on construction without waiting: its answer
    comes out of ``poll`` like an announcement, so a late joiner gets the current snapshot from
    its first ``poll(timeout_ms)`` (and, if the daemon is not up yet, as soon as it is).
    ``poll`` returns the next manifest newer than any seen, or None; ``catch_up()`` asks again
    (announcements sent while the daemon restarted are not replayed). ``fetch(seq)`` downloads
    a snapshot's ONNX bytes (for processes that cannot read the daemon's state directory).
    Use it as a context manager, or call ``close()``::

        with SnapshotSubscriber(announce, latest) as sub:
            manifest = sub.poll(2000)
    """

    def __init__(
        self,
        announce_endpoint: str,
        latest_endpoint: str,
        *,
        request_timeout_ms: int = 2000,
        context: zmq.SyncContext | None = None,
        curve: ClientCurve | None = None,
        max_announce_bytes: int = MAX_ANNOUNCE_BYTES,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        self._own_context = context is None
        self._context: zmq.SyncContext = context or zmq.Context()
        self._max_reply_bytes = max_reply_bytes
        self._sub = self._context.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.MAXMSGSIZE, max_announce_bytes)  # a rogue publisher cannot flood memory
        self._sub.setsockopt(zmq.SUBSCRIBE, SNAPSHOT_TOPIC)
        self._curve = curve
        apply_client_curve(self._sub, curve, announce_endpoint)
        self._sub.connect(announce_endpoint)
        self._latest_endpoint = latest_endpoint
        self._timeout_ms = request_timeout_ms
        self._req = self._new_dealer()
        self.last_seq = -1
        self._pending: list[dict[str, Any]] = []
        self._latest_pending = False  # an unanswered "latest" request is out on the DEALER
        self._ask_latest()

    def _ask_latest(self) -> None:
        self._req.send_multipart([b"", pack({"op": "latest"})])
        self._latest_pending = True

    def _new_dealer(self) -> zmq.SyncSocket:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self._max_reply_bytes)
        apply_client_curve(sock, self._curve, self._latest_endpoint)
        sock.connect(self._latest_endpoint)
        return sock

    def _request(self, request: dict[str, Any]) -> dict[str, Any] | None:
        resend_latest = self._latest_pending and request.get("op") != "latest"
        if self._latest_pending:  # a blocking request supersedes the one poll() was waiting for
            self._reset_dealer()
        try:
            return self._blocking(request)
        finally:
            if resend_latest:
                self._ask_latest()

    def _reset_dealer(self) -> None:
        self._req.close(linger=0)
        self._req = self._new_dealer()
        self._latest_pending = False

    def _blocking(self, request: dict[str, Any]) -> dict[str, Any] | None:
        self._req.send_multipart([b"", pack(request)])
        if not self._req.poll(self._timeout_ms, zmq.POLLIN):
            # Reset the DEALER so a late reply cannot be mistaken for the next request's answer.
            self._reset_dealer()
            return None
        try:
            reply = unpack(self._req.recv_multipart()[-1])
        except ValueError:
            return None
        return reply if isinstance(reply, dict) else None

    def request_latest(self) -> dict[str, Any] | None:
        """The daemon's current manifest, or None (no snapshot yet, or no answer in time)."""
        reply = self._request({"op": "latest"})
        if reply and reply.get("ok"):
            manifest: dict[str, Any] = reply["manifest"]
            return manifest
        return None

    def fetch(self, seq: int) -> tuple[dict[str, Any], bytes] | None:
        reply = self._request({"op": "fetch", "seq": int(seq)})
        if reply and reply.get("ok"):
            return reply["manifest"], reply["data"]
        return None

    def poll(self, timeout_ms: int = 0) -> dict[str, Any] | None:
        """Next manifest newer than ``last_seq`` (announced, or found by ``catch_up``)."""
        while self._pending:
            manifest = self._pending.pop(0)
            if self._accept(manifest):
                return manifest
        poller = zmq.Poller()
        poller.register(self._sub, zmq.POLLIN)
        if self._latest_pending:
            poller.register(self._req, zmq.POLLIN)
        while ready := dict(poller.poll(timeout_ms)):
            timeout_ms = 0
            if self._req in ready:
                self._latest_pending = False
                poller.unregister(self._req)
                reply = self._read(self._req)
                latest = reply.get("manifest") if isinstance(reply, dict) and reply.get("ok") else None
                if isinstance(latest, dict) and self._accept(latest):
                    return latest
            if self._sub in ready:
                announced = self._read(self._sub)
                if isinstance(announced, dict) and self._accept(announced):
                    return announced
        return None

    @staticmethod
    def _read(sock: zmq.SyncSocket) -> Any:
        """The last frame of one message, decoded; None for garbage (anything may arrive)."""
        try:
            return unpack(sock.recv_multipart(zmq.NOBLOCK)[-1])
        except (ValueError, zmq.Again):
            return None

    def catch_up(self) -> None:
        """Ask for the latest manifest; queue it for ``poll`` if it is newer than what we have."""
        latest = self.request_latest()
        if latest is not None:
            self._pending.append(latest)

    def _accept(self, manifest: dict[str, Any]) -> bool:
        seq = manifest.get("seq")
        if type(seq) is not int or seq <= self.last_seq:
            return False
        self.last_seq = seq
        return True

    def close(self) -> None:
        self._sub.close(linger=0)
        self._req.close(linger=0)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> SnapshotSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Prediction:
    label: int
    probabilities: Float32Array
    model_seq: int


class InferenceError(RuntimeError):
    """ferret-infer answered with an error (no model yet, bad input...)."""


class InferenceClient:
    """Asks ``ferret-infer`` for predictions over a DEALER socket."""

    def __init__(
        self,
        endpoint: str,
        timeout_ms: int = 2000,
        context: zmq.SyncContext | None = None,
        *,
        curve: ClientCurve | None = None,
    ) -> None:
        self._curve = curve
        self._own_context = context is None
        self._context: zmq.SyncContext = context or zmq.Context()
        self._endpoint = endpoint
        self._timeout_ms = timeout_ms
        self._socket = self._connect()

    def _connect(self) -> zmq.SyncSocket:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        apply_client_curve(sock, self._curve, self._endpoint)
        sock.connect(self._endpoint)
        return sock

    def predict(self, x: ArrayLike) -> Prediction:
        """One sample in, its label, class probabilities and the serving model's sequence out."""
        self._socket.send_multipart([b"", pack({"op": "predict", "x": pack_array(as_float32(x))})])
        if not self._socket.poll(self._timeout_ms, zmq.POLLIN):
            self._socket.close(linger=0)
            self._socket = self._connect()
            raise TimeoutError(f"no prediction from {self._endpoint} within {self._timeout_ms} ms")
        reply = unpack(self._socket.recv_multipart()[-1])
        if not reply.get("ok"):
            raise InferenceError(reply.get("error", "unknown error"))
        return Prediction(
            label=int(reply["label"]),
            probabilities=as_float32(reply["probabilities"]),
            model_seq=int(reply["model_seq"]),
        )

    def info(self) -> dict[str, Any]:
        self._socket.send_multipart([b"", pack({"op": "info"})])
        if not self._socket.poll(self._timeout_ms, zmq.POLLIN):
            self._socket.close(linger=0)
            self._socket = self._connect()
            raise TimeoutError(f"no answer from {self._endpoint} within {self._timeout_ms} ms")
        reply: dict[str, Any] = unpack(self._socket.recv_multipart()[-1])
        return reply

    def predict_batch(self, xs: ArrayLike) -> list[Prediction]:
        """Many samples (``(n, *input_shape)``) in one request; one :class:`Prediction` each."""
        reply = self._call({"op": "predict", "x": pack_array(as_float32(xs))})
        seq = int(reply["model_seq"])
        return [
            Prediction(label=int(label), probabilities=as_float32(p), model_seq=seq)
            for label, p in zip(reply["labels"], reply["probabilities"], strict=True)
        ]

    def status(self) -> dict[str, Any]:
        """Served snapshot (seq, age, manifest accuracy), pinned, counts and predict latency."""
        return self._call({"op": "status"})

    def pin(self, seq: int) -> dict[str, Any]:
        """Serve snapshot ``seq`` (an older one: a rollback) and no other until :meth:`unpin`."""
        return self._call({"op": "pin", "seq": int(seq)})

    def unpin(self) -> dict[str, Any]:
        return self._call({"op": "unpin"})

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        self._socket.send_multipart([b"", pack(request)])
        if not self._socket.poll(self._timeout_ms, zmq.POLLIN):
            self._socket.close(linger=0)
            self._socket = self._connect()
            raise TimeoutError(f"no answer from {self._endpoint} within {self._timeout_ms} ms")
        reply = unpack(self._socket.recv_multipart()[-1])
        if not isinstance(reply, dict) or not reply.get("ok"):
            raise InferenceError(reply.get("error", "unknown error") if isinstance(reply, dict) else "bad reply")
        return reply

    def close(self) -> None:
        self._socket.close(linger=0)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
