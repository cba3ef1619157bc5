"""The on-disk snapshot store: numbered ONNX models with manifests, the last ``keep`` retained.

Write order makes a snapshot visible only when complete: the model is written atomically
first, then its manifest (also atomically); readers only ever look for manifests. Pruning
removes the manifest before the model. Sequence numbers continue from the highest manifest on
disk, so they never go backwards across restarts and subscribers can ignore old ones.
Stdlib only; the ONNX bytes come from ``snapshot.to_onnx``.

Readers (ferret-infer) open the store with ``writable=False``: nothing is created or removed,
so a read-only state directory with a stale temp file in it still serves. :meth:`read` goes
through :func:`read_confined` (plain names, no symlinks, exact size, bounded read), and any
manifest that does not validate is skipped like a damaged one, never raised past the store.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from ferretd.fsutil import atomic_write_bytes, remove_stale_temps
from ferretd.messages import SnapshotManifest
from ferretd.snapshot.manifest import (
    manifest_name,
    model_name,
    read_confined,
    read_manifest,
    sha256_hex,
    verify_bytes,
    write_manifest,
)

_MANIFEST_RE = re.compile(r"^model-(\d{8})\.json$")


class SnapshotStore:
    def __init__(self, directory: str | Path, keep: int = 5, writable: bool = True) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self._lock = threading.Lock()
        if writable:
            self.directory.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # a read-only directory: the temp files stay, harmless
                remove_stale_temps(self.directory)
        self._latest: SnapshotManifest | None = self.newest_valid()

    def sequences(self) -> list[int]:
        try:
            names = [p.name for p in self.directory.iterdir()]
        except OSError:
            return []
        return sorted(int(m.group(1)) for name in names if (m := _MANIFEST_RE.match(name)))

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
        """Manifest and verified model bytes; ``ValueError``/``OSError`` otherwise."""
        manifest = read_manifest(self.directory / manifest_name(seq))
        if manifest.seq != seq or manifest.file != model_name(seq):
            raise ValueError(f"snapshot {seq}: its manifest names another sequence or file")
        try:
            data = read_confined(self.directory, manifest.file, manifest.size_bytes)
        except ValueError as exc:
            raise ValueError(f"snapshot {seq}: model file {exc}") from None
        verify_bytes(manifest, data)
        return manifest, data

    def valid_newest_first(self) -> Iterator[tuple[SnapshotManifest, bytes]]:
        """Every snapshot whose model matches its manifest, newest first (damaged ones skipped)."""
        for seq in reversed(self.sequences()):
            try:
                yield self.read(seq)
            except (OSError, ValueError):
                continue

    def newest_valid(self) -> SnapshotManifest | None:
        """The newest snapshot whose model matches its manifest (skips damaged ones)."""
        for manifest, _ in self.valid_newest_first():
            return manifest
        return None
