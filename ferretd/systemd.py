"""sd_notify without libsystemd: READY, STATUS, WATCHDOG, STOPPING, RELOADING.

Messages go as datagrams to ``$NOTIFY_SOCKET`` (a path, or an abstract socket when it starts
with ``@``). Without that variable every call is a no-op, so the daemon behaves the same
outside systemd. ``watchdog_interval()`` is half of ``$WATCHDOG_USEC`` when the watchdog is
enabled for this process (``$WATCHDOG_PID`` unset or ours), else None.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if address:
            self.address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self._watchdog_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self._watchdog_s = int(usec) / 1e6 / 2
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        if self.address is None:
            return False
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._socket.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", f"MAINPID={os.getpid()}", *([f"STATUS={status}"] if status else []))

    def status(self, line: str) -> bool:
        return self.notify(f"STATUS={line}")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        monotonic_usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def watchdog_interval(self) -> float | None:
        return self._watchdog_s

    def maybe_ping(self) -> bool:
        """Send WATCHDOG=1 if half the watchdog interval has passed since the last ping."""
        if self._watchdog_s is None:
            return False
        now = time.monotonic()
        if now - self._last_ping < self._watchdog_s:
            return False
        self._last_ping = now
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
