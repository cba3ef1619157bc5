"""The exporter thread: ONNX export and the atomic write happen off the training loop.

The loop hands over a standalone copy of one consistent weight version (``export_module()``)
and goes back to training; this thread exports it, writes model + manifest through the store,
and reports the manifest to ``on_saved`` (the daemon announces it). Only one export is in
flight at a time: ``busy`` tells the loop to skip a periodic snapshot rather than pile them up.

A module whose weights or buffers hold a NaN or infinity is never exported: the job fails with
:class:`NonFiniteWeights`, counted in ``refused_nonfinite`` and logged at most once per 10 s
(the divergence guard should make this unreachable; this is the last line of defence).
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
import torch
from torch import nn

from ferretd.config import Config
from ferretd.logs import RateLimitedLog, RoutineLog
from ferretd.snapshot.store import SnapshotStore
from ferretd.snapshot.to_onnx import INPUT_NAME, OUTPUT_NAMES, export_onnx

log = structlog.get_logger(__name__)


class NonFiniteWeights(ValueError):
    """The module handed over for export holds a NaN or infinity."""


def non_finite_tensors(module: nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``module`` that hold a NaN or infinity."""
    named = [*module.named_parameters(), *module.named_buffers()]
    return [n for n, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]


class SnapshotExporter:
    def __init__(self, store: SnapshotStore, config: Config, on_saved: Callable[[dict[str, Any]], None]) -> None:
        self.store = store
        self.config = config
        self.on_saved = on_saved
        self._jobs: queue.Queue[tuple[nn.Module, dict[str, Any], concurrent.futures.Future[Any]] | None] = queue.Queue()
        self._busy = threading.Event()
        self._thread = threading.Thread(target=self._run, name="exporter", daemon=True)
        self.exported = 0
        self.failed = 0
        self.refused_nonfinite = 0
        self._refused_log = RateLimitedLog(log)
        self._routine_log = RoutineLog(log)  # one info line per 5 min, the rest at debug
        self.last_failed = False
        self.last_export_s: float | None = None

    @property
    def busy(self) -> bool:
        return self._busy.is_set()

    def start(self) -> None:
        self._thread.start()

    def submit(self, module: nn.Module, **meta: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._busy.set()
        self._jobs.put((module, meta, future))
        return future

    def stop(self, timeout: float = 30.0) -> None:
        self._jobs.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            module, meta, future = job
            try:
                future.set_result(self._export(module, meta))
            except NonFiniteWeights as exc:
                self.refused_nonfinite += 1
                self._refused_log.warning("snapshot_refused", "snapshot_refused", reason="non_finite", detail=str(exc))
                future.set_exception(exc)
            except Exception as exc:
                self.failed += 1
                self.last_failed = True
                log.exception("snapshot_export_failed")
                future.set_exception(exc)
            finally:
                if self._jobs.empty():
                    self._busy.clear()

    def _export(self, module: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        started = time.perf_counter()
        bad = non_finite_tensors(module)
        if bad:
            raise NonFiniteWeights(f"non-finite weights in {', '.join(bad[:5])}")
        data = export_onnx(module, cfg.model.input_shape, cfg.snapshot.opset)
        manifest = self.store.save(
            data,
            created_at=time.time(),
            opset=cfg.snapshot.opset,
            input_name=INPUT_NAME,
            input_shape=list(cfg.model.input_shape),
            input_dtype="float32",
            output_names=list(OUTPUT_NAMES),
            classes=cfg.model.num_classes,
            updates=int(meta.get("updates", 0)),
            samples_trained=int(meta.get("samples_trained", 0)),
            online_accuracy=meta.get("online_accuracy"),
            model=cfg.model.name,
        )
        self.exported += 1
        self.last_failed = False
        self.last_export_s = time.perf_counter() - started
        as_dict = manifest.to_dict()
        export_s = round(self.last_export_s, 3)
        self._routine_log.info("snapshot_saved", seq=manifest.seq, updates=manifest.updates, export_s=export_s)
        self.on_saved(as_dict)
        return as_dict
