"""Service lifecycle pieces of the daemon: checkpoint state, resume, config reload, health.

Kept out of ``daemon.py`` so the loop stays readable; every function here runs on the daemon
loop thread except :func:`health`, which only reads thread-safe state.

Reload (SIGHUP or ``ferretctl reload``) re-reads the config file. Sections that can change
while running are applied: ``daemon.log_level``, ``[snapshot]`` cadence and ``keep``,
``[checkpoint]``, ``[planner]`` (followed by a re-plan when the plan is ``auto``), and the
ingest queue's ``queue_capacity`` and ``overflow``. Anything else that changed (sockets, model,
training, compensation, ...) is reported as needing a restart and keeps its running value.
An invalid file changes nothing.

Health (``ferretctl health``): 0 healthy, 1 degraded, 2 down. Degraded means one of: the
counters do not add up, the loop has not turned for ``STALL_S``, samples are waiting but none
was trained for ``STALL_S``, training is paused, the last snapshot export failed, the
divergence guard discarded an update within ``DIVERGED_RECENT_S``, the last checkpoint write
failed, more than ``[metrics] max_drop_share`` of the valid samples of the last
``[metrics] drop_window_s`` were dropped, or resume had to skip unusable checkpoints (this run
started from scratch or from an older one). Other components add their own reasons through
``daemon.health_issues`` (:class:`HealthIssues`: ``set(key, reason)`` / ``clear(key)``).

Resume (:func:`resume_newest`): checkpoints are tried newest first; one that cannot be loaded
safely is skipped (and left in place), one that loads but does not fit the configured model is
set aside as ``*.incompatible`` with one log line, so a changed config never becomes a crash
loop.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import structlog

from ferretd.checkpoint import model_fit_error, restore_rng, rng_state
from ferretd.config import Config, load_config
from ferretd.engine.plan import Plan
from ferretd.learners import learner_kind
from ferretd.logs import configure_logging

if TYPE_CHECKING:
    from ferretd.daemon import Daemon

log = structlog.get_logger("ferretd")

STALL_S = 30.0
DIVERGED_RECENT_S = 60.0
LIVE_SECTIONS = ("snapshot", "checkpoint", "planner")


# --------------------------------------------------------------------------- cadence


class Cadence:
    """"Every K updates or S seconds, if there are new updates" (snapshots and checkpoints).

    The limits are passed on each call, so a config reload takes effect at once; 0 turns one off.
    """

    def __init__(self) -> None:
        self.last_updates = 0
        self.last_time = time.monotonic()

    def due(self, updates: int, every_updates: int, every_seconds: float) -> bool:
        fresh = updates - self.last_updates
        if fresh <= 0:
            return False
        if every_updates and fresh >= every_updates:
            return True
        return bool(every_seconds) and time.monotonic() - self.last_time >= every_seconds

    def mark(self, updates: int) -> None:
        self.last_updates = updates
        self.last_time = time.monotonic()


# --------------------------------------------------------------------------- checkpoints


def checkpoint_state(daemon: Daemon, reason: str) -> dict[str, Any]:
    """The full learning state; the caller has flushed the learner (nothing in flight)."""
    ledger = daemon.queue.snapshot()
    latest = daemon.store.latest()
    return {
        "reason": reason,
        "saved_at": time.time(),
        "updates": daemon.learner.updates,
        "learner": daemon.learner.state_dict(),
        "plan": daemon.plan.to_dict(),
        "ledger": {
            "received": ledger.received,
            "trained": ledger.trained,
            "dropped": ledger.dropped,
            "invalid": ledger.invalid,
            "waiting": ledger.waiting,
            "in_flight": ledger.in_flight,
        },
        "score": daemon.score_state(),
        "rng": rng_state(),
        "override_bytes": daemon.replanner.override_bytes,
        "snapshot_seq": latest.seq if latest else None,
    }


def adapt_learner_state(state: dict[str, Any], saved_plan: Plan | None, plan: Plan, kind: str) -> dict[str, Any]:
    """Make a saved learner state loadable by a learner of ``kind`` running ``plan``.

    The same kind and partition load as saved. Otherwise what is keyed by the full model's
    parameter names carries over (weights, optimiser state, averaged weights) with the input
    normaliser and the divergence guard; the compensator's per-stage statistics describe the
    old stage layout and start fresh.
    """
    saved_kind = state.get("kind")
    same_partition = saved_plan is not None and saved_plan.partition == plan.partition
    if saved_kind == kind and (kind == "sequential" or same_partition):
        return state
    updates = state.get("updates", 0)
    total = max(updates) if isinstance(updates, list) else int(updates)
    keyed = {k: state.get(k) for k in ("optim", "average", "average_count", "normalizer", "guard")}
    if kind == "sequential":
        return {"kind": "sequential", "model": state["model"], "optimizer": None, "updates": total, **keyed}
    return {
        "kind": "pipeline",
        "model": state["model"],
        **keyed,
        "momentum": {},
        "compensator": {},
        "ocl": state.get("ocl", {}),
        "updates": [total] * plan.num_stages,
    }


def resume(daemon: Daemon, seq: int, state: dict[str, Any]) -> None:
    saved_plan = Plan.from_dict(state["plan"]) if state.get("plan") else None
    kind = learner_kind(daemon.plan, daemon.config)
    daemon.learner.load_state_dict(adapt_learner_state(state["learner"], saved_plan, daemon.plan, kind))
    daemon.load_score_state(state["score"])
    ledger = state["ledger"]
    dropped = dict(ledger["dropped"])
    lost = int(ledger.get("waiting", 0)) + int(ledger.get("in_flight", 0))
    if lost:
        dropped["restart"] = dropped.get("restart", 0) + lost
    daemon.queue.restore_counts(ledger["received"], ledger["trained"], dropped, ledger["invalid"])
    daemon.replanner.override_bytes = state.get("override_bytes")
    restore_rng(state["rng"])
    log.info(
        "resumed_from_checkpoint",
        seq=seq,
        updates=daemon.learner.updates,
        received=ledger["received"],
        trained=ledger["trained"],
        lost_in_restart=lost,
        saved_reason=state.get("reason"),
    )


def resume_newest(daemon: Daemon) -> int | None:
    """Resume from the newest usable checkpoint; returns its seq, or ``None`` (from scratch).

    Runs in ``Daemon.__init__`` before any thread starts. Unusable checkpoints become a health
    reason; an incompatible one is set aside. Never raises for anything found on disk.
    """
    store = daemon.checkpoints
    problems: list[str] = []
    for seq in reversed(store.sequences()):
        try:
            state = store.load(seq)
        except ValueError as exc:
            log.warning("checkpoint_skipped", seq=seq, reason=str(exc))
            problems.append(f"checkpoint {seq} unusable")
            continue
        learner = state.get("learner")
        problem = model_fit_error(learner.get("model") if isinstance(learner, dict) else None, daemon.model_template())
        if problem is None:
            try:
                resume(daemon, seq, state)
            except Exception as exc:  # a state that fits the model but not the learner: start clean
                problem = f"cannot be resumed ({type(exc).__name__}: {str(exc)[:200]})"
                daemon.reset_learning_state()
        if problem is None:
            break
        store.set_aside(seq, problem)
        problems.append(f"checkpoint {seq} does not fit the config and was set aside ({problem})")
    else:
        seq = None
    if problems:
        start = "an older checkpoint" if seq is not None else "scratch"
        daemon.health_issues.set("resume", f"resumed from {start}: " + "; ".join(problems[:3]))
    return seq


# --------------------------------------------------------------------------- health bookkeeping


class HealthIssues:
    """Reasons for ``degraded`` that components set and clear (thread-safe, keyed by component)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reasons: dict[str, str] = {}

    def set(self, key: str, reason: str) -> None:
        with self._lock:
            self._reasons[key] = reason

    def clear(self, key: str) -> None:
        with self._lock:
            self._reasons.pop(key, None)

    def reasons(self) -> list[str]:
        with self._lock:
            return list(self._reasons.values())


