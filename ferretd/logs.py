"""structlog set-up for journald and terminals, rate-limited warnings and sampled routine lines.

``configure_logging(level, fmt)`` picks the format: ``json`` (one object per line), ``console``
(aligned, human-readable) or ``auto`` (console on a terminal, JSON otherwise). When stdout is
the journal (systemd sets ``$JOURNAL_STREAM`` to its device:inode), every line starts with the
sd-daemon priority prefix ``<N>`` (journald strips it and stores the level, so ``journalctl -p
err`` filters), and lines written to stderr, a startup error or a Python traceback included, are
marked ``<3>`` (error). Uncaught exceptions, in the main thread or any other, become one
``uncaught_exception`` error line instead of a bare multi-line traceback.

Bad input can arrive thousands of times a second; :class:`RateLimitedLog` writes the first
occurrence of each kind at once and afterwards at most one line per interval, carrying how many
were suppressed in between. :class:`RoutineLog` does the same for healthy routine events (a
snapshot saved, a model swapped): at most one info line per interval, the rest at debug.
Each component keeps its own :class:`RateLimitedLog` (bad input at ingest, refused updates in
the trainer, failed checkpoints, failed re-plans), so one kind of trouble never hides another.
:class:`LogSettings` is the daemon's logging component (a reload applies the log level).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
FORMATS = ("auto", "json", "console")
# syslog(3) priorities as journald reads them from a "<N>" line prefix (sd-daemon(3)).
PRIORITY = {"debug": 7, "info": 6, "msg": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3, "critical": 2}


def is_journal(stream: Any, env: Mapping[str, str] | None = None) -> bool:
    """Is ``stream`` the journal stream systemd connected (``$JOURNAL_STREAM`` = device:inode)?"""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return bool(value) and st.st_dev == int(device) and st.st_ino == int(inode)
    except (AttributeError, OSError, ValueError):
        return False


def _priority_prefix(_logger: Any, method_name: str, rendered: str) -> str:
    return f"<{PRIORITY.get(method_name, 6)}>{rendered}"


def configure_logging(
    level: str = "info", *, fmt: str = "auto", json: bool | None = None, stream: TextIO | None = None
) -> str:
    """Configure structlog; returns the format chosen (``json`` or ``console``).

    ``json=True/False`` is the older spelling of ``fmt="json"/"console"``."""
    stream = stream or sys.stdout
    if json is not None:
        fmt = "json" if json else "console"
    journal = is_journal(stream)
    if fmt == "auto":
        fmt = "console" if _isatty(stream) and not journal else "json"
    if fmt == "json":
        renderer: Any = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_isatty(stream) and not journal)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info if fmt == "json" else _keep_exc_info,
        renderer,
    ]
    if journal:
        processors.append(_priority_prefix)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _install_excepthooks()
    if journal or is_journal(sys.stderr):
        mark_stderr_as_errors()
    return fmt


def _keep_exc_info(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return event_dict  # the console renderer formats exc_info itself (a readable traceback)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _install_excepthooks() -> None:
    """Uncaught exceptions become one structured error line (the JSON escapes the traceback)."""
    log = structlog.get_logger("ferretd")

    def main_hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        log.critical("uncaught_exception", error=f"{kind.__name__}: {value}", exc_info=(kind, value, tb))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        log.critical(
            "uncaught_exception",
            thread=getattr(args.thread, "name", None),
            error=f"{args.exc_type.__name__}: {args.exc_value}",
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )

    sys.excepthook = main_hook
    threading.excepthook = thread_hook


class _ErrorPrefixed:
    """A text stream that starts every line with the journal's error priority ``<3>``."""

    def __init__(self, wrapped: TextIO) -> None:
        self._wrapped = wrapped
        self._at_line_start = True

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            out.append(("<3>" if self._at_line_start else "") + piece)
            self._at_line_start = piece.endswith("\n")
        self._wrapped.write("".join(out))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


def journal_stderr() -> None:
    """First thing in a daemon's main: on the journal, even a config error before logging is
    configured is stored with priority err."""
    if is_journal(sys.stderr):
        mark_stderr_as_errors()


def mark_stderr_as_errors() -> None:
    """On the journal, lines on stderr (one-line startup errors, tracebacks) get priority err."""
    if not isinstance(sys.stderr, _ErrorPrefixed):
        sys.stderr = _ErrorPrefixed(sys.stderr)  # type: ignore[assignment]


class RateLimitedLog:
    """Log each ``key`` at most once per ``interval_s``; later lines report ``suppressed``."""

    def __init__(self, logger: Any, interval_s: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, event: str, **fields: Any) -> bool:
        """Returns True when a line was written."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            suppressed = self._suppressed.pop(key, 0)
            self._last[key] = now
        self._logger.warning(event, suppressed=suppressed, **fields)
        return True


class RoutineLog:
    """Healthy routine events: the first and then one per ``interval_s`` at info (with ``since_last``,
    how many went to debug in between); every other one at debug."""

    def __init__(self, logger: Any, interval_s: float = 300.0) -> None:
        self._logger = logger
        self._interval = interval_s
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}
        self._lock = threading.Lock()

    def info(self, event: str, **fields: Any) -> bool:
        """Returns True when the line went out at info."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(event)
            if last is not None and now - last < self._interval:
                self._since[event] = self._since.get(event, 0) + 1
                due = False
            else:
                self._last[event] = now
                fields["since_last"] = self._since.pop(event, 0)
                due = True
        (self._logger.info if due else self._logger.debug)(event, **fields)
        return due


class LogSettings:
    """The logging component of the daemon: a reload applies ``[daemon] log_level``."""

    def capture(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Nothing in a checkpoint."""

    def reconfigure(self, config: Any) -> None:
        configure_logging(config.daemon.log_level, fmt=config.daemon.log_format)
