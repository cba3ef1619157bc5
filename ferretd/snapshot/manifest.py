"""Snapshot manifests on disk: JSON next to the model, read and verified by sha256 (stdlib only)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ferretd.fsutil import atomic_write_bytes
from ferretd.messages import SnapshotManifest


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_name(seq: int) -> str:
    return f"model-{seq:08d}.json"


def model_name(seq: int) -> str:
    return f"model-{seq:08d}.onnx"


def write_manifest(directory: Path, manifest: SnapshotManifest) -> Path:
    path = directory / manifest_name(manifest.seq)
    atomic_write_bytes(path, json.dumps(manifest.to_dict(), indent=2, sort_keys=True).encode())
    return path


def read_manifest(path: Path) -> SnapshotManifest:
    """Parse one manifest file; ``ValueError`` for anything unreadable or incomplete."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable manifest {path.name}: {exc}") from None
    return SnapshotManifest.from_dict(data)


def verify_bytes(manifest: SnapshotManifest, data: bytes) -> None:
    """Raise ``ValueError`` unless ``data`` is exactly the model the manifest describes."""
    if len(data) != manifest.size_bytes:
        raise ValueError(f"snapshot {manifest.seq}: {len(data)} bytes, manifest says {manifest.size_bytes}")
    digest = sha256_hex(data)
    if digest != manifest.sha256:
        raise ValueError(f"snapshot {manifest.seq}: sha256 {digest[:12]}... does not match manifest")