@dataclasses.dataclass
class CheckpointRecord:
    """Outcome of the checkpoint writes, for status and health."""

    saved: int = 0
    failed: int = 0
    last_ok_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_failed: bool = False

    def ok(self) -> None:
        self.saved += 1
        self.last_ok_at = time.time()
        self.last_failed = False

    def error(self, exc: BaseException) -> None:
        self.failed += 1
        self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
        self.last_error_at = time.time()
        self.last_failed = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class DropWindow:
    """Share of valid samples dropped over the last ``window_s`` seconds (from ledger samples)."""

    MIN_SAMPLES = 20

    def __init__(self, window_s: float, every_s: float = 1.0) -> None:
        self.window_s = window_s
        self.every_s = every_s
        self._points: deque[tuple[float, int, int]] = deque()
        self._lock = threading.Lock()

    def observe(self, now: float, accepted: int, dropped: int) -> None:
        """Record the cumulative counters; cheap to call on every loop turn."""
        with self._lock:
            if self._points and now - self._points[-1][0] < self.every_s:
                return
            self._points.append((now, accepted, dropped))
            while len(self._points) > 2 and now - self._points[1][0] >= self.window_s:
                self._points.popleft()

    def share(self) -> tuple[float, int] | None:
        """(dropped share, accepted samples) over the window; ``None`` with too few samples."""
        with self._lock:
            if len(self._points) < 2:
                return None
            (_, a0, d0), (_, a1, d1) = self._points[0], self._points[-1]
        accepted = a1 - a0
        if accepted < self.MIN_SAMPLES:
            return None
        return max(0, d1 - d0) / accepted, accepted


