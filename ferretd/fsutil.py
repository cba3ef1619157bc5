"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.

A reader therefore sees either the old file or the complete new one, never a torn write, even
if power fails in between (stdlib only).

Fault injection for the crash tests: ``FERRETD_FAULT_WRITE_DELAY_S`` (read at import) sleeps
that long between the fsync of the temp file and the rename, widening the window in which a
SIGKILL lands mid-write. It is 0 unless a test sets it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

_FAULT_WRITE_DELAY_S = float(os.environ.get("FERRETD_FAULT_WRITE_DELAY_S", "0") or 0)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if _FAULT_WRITE_DELAY_S:
            time.sleep(_FAULT_WRITE_DELAY_S)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(directory: str | os.PathLike[str]) -> int:
    """Delete temp files a crash left behind (``.name.XXXX.tmp``); returns how many."""
    removed = 0
    for entry in Path(directory).glob(".*.tmp"):
        try:
            entry.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed
