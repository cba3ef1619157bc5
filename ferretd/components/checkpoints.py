"""The checkpoints component: the crash-safe store, its cadence, write outcomes, and resume.

Every ``[checkpoint] every_updates`` updates or ``every_seconds`` seconds (if there are new
updates) the loop writes the full learning state (:func:`ferretd.lifecycle.checkpoint_state`).
A failed write (disk full, read-only, ...) is recorded for status and health, logged on this
component's own rate-limited channel (``checkpoint_failed``), and retried at the next due time.

Resume (:meth:`resume_newest`): checkpoints are tried newest first; one that cannot be loaded
safely is skipped (and left in place), one that loads but does not fit the configured model is
set aside as ``*.incompatible`` with one log line, so a changed config never becomes a crash
loop. Problems become a health issue (this run started from scratch or from an older one).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import torch

from ferretd.checkpoint import CheckpointStore, model_fit_error
from ferretd.config import Config
from ferretd.health import HealthIssues
from ferretd.lifecycle import Cadence, CheckpointRecord
from ferretd.logs import RateLimitedLog

log = structlog.get_logger("ferretd.checkpoints")

Restore = Callable[[dict[str, Any]], None]


def resumed_log(seq: int, state: dict[str, Any]) -> None:
    ledger = state["ledger"]
    log.info(
        "resumed_from_checkpoint",
        seq=seq,
        updates=state["updates"],
        received=ledger["received"],
        trained=ledger["trained"],
        lost_in_restart=int(ledger.get("waiting", 0)) + int(ledger.get("in_flight", 0)),
        saved_reason=state.get("reason"),
    )


class CheckpointComponent:
    def __init__(self, config: Config) -> None:
        self._config = config
        self.store = CheckpointStore(Path(config.state_dir) / "checkpoints", keep=config.checkpoint.keep)
        self.record = CheckpointRecord()
        self.cadence = Cadence()
        self._failures = RateLimitedLog(log)

    def due(self, updates: int) -> bool:
        cfg = self._config.checkpoint
        return self.cadence.due(updates, cfg.every_updates, cfg.every_seconds)

    def save(self, state: dict[str, Any]) -> Path:
        """Write ``state``; the outcome goes to the record (a failure re-raises)."""
        try:
            path = self.store.save(state)
        except Exception as exc:
            self.record.error(exc)
            raise
        self.record.ok()
        self.cadence.mark(int(state["updates"]))
        log.info("checkpoint_saved", path=path.name, updates=state["updates"], reason=state["reason"])
        return path

    def failed_periodic(self, updates: int, exc: BaseException) -> None:
        """A periodic write failed: counted, in health, retried at the next due time."""
        self.cadence.mark(updates)
        self._failures.warning("checkpoint_failed", "checkpoint_failed", error=str(exc))

    def resume_newest(
        self,
        template: Callable[[], torch.nn.Module],
        restore: Restore,
        reset: Callable[[], None],
        issues: HealthIssues,
    ) -> int | None:
        """Resume from the newest usable checkpoint; returns its seq, or ``None`` (from scratch).

        ``template`` builds the configured model (only when there is a checkpoint to check against
        it); ``restore`` takes a checkpoint into the components; when it raises half-way, ``reset``
        puts them back to a fresh start. Never raises for anything found on disk."""
        problems: list[str] = []
        seq: int | None = None
        for candidate in reversed(self.store.sequences()):
            try:
                state = self.store.load(candidate)
            except ValueError as exc:
                log.warning("checkpoint_skipped", seq=candidate, reason=str(exc))
                problems.append(f"checkpoint {candidate} unusable")
                continue
            learner = state.get("learner")
            problem = model_fit_error(learner.get("model") if isinstance(learner, dict) else None, template())
            if problem is None:
                try:
                    restore(state)
                    resumed_log(candidate, state)
                except Exception as exc:  # a state that fits the model but not the learner: start clean
                    problem = f"cannot be resumed ({type(exc).__name__}: {str(exc)[:200]})"
                    reset()
            if problem is None:
                seq = candidate
                break
            self.store.set_aside(candidate, problem)
            problems.append(f"checkpoint {candidate} does not fit the config and was set aside ({problem})")
        if problems:
            start = "an older checkpoint" if seq is not None else "scratch"
            issues.set("resume", f"resumed from {start}: " + "; ".join(problems[:3]))
        return seq

    def status(self, resumed_from: int | None) -> dict[str, Any]:
        return {**self.record.to_dict(), "resumed_from": resumed_from}

    # ------------------------------------------------------------------ component

    def capture(self) -> dict[str, Any]:
        """Nothing: the checkpoint store records itself on disk."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Nothing to take back (see :meth:`capture`)."""

    def reconfigure(self, config: Config) -> None:
        """Cadence (read on every check) and ``keep``."""
        self._config = config
        self.store.keep = config.checkpoint.keep
