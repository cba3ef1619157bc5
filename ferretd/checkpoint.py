"""Crash-safe checkpoints of the full learning state, and resuming from the newest valid one.

A checkpoint is two files in ``<state_dir>/checkpoints``: ``ckpt-NNNNNNNN.pt`` (``torch.save``
of the state: weights, optimizer/momentum, compensator and OCL state, plan, counters, online
accuracy, RNG states) and ``ckpt-NNNNNNNN.json`` (sha256, size, updates, time). Each is written
atomically (temp file, fsync, rename, fsync dir) and the JSON last, so a checkpoint exists for
readers only once complete. On start the newest checkpoint whose bytes match its JSON and that
loads is resumed; a damaged one is skipped with one log line naming it and why. The last
``keep`` are kept.

Loading never runs code from the file: ``torch.load(weights_only=True)`` accepts only tensors and
plain containers (dict, list, tuple, str, numbers), so every non-tensor part of the state is kept
plain: numpy arrays anywhere in the state are stored as ``{"__ndarray__": tensor, "dtype": name}``
and turned back into arrays on load, numpy scalars become Python numbers. A
file whose pickle names any other global is refused like a damaged one. A checkpoint that loads
but does not fit the configured model (another ``[model] hidden``...) is set aside by
:meth:`CheckpointStore.set_aside` (renamed to ``*.incompatible``) so it is never tried again.

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
MAX_CHECKPOINT_BYTES = 16 << 30  # a size in a JSON file is never trusted past this
CHECKPOINT_VERSION = 2  # 2: weights_only-loadable (plain RNG state)


class CheckpointStore:
    def __init__(self, directory: str | Path, keep: int = 3, writable: bool = True) -> None:
        """``writable=False`` (``--check-config``) reads only: no directory created, no temp cleaned."""
        self.directory = Path(directory)
        if writable:
            self.directory.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.directory)
        self.keep = keep
        self.saved = 0
        self.last_path: Path | None = None

    def sequences(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _META_RE.match(p.name)))

    def save(self, state: dict[str, Any]) -> Path:
        seqs = self.sequences()
        seq = seqs[-1] + 1 if seqs else 1
        buffer = io.BytesIO()
        torch.save(_encode({"checkpoint_version": CHECKPOINT_VERSION, **state}), buffer)
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
            if not isinstance(meta, dict) or meta.get("file") != f"ckpt-{seq:08d}.pt":
                raise ValueError("'file' is not this checkpoint's own file name")
            size = meta.get("size_bytes")
            if type(size) is not int or not 0 < size <= MAX_CHECKPOINT_BYTES:
                raise ValueError(f"size_bytes {size!r} out of range")
            with open(self.directory / meta["file"], "rb") as fh:
                data = fh.read(size + 1)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{meta_path.name}: unreadable ({exc})") from None
        if len(data) != meta.get("size_bytes") or sha256_hex(data) != meta.get("sha256"):
            raise ValueError(f"{meta['file']}: contents do not match {meta_path.name} (size or sha256)")
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle and zip errors come in many types
            first = (str(exc).strip().splitlines() or [""])[-1][:200]
            raise ValueError(f"{meta['file']}: cannot be loaded safely ({type(exc).__name__}: {first})") from None
        if not isinstance(state, dict) or state.get("checkpoint_version") != CHECKPOINT_VERSION:
            raise ValueError(f"{meta['file']}: not a ferretd checkpoint of version {CHECKPOINT_VERSION}")
        try:
            return _decode(state)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{meta['file']}: malformed array entry ({exc})") from None

    def newest_valid(self, skipped: list[str] | None = None) -> tuple[int, dict[str, Any]] | None:
        """The newest checkpoint that loads; each one skipped is logged and appended to ``skipped``."""
        for seq in reversed(self.sequences()):
            try:
                return seq, self.load(seq)
            except ValueError as exc:
                log.warning("checkpoint_skipped", seq=seq, reason=str(exc))
                if skipped is not None:
                    skipped.append(str(exc))
        return None

    def set_aside(self, seq: int, reason: str) -> None:
        """Rename one checkpoint to ``*.incompatible`` (kept for the operator, never loaded again)."""
        for suffix in (".json", ".pt"):
            path = self.directory / f"ckpt-{seq:08d}{suffix}"
            try:
                path.rename(path.with_name(path.name + ".incompatible"))
            except FileNotFoundError:
                continue
            except OSError as exc:  # read-only directory: at least do not crash
                log.warning("checkpoint_set_aside_failed", seq=seq, error=str(exc))
        log.warning("checkpoint_set_aside", seq=seq, reason=reason, renamed_to=f"ckpt-{seq:08d}.*.incompatible")


_NDARRAY_KEY = "__ndarray__"


def _encode(value: Any) -> Any:
    """Numpy arrays -> tagged tensors, numpy scalars -> Python numbers (weights_only-loadable)."""
    import numpy as np

    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_encode(v) for v in value)
    if isinstance(value, np.ndarray):
        return {_NDARRAY_KEY: torch.from_numpy(np.ascontiguousarray(value).copy()), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(value: Any) -> Any:
    import numpy as np

    if isinstance(value, dict):
        if _NDARRAY_KEY in value:
            tensor, dtype = value[_NDARRAY_KEY], value.get("dtype")
            if not isinstance(tensor, torch.Tensor) or dtype not in _PLAIN_DTYPES:
                raise ValueError("array entry is not a tensor of a plain numeric dtype")
            return tensor.numpy().astype(np.dtype(dtype), copy=False)
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_decode(v) for v in value)
    return value


_PLAIN_DTYPES = frozenset(f"{order}{kind}{size}" for order in "<>|" for kind in "fiub" for size in (1, 2, 4, 8))


def model_fit_error(saved: object, model: torch.nn.Module) -> str | None:
    """Why the weights ``saved`` (a module state dict) do not fit ``model``; ``None`` if they do."""
    if not isinstance(saved, dict):
        return "the checkpoint holds no model weights"
    expected = model.state_dict()
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    if missing or extra:
        return f"parameters differ from the configured model (missing {missing[:3]}, unexpected {extra[:3]})"
    for name, tensor in expected.items():
        value = saved[name]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(tensor.shape):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            return f"{name} has shape {shape}, the configured model needs {tuple(tensor.shape)}"
    return None


def rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {
        "name": str(name),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
