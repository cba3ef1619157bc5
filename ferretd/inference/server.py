"""``ferret-infer``: serve predictions over ZeroMQ from the newest good ONNX snapshot.

Two threads. The loader (``ferretd.inference.loader``) subscribes to announcements first, then
asks the daemon for the latest manifest (Clone pattern), and loads each newer snapshot: from the
shared snapshot directory when the file is there (confined to it, size-bounded), otherwise
fetched over the daemon's ROUTER; every manifest field is validated and no input can end that
thread. If the daemon does not answer at start, the newest snapshot on disk that loads is
served, so inference keeps working while the trainer restarts. The main thread answers requests
on a ROUTER socket::

    request  [b"", msgpack({"op": "predict", "x": {"dtype", "shape", "data"}})]
    reply    {"ok": true, "label": int, "probabilities": [...], "model_seq": int}
    request  {"op": "info"}  ->  {"ok": true, "model_seq": ..., "swaps": ..., "rejected": ...,
                                  "rejected_by": {reason: count}}
    request  {"op": "status"}  ->  info plus the served snapshot (seq, age, manifest accuracy),
             pinned, and predict latency (mean, p50, p99 over the last 1,000)
    request  {"op": "pin", "seq": N}  /  {"op": "unpin"}   (ipc endpoints only: owner-only file)

``predict`` also takes a batch: ``x`` of shape ``(n, *input_shape)`` answers ``labels`` and
``probabilities`` with one row per sample. ``pin`` serves snapshot N from the snapshot
directory (older: a rollback) and no newer one until ``unpin``, which returns to the newest.

The serving loop survives any request: the array goes through the same strict decoder as
ingest (``transports.codec.decode_array``), and every failure, expected or not, is answered with
``{"ok": false, "error": ...}`` and counted by reason in ``info()["bad_requests"]``. The ROUTER
has ``MAXMSGSIZE``/``RCVHWM`` from ``[inference]``, an owner-only ipc file, and is a CURVE server
on tcp when ``[security]`` has keys (``transports.security``).

Never imports torch (architecture rule 4).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np
import structlog
import zmq

from ferretd.config import Config, ConfigError, load_config
from ferretd.inference.loader import SnapshotLoader
from ferretd.inference.session import ModelSlot, SnapshotRejected
from ferretd.instance import InstanceError, check_runtime_dir
from ferretd.logs import RateLimitedLog, configure_logging, journal_stderr
from ferretd.snapshot.store import SnapshotStore
from transports.arrays import unpack_array
from transports.security import KeyFileError, bind_server, client_curve_from, server_keys_from, start_authenticator
from transports.wire import Rejected, pack, unpack

log = structlog.get_logger("ferret-infer")

EXIT_OK, EXIT_CONFIG = 0, 2


class InferenceServer:
    def __init__(self, config: Config, context: zmq.Context | None = None) -> None:
        self.config = config
        self.context = context or zmq.Context()
        self.slot = ModelSlot(config.inference.intra_op_threads)
        self.stop_event = threading.Event()
        self.requests = 0
        self.failed = 0
        self.bad_requests: Counter[str] = Counter()
        self.bad_input = RateLimitedLog(log)
        self.latencies: deque[float] = deque(maxlen=1000)  # seconds, the last predictions
        self.metrics: Any = None  # ferretd.exposition.InferenceMetrics when [inference] metrics_listen is set
        self._loader = threading.Thread(target=self._load_loop, name="loader", daemon=True)
        try:
            server_keys = server_keys_from(config.security)
            self._client_curve = client_curve_from(config.security)
        except KeyFileError as exc:
            raise ConfigError(f"[security] {exc}") from None
        self._auth = None
        if server_keys is not None and config.inference.endpoint.startswith("tcp://"):
            self._auth = start_authenticator(self.context, config.security.authorized_keys_dir)
        self._router = self.context.socket(zmq.ROUTER)
        bind_server(
            self._router,
            config.inference.endpoint,
            max_message_bytes=config.inference.max_request_bytes,
            rcvhwm=config.inference.rcvhwm,
            curve=server_keys,
        )

    # ------------------------------------------------------------------ loading

    def _load_loop(self) -> None:
        """The loader thread (``ferretd.inference.loader``): validates, confines, falls back, never dies."""
        SnapshotLoader(self.config, self.context, self.slot, self.stop_event, curve=self._client_curve).run()

    def _serving_seq(self) -> int | None:
        current = self.slot.current
        return current.seq if current else None

    # ------------------------------------------------------------------ serving

    def serve_forever(self) -> None:
        if self.config.inference.metrics_listen:  # prometheus_client is imported only then
            from ferretd.exposition import InferenceMetrics

            self.metrics = InferenceMetrics(self.config.inference.metrics_listen, self)
        self._loader.start()
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        log.info("inference_ready", endpoint=self.config.inference.endpoint)
        while not self.stop_event.is_set():
            if not poller.poll(100):
                continue
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                continue
            envelope, payload = frames[:-1], frames[-1]
            try:
                self._router.send_multipart([*envelope, self.reply_bytes(payload)])
            except zmq.ZMQError as exc:  # the peer vanished or sent a bad envelope
                self.bad_input.warning("reply_failed", "inference_reply_failed", error=str(exc))
        self._loader.join(5)
        self._router.close(linger=0)
        if self.metrics is not None:
            self.metrics.close()
        if self._auth is not None:
            self._auth.stop()

    def reply_bytes(self, payload: bytes) -> bytes:
        """The packed answer to one request; never raises (an unpackable reply becomes an error reply)."""
        reply = self.answer(payload)
        try:
            return pack(reply)
        except Exception as exc:
            return pack(self._refuse("unencodable_reply", f"reply could not be encoded: {type(exc).__name__}"))

    def answer(self, payload: bytes) -> dict[str, Any]:
        """One request in, one reply mapping out; any failure is an ``ok: false`` reply, counted."""
        self.requests += 1
        try:
            request = unpack(payload)
            if not isinstance(request, dict):
                raise ValueError("request must be a mapping")
            op = request.get("op")
            if op == "info":
                return self.info()
            if op == "status":
                return self.status()
            if op in ("pin", "unpin"):
                return self._pin(request)
            if op != "predict":
                raise ValueError(f"unknown op {str(op)[:40]!r}")
            started = time.perf_counter()
            reply = self._predict(request)
            elapsed = time.perf_counter() - started
            self.latencies.append(elapsed)
            if self.metrics is not None:
                self.metrics.observe(elapsed)
            return reply
        except Rejected as exc:
            return self._refuse(exc.reason.value, str(exc))
        except ValueError as exc:
            return self._refuse("bad_request", str(exc))
        except Exception as exc:  # onnxruntime or a bug: the loop keeps serving
            return self._refuse("error", f"{type(exc).__name__}: {exc}")

    def _refuse(self, reason: str, error: str) -> dict[str, Any]:
        self.failed += 1
        self.bad_requests[reason] += 1
        error = error[:300]
        self.bad_input.warning(f"bad_request:{reason}", "inference_bad_request", reason=reason, error=error)
        return {"ok": False, "error": error}

    def _predict(self, request: dict[str, Any]) -> dict[str, Any]:
        x = unpack_array(request.get("x"), max_bytes=self.config.inference.max_request_bytes)
        model = self.slot.current  # one read: a concurrent swap cannot split this request
        if model is None:
            self.failed += 1
            return {"ok": False, "error": "no model loaded yet"}
        expected = tuple(model.manifest.input_shape)
        batch = tuple(x.shape[1:]) == expected and x.ndim == len(expected) + 1
        if tuple(x.shape) != expected and not (batch and x.shape[0] >= 1):
            raise ValueError(f"input shape {list(x.shape)}, model expects {list(expected)} or a batch of them")
        with np.errstate(over="ignore", invalid="ignore"):
            x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise ValueError("input contains NaN or Inf")
        if batch:
            rows = model.predict(x)
            return {
                "ok": True,
                "labels": [int(i) for i in np.argmax(rows, axis=1)],
                "probabilities": rows.tolist(),
                "model_seq": model.seq,
            }
        probabilities = model.predict(x[None])[0]
        return {
            "ok": True,
            "label": int(np.argmax(probabilities)),
            "probabilities": probabilities.tolist(),
            "model_seq": model.seq,
        }

    def info(self) -> dict[str, Any]:
        model = self.slot.current
        return {
            "ok": True,
            "model_seq": model.seq if model else None,
            "swaps": self.slot.swaps,
            "rejected": self.slot.rejected,
            "rejected_by": dict(self.slot.rejected_by),
            "last_error": self.slot.last_error,
            "requests": self.requests,
            "failed": self.failed,
            "bad_requests": dict(self.bad_requests),
        }


    def status(self) -> dict[str, Any]:
        """info() plus what an operator asks first: which snapshot, how old, how good, how fast."""
        model = self.slot.current
        reply = self.info()
        manifest = model.manifest if model is not None else None
        reply["snapshot"] = None if manifest is None else {
            "seq": manifest.seq,
            "created_at": manifest.created_at,
            "age_s": round(max(0.0, time.time() - manifest.created_at), 3),
            "online_accuracy": manifest.online_accuracy,
            "updates": manifest.updates,
        }  # fmt: skip
        reply["pinned"] = self.slot.pinned
        lat = sorted(self.latencies)
        reply["latency_s"] = None if not lat else {
            "count": len(lat), "mean": sum(lat) / len(lat),
            "p50": lat[len(lat) // 2], "p99": lat[int(0.99 * (len(lat) - 1))],
        }  # fmt: skip
        return reply

    def _pin(self, request: dict[str, Any]) -> dict[str, Any]:
        if not self.config.inference.endpoint.startswith("ipc://"):
            raise ValueError("pin/unpin are accepted on an ipc endpoint only (owner-only socket)")
        if request.get("op") == "unpin":
            self.slot.unpin()
            self._serve_newest_on_disk()
            log.info("model_unpinned", serving=self._serving())
            return {"ok": True, "pinned": None, "model_seq": self._serving()}
        seq = request.get("seq")
        if type(seq) is not int or seq < 0:
            raise ValueError(f"pin needs a snapshot sequence number, got {str(seq)[:40]!r}")
        store = SnapshotStore(self.config.inference.snapshot_dir, keep=1 << 30, writable=False)
        try:
            manifest, data = store.read(seq)
        except (OSError, ValueError) as exc:
            raise ValueError(f"snapshot {seq} is not available here: {str(exc)[:200]}") from None
        try:
            self.slot.pin(manifest, data)
        except SnapshotRejected as exc:
            raise ValueError(f"snapshot {seq} does not load: {exc}") from None
        log.info("model_pinned", seq=seq)
        return {"ok": True, "pinned": seq, "model_seq": seq}

    def _serving(self) -> int | None:
        model = self.slot.current
        return model.seq if model is not None else None

    def _serve_newest_on_disk(self) -> None:
        """After unpin: serve the newest snapshot on disk now (announcements already seen are not replayed)."""
        directory = self.config.inference.snapshot_dir
        store = SnapshotStore(directory, keep=1 << 30, writable=False)
        for manifest, data in store.valid_newest_first():
            try:
                self.slot.offer(manifest, data)
                return
            except SnapshotRejected:
                continue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ferret-infer", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="TOML config (the daemon's); embedded defaults without it")
    args = parser.parse_args(argv)
    journal_stderr()  # under systemd, the one-line errors below reach the journal as priority err
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"ferret-infer: {exc}\n")
        return EXIT_CONFIG
    configure_logging(config.daemon.log_level, fmt=config.daemon.log_format)
    try:
        check_runtime_dir(config.daemon.runtime_dir)
    except InstanceError as exc:
        sys.stderr.write(f"ferret-infer: {exc}\n")
        return EXIT_CONFIG
    try:
        server = InferenceServer(config)
    except ConfigError as exc:
        sys.stderr.write(f"ferret-infer: {exc}\n")
        return EXIT_CONFIG
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop_event.set())
    server.serve_forever()
    log.info("inference_stopped", requests=server.requests, failed=server.failed)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
