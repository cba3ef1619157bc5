"""The snapshots component: when to snapshot, the promotion gate, the exporter, the store, the sockets.

Every ``[snapshot] every_updates`` updates or ``every_seconds`` seconds (if there are new
updates) the loop hands a consistent copy of the weights over (:meth:`periodic`); with the
promotion gate on, the copy is held back and judged on the next arrivals before it is exported.
Explicit snapshots (``ferretctl snapshot``, the final one) bypass the gate (:meth:`publish`).
The exporter thread writes ONNX through the store and the component announces each manifest on
the PUB socket; the ROUTER socket answers "latest" and "fetch".

Checkpoint part: ``snapshot_seq``, the newest snapshot when the checkpoint was written (kept for
the record; the store on disk is the truth, so restore takes nothing back).
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import zmq

from ferretd.config import Config
from ferretd.engine.learner import OnlineLearner
from ferretd.lifecycle import Cadence
from ferretd.promotion import PromotionGate
from ferretd.snapshot.export_worker import SnapshotExporter
from ferretd.snapshot.store import SnapshotStore
from transports.zmq_snapshots import SnapshotService

log = structlog.get_logger("ferretd")

FIRST_EXPORT_GUESS_S = 1.0


class SnapshotComponent:
    def __init__(
        self, config: Config, learner: Callable[[], OnlineLearner], meta: Callable[[], dict[str, Any]]
    ) -> None:
        self._config = config
        self._learner = learner
        self._meta = meta
        self.store = SnapshotStore(Path(config.state_dir) / "snapshots", keep=config.snapshot.keep)
        self.exporter = SnapshotExporter(self.store, config, on_saved=self._announce)
        self.gate = PromotionGate(config.snapshot.gate_window, config.snapshot.gate_tolerance)
        self.cadence = Cadence()
        self.service: SnapshotService | None = None

    def bind(self, context: zmq.Context[Any], curve: Any) -> None:
        cfg = self._config.snapshot
        self.service = SnapshotService(
            context,
            cfg.announce_endpoint,
            cfg.latest_endpoint,
            latest=self._latest_manifest,
            fetch=self._fetch_snapshot,
            max_request_bytes=cfg.max_request_bytes,
            rcvhwm=cfg.rcvhwm,
            curve=curve,
        )

    def start(self) -> None:
        self.exporter.start()
        if self.service is not None:
            self.service.start()

    def stop_exporter(self, timeout: float) -> None:
        self.exporter.stop(timeout=timeout)

    def close_sockets(self) -> None:
        if self.service is not None:
            self.service.stop()

    @property
    def errors(self) -> int:
        return self.service.errors if self.service is not None else 0

    # ------------------------------------------------------------------ loop thread

    def maybe(self) -> None:
        """A periodic snapshot when one is due: exported now, or held by the promotion gate when it is on."""
        cfg, learner = self._config.snapshot, self._learner()
        if self.exporter.busy or not self.cadence.due(learner.updates, cfg.every_updates, cfg.every_seconds):
            return
        if not self.gate.enabled:
            self.now()
            return
        self.cadence.mark(learner.updates)
        released = self.gate.hold(learner.export_module(), self._meta())
        if released is not None:
            self.exporter.submit(released[0], **released[1])

    def now(self) -> concurrent.futures.Future[Any]:
        """Export a consistent copy of the weights now (explicit snapshots bypass the gate and
        become what it compares the next candidate with)."""
        learner = self._learner()
        self.cadence.mark(learner.updates)
        module = learner.export_module()
        if self.gate.enabled:
            self.gate.serving(module)
        return self.exporter.submit(module, **self._meta())

    def observe(self, features: np.ndarray, label: int) -> None:
        """One arrival for a candidate the gate holds back; exported if it is promoted."""
        if self.gate.pending and (released := self.gate.observe(features, label)):
            self.exporter.submit(released[0], **released[1])

    def final(self, until: float) -> None:
        """At shutdown: export the last weights if they are new and the time left (to ``until``) allows it."""
        if self._learner().updates <= self.cadence.last_updates:
            return
        left = until - time.monotonic()
        expected = self.exporter.last_export_s or FIRST_EXPORT_GUESS_S
        if left < expected:
            log.warning("final_snapshot_skipped", seconds_left=round(left, 2), expected_s=round(expected, 2))
            return
        try:
            self.now().result(timeout=left)
        except concurrent.futures.TimeoutError:
            log.warning("final_snapshot_skipped", reason="export did not finish within the shutdown timeout")
        except Exception as exc:
            log.error("final_snapshot_failed", error=f"{type(exc).__name__}: {exc}")

    def _announce(self, manifest: dict[str, Any]) -> None:
        if self.service is not None:
            self.service.announce(manifest)

    def _latest_manifest(self) -> dict[str, Any] | None:
        latest = self.store.latest()
        return latest.to_dict() if latest else None

    def _fetch_snapshot(self, seq: int) -> tuple[dict[str, Any], bytes] | None:
        try:
            manifest, data = self.store.read(seq)
        except (OSError, ValueError):
            return None
        return manifest.to_dict(), data

    def status(self) -> dict[str, Any]:
        latest = self.store.latest()
        return {
            "seq": latest.seq if latest else None,
            "created_at": latest.created_at if latest else None,
            "exported": self.exporter.exported,
            "failed": self.exporter.failed,
            "refused_nonfinite": self.exporter.refused_nonfinite,
            "weights": self._config.snapshot.export,
            "last_export_s": self.exporter.last_export_s,
            "gate": self.gate.status() if self.gate.enabled else None,
        }

    # ------------------------------------------------------------------ component

    def capture(self) -> dict[str, Any]:
        latest = self.store.latest()
        return {"snapshot_seq": latest.seq if latest else None}

    def restore(self, state: dict[str, Any]) -> None:
        """Nothing to take back: the snapshot store on disk is the truth."""

    def reconfigure(self, config: Config) -> None:
        """Cadence (read on every check), ``keep`` and ``opset`` (read at export)."""
        self._config = config
        self.exporter.config = config
        self.store.keep = config.snapshot.keep