# --------------------------------------------------------------------------- reload


def reload_config(daemon: Daemon, path: str | None) -> dict[str, Any]:
    """Re-read ``path``; apply what can change live; report the rest. Raises ConfigError."""
    if path is None:
        return {"applied": [], "needs_restart": [], "note": "running on embedded defaults: nothing to reload"}
    old = daemon.config
    new = load_config(path)
    applied: list[str] = []
    needs_restart: list[str] = []
    merged = old
    for section in dataclasses.fields(Config):
        name = section.name
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        if name in LIVE_SECTIONS:
            merged = dataclasses.replace(merged, **{name: after})
            applied.append(f"[{name}]")
            continue
        live_keys = {"daemon": ("log_level",), "ingest": ("queue_capacity", "overflow")}.get(name, ())
        changed = [f.name for f in dataclasses.fields(before) if getattr(before, f.name) != getattr(after, f.name)]
        live = {k: getattr(after, k) for k in changed if k in live_keys}
        if live:
            merged = dataclasses.replace(merged, **{name: dataclasses.replace(getattr(merged, name), **live)})
            applied += [f"[{name}] {k}" for k in live]
        needs_restart += [f"[{name}] {k}" for k in changed if k not in live_keys]
    daemon.config = merged
    daemon.replanner.config = merged
    daemon.exporter.config = merged
    daemon.store.keep = merged.snapshot.keep
    daemon.checkpoints.keep = merged.checkpoint.keep
    daemon.queue.reconfigure(merged.ingest.queue_capacity, merged.ingest.overflow)
    configure_logging(merged.daemon.log_level, fmt=merged.daemon.log_format)
    replanned: dict[str, Any] | None = None
    if "[planner]" in applied and daemon.replanner.auto:
        replanned = daemon.replan(force=True, reason="reload")
    log.info("config_reloaded", path=path, applied=applied, needs_restart=needs_restart)
    return {"applied": applied, "needs_restart": needs_restart, "replan": replanned}


# --------------------------------------------------------------------------- health


def health(daemon: Daemon) -> dict[str, Any]:
    now = time.monotonic()
    ledger = daemon.queue.snapshot()
    reasons: list[str] = []
    if daemon.state in ("stopping", "stopped"):
        return {"code": 2, "status": "down", "reasons": [f"daemon is {daemon.state}"]}
    if not ledger.balanced:
        reasons.append("counters do not add up")
    if now - daemon.loop_heartbeat > STALL_S:
        reasons.append(f"loop has not turned for {now - daemon.loop_heartbeat:.0f} s")
    if daemon.paused:
        reasons.append("training is paused")
    elif ledger.queued and now - daemon.last_progress_at > STALL_S:
        reasons.append(f"{ledger.queued} samples queued but none trained for {now - daemon.last_progress_at:.0f} s")
    if daemon.exporter.last_failed:
        reasons.append("the last snapshot export failed")
    if daemon.checkpoint_record.last_failed:
        reasons.append(f"the last checkpoint write failed ({daemon.checkpoint_record.last_error})")
    drop = daemon.drop_window.share()
    limit = daemon.config.metrics.max_drop_share
    if drop is not None and drop[0] > limit:
        reasons.append(f"{drop[0]:.0%} of the last {drop[1]} valid samples were dropped (limit {limit:.0%})")
    reasons += daemon.health_issues.reasons()
    diverged_at = getattr(daemon, "last_divergence_at", None)
    if diverged_at is not None and now - diverged_at < DIVERGED_RECENT_S:
        reasons.append(f"a training update diverged {now - diverged_at:.0f} s ago and was discarded")
    code = 1 if reasons else 0
    return {"code": code, "status": "degraded" if reasons else "healthy", "reasons": reasons}
