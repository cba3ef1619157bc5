"""The on-disk snapshot store: numbered ONNX models with manifests, the last ``keep`` retained.

Write order makes a snapshot visible only when complete: the model is written atomically
first, then its manifest (also atomically); readers only ever look for manifests. Pruning
removes the manifest before the model. Sequence numbers continue from the highest manifest on
disk, so they never go backwards across restarts and subscribers can ignore old ones.
Stdlib only; the ONNX bytes come from ``snapshot.export``.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from ferretd.fsutil import atomic_write_bytes, remove_stale_temps
from ferretd.messages import SnapshotManifest
from ferretd.snapshot.manifest import (
    manifest_name,
    model_name,
    read_manifest,
    sha256_hex,
    verify_bytes,
    write_manifest,
)

_MANIFEST_RE = re.compile(r"^model-(\d{8})\.json$")


class SnapshotStore:
    def __init__(self, directory: str | Path, keep: int = 5) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._lock = threading.Lock()
        remove_stale_temps(self.directory)
        self._latest: SnapshotManifest | None = self.newest_valid()

    def sequences(self) -> list[int]:
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _MANIFEST_RE.match(p.name)))

    @property
    def next_seq(self) -> int:
        seqs = self.sequences()
        return (seqs[-1] + 1) if seqs else 1

    def latest(self) -> SnapshotManifest | None:
        with self._lock:
            return self._latest

    def save(self, model_bytes: bytes, **fields: object) -> SnapshotManifest:
        """Write a new snapshot; ``fields`` fill the manifest beyond seq/file/sha256/size."""
        with self._lock:
            seq = self.next_seq
            atomic_write_bytes(self.directory / model_name(seq), model_bytes)
            manifest = SnapshotManifest(
                seq=seq,
                file=model_name(seq),
                sha256=sha256_hex(model_bytes),
                size_bytes=len(model_bytes),
                **fields,  # type: ignore[arg-type]
            )
            write_manifest(self.directory, manifest)
            self._latest = manifest
            self._prune()
            return manifest

    def _prune(self) -> None:
        for seq in self.sequences()[: -self.keep]:
            (self.directory / manifest_name(seq)).unlink(missing_ok=True)
            (self.directory / model_name(seq)).unlink(missing_ok=True)

    def read(self, seq: int) -> tuple[SnapshotManifest, bytes]:
        """Manifest and verified model bytes; ``ValueError``/``FileNotFoundError`` otherwise."""
        manifest = read_manifest(self.directory / manifest_name(seq))
        data = (self.directory / manifest.file).read_bytes()
        verify_bytes(manifest, data)
        return manifest, data

    def newest_valid(self) -> SnapshotManifest | None:
        """The newest snapshot whose model matches its manifest (skips damaged ones)."""
        for seq in reversed(self.sequences()):
            try:
                manifest, _ = self.read(seq)
            except (OSError, ValueError):
                continue
            return manifest
        return None
