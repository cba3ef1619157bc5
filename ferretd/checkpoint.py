"""Crash-safe checkpoints of the full learning state, and resuming from the newest valid one.

A checkpoint is two files in ``<state_dir>/checkpoints``: ``ckpt-NNNNNNNN.pt`` (``torch.save``
of the state: weights, optimizer/momentum, compensator and OCL state, plan, counters, online
accuracy, RNG states) and ``ckpt-NNNNNNNN.json`` (sha256, size, updates, time). Each is written
atomically (temp file, fsync, rename, fsync dir) and the JSON last, so a checkpoint exists for
readers only once complete. On start the newest checkpoint whose bytes match its JSON and that
loads is resumed; a damaged one is skipped with one log line naming it and why. The last
``keep`` are kept.

Counters: samples that were waiting in the queue when the checkpoint was taken are gone after a
crash; on resume they are counted as ``dropped.restart`` so ``received = trained + dropped +
invalid + queued`` still holds. The engine is flushed before a checkpoint, so nothing is in
flight inside it.
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path
from typing import Any

import structlog
import torch

from ferretd.fsutil import atomic_write_bytes, remove_stale_temps
from ferretd.snapshot.manifest import sha256_hex

log = structlog.get_logger(__name__)

_META_RE = re.compile(r"^ckpt-(\d{8})\.json$")
CHECKPOINT_VERSION = 1


class CheckpointStore:
    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        remove_stale_temps(self.directory)
        self.saved = 0
        self.last_path: Path | None = None

    def sequences(self) -> list[int]:
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _META_RE.match(p.name)))

    def save(self, state: dict[str, Any]) -> Path:
        seqs = self.sequences()
        seq = seqs[-1] + 1 if seqs else 1
        buffer = io.BytesIO()
        torch.save({"checkpoint_version": CHECKPOINT_VERSION, **state}, buffer)
        data = buffer.getvalue()
        path = self.directory / f"ckpt-{seq:08d}.pt"
        atomic_write_bytes(path, data, mode=0o600)
        meta = {
            "seq": seq,
            "file": path.name,
            "sha256": sha256_hex(data),
            "size_bytes": len(data),
            "created_at": time.time(),
            "updates": state.get("updates"),
        }
        atomic_write_bytes(self.directory / f"ckpt-{seq:08d}.json", json.dumps(meta, indent=2).encode(), mode=0o600)
        for old in self.sequences()[: -self.keep]:
            (self.directory / f"ckpt-{old:08d}.json").unlink(missing_ok=True)
            (self.directory / f"ckpt-{old:08d}.pt").unlink(missing_ok=True)
        self.saved += 1
        self.last_path = path
        return path

    def load(self, seq: int) -> dict[str, Any]:
        """One checkpoint's state; ``ValueError`` when its bytes or contents are not valid."""
        meta_path = self.directory / f"ckpt-{seq:08d}.json"
        try:
            meta = json.loads(meta_path.read_bytes())
            data = (self.directory / meta["file"]).read_bytes()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{meta_path.name}: unreadable ({exc})") from None
        if len(data) != meta.get("size_bytes") or sha256_hex(data) != meta.get("sha256"):
            raise ValueError(f"{meta['file']}: contents do not match {meta_path.name} (size or sha256)")
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        except Exception as exc:  # pickle and zip errors come in many types
            raise ValueError(f"{meta['file']}: cannot be loaded ({type(exc).__name__}: {exc})") from None
        if not isinstance(state, dict) or state.get("checkpoint_version") != CHECKPOINT_VERSION:
            raise ValueError(f"{meta['file']}: not a ferretd checkpoint of version {CHECKPOINT_VERSION}")
        return state

    def newest_valid(self) -> tuple[int, dict[str, Any]] | None:
        for seq in reversed(self.sequences()):
            try:
                return seq, self.load(seq)
            except ValueError as exc:
                log.warning("checkpoint_skipped", seq=seq, reason=str(exc))
        return None


def rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
