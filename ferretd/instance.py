"""One daemon per runtime directory, and a runtime directory nobody else can plant files in.

:func:`check_runtime_dir` creates the directory (0700) when missing and refuses one that is a
symlink, is not owned by this user, or is group/world-writable: the fallback
``/tmp/ferretd-$UID`` is a predictable name that another local user could create first and fill
with sockets of their own. 0700, 0750 and 0755 pass (systemd's ``RuntimeDirectoryMode=``).

:class:`InstanceLock` takes ``fcntl.flock`` on ``<runtime_dir>/ferretd.lock`` before any socket
is bound or any state file is touched. The kernel drops the lock when the process dies, so a
crash never leaves a stale lock; a second daemon on the same runtime directory fails at once.
Stdlib only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path

LOCK_NAME = "ferretd.lock"


class InstanceError(RuntimeError):
    """The runtime directory is unsafe or already in use; ``code`` is the process exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def check_runtime_dir(path: str | os.PathLike[str], code: int = 2) -> Path:
    """Create ``path`` (0700) if missing; raise :class:`InstanceError` unless it is ours and private."""
    directory = Path(path)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
        info = os.lstat(directory)
    except OSError as exc:
        raise InstanceError(f"runtime directory {directory}: {exc.strerror or exc}", code) from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise InstanceError(f"runtime directory {directory}: not a plain directory (a symlink?); refusing it", code)
    if info.st_uid != os.geteuid():
        raise InstanceError(
            f"runtime directory {directory}: owned by uid {info.st_uid}, not by us (uid {os.geteuid()}); refusing it",
            code,
        )
    if info.st_mode & 0o022:
        raise InstanceError(
            f"runtime directory {directory}: mode {stat.S_IMODE(info.st_mode):04o} is group/world-writable; "
            "use 0700 or 0750",
            code,
        )
    return directory


class InstanceLock:
    """An exclusive ``flock`` on a file in the runtime directory, held until :meth:`release`."""

    def __init__(self, runtime_dir: str | os.PathLike[str], code: int = 3) -> None:
        self.path = Path(runtime_dir) / LOCK_NAME
        self._code = code
        self._fd: int | None = None

    def acquire(self) -> InstanceLock:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise InstanceError(f"cannot open lock file {self.path}: {exc.strerror or exc}", self._code) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise InstanceError(
                f"another ferretd{who} is running on runtime directory {self.path.parent}", self._code
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
