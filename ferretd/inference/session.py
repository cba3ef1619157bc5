"""One loaded model and the slot that swaps it: verify -> load -> warm up -> swap, keep last good.

A candidate snapshot is built completely off the serving thread: its bytes are checked against
the manifest's sha256 and size, an onnxruntime session is created, and a warm-up batch must
produce finite probabilities of the advertised class count. Only then does the slot's single
reference change, which a serving thread reads once per request, so a swap never fails or
blocks a request. A bad snapshot leaves the current model in place and is counted by reason
(:class:`SnapshotRejected`): ``checksum`` (bytes differ from the manifest), ``unloadable``
(onnxruntime refuses them) and ``warmup`` (wrong output) here; the loader adds its own.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from ferretd.messages import SnapshotManifest
from ferretd.snapshot.manifest import verify_bytes


@dataclass(frozen=True)
class LoadedModel:
    manifest: SnapshotManifest
    session: ort.InferenceSession
    loaded_at: float

    @property
    def seq(self) -> int:
        return self.manifest.seq

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for a batch ``(n, *input_shape)`` of float32 features."""
        (probabilities,) = self.session.run(["probabilities"], {self.manifest.input_name: x})
        return probabilities


class SnapshotRejected(ValueError):
    """A snapshot that will not be served; ``reason`` is its counter's name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _short(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def build_model(manifest: SnapshotManifest, data: bytes, intra_op_threads: int = 1) -> LoadedModel:
    """Verify and load a snapshot; :class:`SnapshotRejected` (a ``ValueError``) if anything is wrong."""
    try:
        verify_bytes(manifest, data)
    except ValueError as exc:
        raise SnapshotRejected("checksum", str(exc)) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise SnapshotRejected(
            "unloadable", f"snapshot {manifest.seq}: onnxruntime cannot load it: {_short(exc)}"
        ) from None
    model = LoadedModel(manifest=manifest, session=session, loaded_at=time.time())
    try:
        warm = np.zeros((2, *manifest.input_shape), dtype=np.float32)
        probabilities = model.predict(warm)
    except Exception as exc:
        raise SnapshotRejected("warmup", f"snapshot {manifest.seq}: warm-up failed: {_short(exc)}") from None
    if probabilities.shape == (2, manifest.classes) and not np.isfinite(probabilities).all():
        raise SnapshotRejected("warmup", f"snapshot {manifest.seq}: warm-up gave non-finite output (NaN or inf)")
    if probabilities.shape != (2, manifest.classes):
        raise SnapshotRejected(
            "warmup", f"snapshot {manifest.seq}: warm-up gave {probabilities.shape}, expected (2, {manifest.classes})"
        )
    return model


class ModelSlot:
    """Holds the serving model; ``offer`` loads a candidate and swaps it in if it is good."""

    def __init__(self, intra_op_threads: int = 1) -> None:
        self.intra_op_threads = intra_op_threads
        self.current: LoadedModel | None = None
        self.swaps = 0
        self.rejected = 0
        self.rejected_by: Counter[str] = Counter()
        self.last_error: str | None = None
        self.pinned: int | None = None  # set by pin(): newer snapshots are not swapped in
        self._lock = threading.Lock()  # serialises loaders, never taken by readers

    def offer(self, manifest: SnapshotManifest, data: bytes) -> bool:
        with self._lock:
            current = self.current
            if self.pinned is not None or (current is not None and manifest.seq <= current.seq):
                return False
            try:
                candidate = build_model(manifest, data, self.intra_op_threads)
            except SnapshotRejected as exc:
                self.reject(exc.reason, str(exc))
                raise
            self.current = candidate
            self.swaps += 1
            return True

    def pin(self, manifest: SnapshotManifest, data: bytes) -> None:
        """Serve this snapshot (older or newer than the current one: a rollback or a pin) and no
        other until ``unpin``; verified like any offer (``SnapshotRejected`` when it is bad)."""
        with self._lock:
            try:
                candidate = build_model(manifest, data, self.intra_op_threads)
            except SnapshotRejected as exc:
                self.reject(exc.reason, str(exc))
                raise
            self.current = candidate
            self.pinned = manifest.seq
            self.swaps += 1

    def unpin(self) -> None:
        with self._lock:
            self.pinned = None

    def reject(self, reason: str, error: str) -> None:
        """Count a snapshot that was refused before or while loading."""
        self.rejected += 1
        self.rejected_by[reason] += 1
        self.last_error = error
