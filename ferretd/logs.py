"""structlog set-up (one JSON object per line on stdout, for journald) and rate-limited warnings.

Bad input can arrive thousands of times a second; :class:`RateLimitedLog` writes the first
occurrence of each kind at once and afterwards at most one line per interval, carrying how many
were suppressed in between, so the journal stays readable and the counters hold the totals.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", *, json: bool = True, stream: Any = None) -> None:
    """JSON lines with ISO timestamps and levels; ``json=False`` renders for a terminal."""
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stdout),
        cache_logger_on_first_use=False,
    )


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
