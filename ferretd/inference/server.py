"""``ferret-infer``: serve predictions over ZeroMQ from the newest good ONNX snapshot.

Two threads. The loader subscribes to announcements first, then asks the daemon for the
latest manifest (Clone pattern), and loads each newer snapshot: from the shared snapshot
directory when the file is there, otherwise fetched over the daemon's ROUTER. If the daemon
does not answer at start, the newest valid snapshot on disk is served, so inference keeps
working while the trainer restarts. The main thread answers requests on a ROUTER socket::

    request  [b"", msgpack({"op": "predict", "x": {"dtype", "shape", "data"}})]
    reply    {"ok": true, "label": int, "probabilities": [...], "model_seq": int}
    request  {"op": "info"}  ->  {"ok": true, "model_seq": ..., "swaps": ..., "rejected": ...}

Never imports torch (architecture rule 4).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import zmq

from ferretd.config import Config, ConfigError, load_config
from ferretd.inference.session import ModelSlot
from ferretd.logs import RateLimitedLog, configure_logging
from ferretd.messages import SnapshotManifest
from ferretd.snapshot.store import SnapshotStore
from transports.client import SnapshotSubscriber
from transports.codec import Rejected, pack, unpack, unpack_array

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
        self.bad_input = RateLimitedLog(log)
        self._loader = threading.Thread(target=self._load_loop, name="loader", daemon=True)
        self._router = self.context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.bind(config.inference.endpoint)

    # ------------------------------------------------------------------ loading

    def _load_loop(self) -> None:
        cfg = self.config
        sub = SnapshotSubscriber(cfg.snapshot.announce_endpoint, cfg.snapshot.latest_endpoint, context=self.context)
        try:
            sub.catch_up()
            first = sub.poll(0)
            if first is not None:
                self._install(first, sub)
            elif self.slot.current is None:
                self._load_from_disk()
            next_catch_up = time.monotonic() + 5.0
            while not self.stop_event.is_set():
                manifest = sub.poll(200)
                if manifest is not None:
                    self._install(manifest, sub)
                elif time.monotonic() >= next_catch_up:
                    sub.catch_up()  # announcements sent while the daemon restarted are not replayed
                    next_catch_up = time.monotonic() + 5.0
        finally:
            sub.close()

    def _install(self, raw: dict[str, Any], sub: SnapshotSubscriber) -> None:
        try:
            manifest = SnapshotManifest.from_dict(raw)
        except (TypeError, ValueError) as exc:
            log.warning("snapshot_manifest_invalid", error=str(exc))
            self.slot.rejected += 1
            return
        data = self._read_local(manifest)
        if data is None:
            fetched = sub.fetch(manifest.seq)
            if fetched is None:
                log.warning("snapshot_unavailable", seq=manifest.seq)
                self.slot.rejected += 1
                return
            data = fetched[1]
        try:
            if self.slot.offer(manifest, data):
                log.info("model_swapped", seq=manifest.seq, online_accuracy=manifest.online_accuracy)
        except ValueError as exc:
            log.warning("snapshot_rejected", seq=manifest.seq, error=str(exc), serving=self._serving_seq())

    def _read_local(self, manifest: SnapshotManifest) -> bytes | None:
        path = Path(self.config.inference.snapshot_dir) / manifest.file
        try:
            return path.read_bytes()
        except OSError:
            return None

    def _load_from_disk(self) -> None:
        directory = Path(self.config.inference.snapshot_dir)
        if not directory.is_dir():
            return
        try:
            store = SnapshotStore(directory, keep=1 << 30)
            newest = store.newest_valid()
            if newest is not None:
                manifest, data = store.read(newest.seq)
                self.slot.offer(manifest, data)
                log.info("model_loaded_from_disk", seq=manifest.seq)
        except (OSError, ValueError) as exc:
            log.warning("disk_snapshot_unusable", error=str(exc))

    def _serving_seq(self) -> int | None:
        current = self.slot.current
        return current.seq if current else None

    # ------------------------------------------------------------------ serving

    def serve_forever(self) -> None:
        self._loader.start()
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        log.info("inference_ready", endpoint=self.config.inference.endpoint)
        while not self.stop_event.is_set():
            if not poller.poll(100):
                continue
            frames = self._router.recv_multipart()
            envelope, payload = frames[:-1], frames[-1]
            self._router.send_multipart([*envelope, pack(self.answer(payload))])
        self._loader.join(5)
        self._router.close(linger=0)

    def answer(self, payload: bytes) -> dict[str, Any]:
        self.requests += 1
        try:
            request = unpack(payload)
            if not isinstance(request, dict):
                raise ValueError("request must be a mapping")
            op = request.get("op")
            if op == "info":
                return self.info()
            if op != "predict":
                raise ValueError(f"unknown op {op!r}")
            return self._predict(request)
        except (ValueError, Rejected) as exc:
            self.failed += 1
            self.bad_input.warning("bad_request", "inference_bad_request", error=str(exc))
            return {"ok": False, "error": str(exc)}

    def _predict(self, request: dict[str, Any]) -> dict[str, Any]:
        model = self.slot.current  # one read: a concurrent swap cannot split this request
        if model is None:
            self.failed += 1
            return {"ok": False, "error": "no model loaded yet"}
        x = unpack_array(request.get("x"), max_bytes=self.config.ingest.max_message_bytes).astype(np.float32)
        if tuple(x.shape) != tuple(model.manifest.input_shape):
            raise ValueError(f"input shape {list(x.shape)}, model expects {model.manifest.input_shape}")
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
            "last_error": self.slot.last_error,
            "requests": self.requests,
            "failed": self.failed,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ferret-infer", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="TOML config (the daemon's); embedded defaults without it")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"ferret-infer: {exc}\n")
        return EXIT_CONFIG
    configure_logging(config.daemon.log_level)
    Path(config.daemon.runtime_dir).mkdir(parents=True, exist_ok=True)
    server = InferenceServer(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop_event.set())
    server.serve_forever()
    log.info("inference_stopped", requests=server.requests, failed=server.failed)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
