"""The ingest component: the ingest socket, the decoder, the bounded sample queue and its ledger.

The ingest thread (:class:`transports.zmq_ingest.IngestServer`) calls :meth:`handle_frame`,
which decodes and validates a frame and offers it to the :class:`~ferretd.ingest.SampleQueue`;
with ``[ingest] decode_in = "process"`` a child process decodes and validates, and the thread of
:class:`transports.zmq_ingest_process.IngestProcess` hands the results to :meth:`accept_many` and
``_reject``. Every frame ends in exactly one counter. Bad input is logged at most once per 10 s per reason
on its own channel (``bad_input``). The component also samples the ledger for the health
check's recent-drop window (about once a second, loop thread).

Checkpoint part: the ledger. On restore, samples that were waiting or in flight when the
checkpoint was written are counted as dropped (``restart``): they were lost with the process.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
import zmq

from ferretd.config import Config
from ferretd.health import DropWindow
from ferretd.ingest import SampleQueue
from ferretd.logs import RateLimitedLog
from ferretd.messages import DropReason, RejectReason, Sample
from transports.arrays import SampleDecoder
from transports.wire import Rejected
from transports.zmq_ingest import IngestServer
from transports.zmq_ingest_process import DecodeSpec, IngestProcess

log = structlog.get_logger("ferretd")


class IngestComponent:
    def __init__(self, config: Config) -> None:
        cfg = config.ingest
        self._config = config
        self.queue = SampleQueue(cfg.queue_capacity, cfg.overflow, cfg.max_devices)
        """Replaced only by :meth:`reset`, before any thread starts; read it through this attribute."""
        self.decoder = SampleDecoder(config.model.input_shape, config.model.num_classes, cfg.max_message_bytes)
        self.bad_input = RateLimitedLog(log)
        self.drop_window = DropWindow(config.metrics.drop_window_s)
        self._next_drop_observe = 0.0
        self.server: IngestServer | IngestProcess | None = None

    # ------------------------------------------------------------------ ingest thread

    def handle_frame(self, frame: bytes | None, received_at: float) -> None:
        if frame is None:
            self._reject(RejectReason.MALFORMED, "multipart message")
            return
        try:
            sample = self.decoder.decode(frame, received_at)
        except Rejected as exc:
            self._reject(exc.reason, exc.detail)
            return
        self.accept(sample)

    def accept(self, sample: Sample) -> None:
        """Queue a decoded, validated sample (from :meth:`handle_frame`)."""
        if not self.queue.offer(sample):
            self._queue_full()

    def accept_many(self, samples: list[Sample]) -> None:
        """Queue a batch of decoded, validated samples (from the ingest process)."""
        if self.queue.offer_many(samples):
            self._queue_full()

    def _queue_full(self) -> None:
        self.bad_input.warning(
            "queue_full", "sample_dropped", reason=DropReason.QUEUE_FULL.value, policy=self.queue.overflow
        )

    def _reject(self, reason: RejectReason, detail: str) -> None:
        self.queue.reject(reason)
        self.bad_input.warning(f"invalid:{reason.value}", "sample_rejected", reason=reason.value, detail=detail)

    # ------------------------------------------------------------------ loop thread

    def bind(self, context: zmq.Context[Any], curve: Any) -> None:
        cfg = self._config.ingest
        if cfg.decode_in == "process":
            model = self._config.model
            self.server = IngestProcess(
                cfg.endpoint,
                self.accept_many,
                self._reject,
                spec=DecodeSpec(tuple(model.input_shape), model.num_classes, cfg.max_message_bytes),
                rcvhwm=cfg.rcvhwm,
                curve=curve,
                authorized_keys_dir=self._config.security.authorized_keys_dir,
                log_level=self._config.daemon.log_level,
                log_format=self._config.daemon.log_format,
            )
            return
        self.server = IngestServer(
            context,
            cfg.endpoint,
            self.handle_frame,
            max_message_bytes=cfg.max_message_bytes,
            rcvhwm=cfg.rcvhwm,
            curve=curve,
        )

    def start(self) -> None:
        if self.server is not None:
            self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    @property
    def handler_errors(self) -> int:
        return self.server.handler_errors if self.server is not None else 0

    @property
    def restarts(self) -> int:
        """Times the ingest process was lost and started again (0 when decoding on a thread)."""
        return self.server.restarts if isinstance(self.server, IngestProcess) else 0

    def observe_drops(self) -> None:
        """Feed the health check's recent-drop window (about once a second)."""
        now = time.monotonic()
        if now < self._next_drop_observe:
            return
        self._next_drop_observe = now + self.drop_window.every_s
        ledger = self.queue.snapshot()
        accepted = ledger.received - sum(ledger.invalid.values())
        self.drop_window.observe(now, accepted, sum(ledger.dropped.values()))

    # ------------------------------------------------------------------ component

    def capture(self) -> dict[str, Any]:
        ledger = self.queue.snapshot()
        return {
            "ledger": {
                "received": ledger.received,
                "trained": ledger.trained,
                "dropped": ledger.dropped,
                "invalid": ledger.invalid,
                "waiting": ledger.waiting,
                "in_flight": ledger.in_flight,
            }
        }

    def restore(self, state: dict[str, Any]) -> None:
        ledger = state["ledger"]
        dropped = dict(ledger["dropped"])
        lost = self.lost_in_restart(state)
        if lost:
            dropped["restart"] = dropped.get("restart", 0) + lost
        self.queue.restore_counts(ledger["received"], ledger["trained"], dropped, ledger["invalid"])

    @staticmethod
    def lost_in_restart(state: dict[str, Any]) -> int:
        ledger = state["ledger"]
        return int(ledger.get("waiting", 0)) + int(ledger.get("in_flight", 0))

    def reconfigure(self, config: Config) -> None:
        """``[ingest] queue_capacity`` and ``overflow``: a smaller queue drops its oldest."""
        self._config = config
        self.queue.reconfigure(config.ingest.queue_capacity, config.ingest.overflow)

    def reset(self) -> None:
        """A fresh queue (after a resume that failed half-way, before any sample arrived)."""
        cfg = self._config.ingest
        self.queue = SampleQueue(cfg.queue_capacity, cfg.overflow, cfg.max_devices)
