"""Snapshot manifests on disk: JSON next to the model, read and verified by sha256 (stdlib only).

Reads are confined and bounded: a model file is opened only by a plain name inside the given
directory, never through a symlink, only if it is a regular file whose size is exactly the
manifest's, and no more than that many bytes are read. Error texts name the snapshot, never
the size or kind of what was found, so a hostile manifest learns nothing about other files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from pathlib import Path

from ferretd.fsutil import atomic_write_bytes
from ferretd.messages import MANIFEST_LIMITS, SnapshotManifest, is_plain_file_name

MAX_MANIFEST_BYTES = 1 << 20


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
        data = json.loads(read_confined(path.parent, path.name, MAX_MANIFEST_BYTES, exact=False))
    except (OSError, ValueError, RecursionError) as exc:
        raise ValueError(f"unreadable manifest {path.name}: {_reason(exc)}") from None
    return SnapshotManifest.from_dict(data)


def read_confined(directory: Path, name: str, size: int, exact: bool = True) -> bytes:
    """The bytes of regular file ``directory/name``: exactly ``size`` (or at most, ``exact=False``).

    ``ValueError`` for a name that is not plain, a symlink or non-regular file, or a size that
    does not match; ``OSError`` (e.g. ``FileNotFoundError``) when it cannot be opened.
    """
    if not is_plain_file_name(name):
        raise ValueError("not a plain file name")
    if not 0 < size <= max(MANIFEST_LIMITS["max_size_bytes"], MAX_MANIFEST_BYTES):
        raise ValueError("size out of range")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(Path(directory) / name, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink: never followed, wherever it points
            raise ValueError("not a regular file") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if (info.st_size != size) if exact else (info.st_size > size):
            raise ValueError("size differs from the manifest")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(size + 1)
    finally:
        os.close(fd)
    if len(data) > size or (exact and len(data) != size):
        raise ValueError("size differs from the manifest")
    return data


def _reason(exc: BaseException) -> str:
    """A short reason that names no path and no size."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)[:200]


def verify_bytes(manifest: SnapshotManifest, data: bytes) -> None:
    """Raise ``ValueError`` unless ``data`` is exactly the model the manifest describes."""
    if len(data) != manifest.size_bytes:
        raise ValueError(f"snapshot {manifest.seq}: size differs from the manifest")
    digest = sha256_hex(data)
    if digest != manifest.sha256:
        raise ValueError(f"snapshot {manifest.seq}: sha256 {digest[:12]}... does not match manifest")
