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
was trained for ``STALL_S``, training is paused, the last snapshot export failed, or the
divergence guard discarded an update within ``DIVERGED_RECENT_S``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import structlog

from ferretd.checkpoint import restore_rng, rng_state
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
    configure_logging(merged.daemon.log_level)
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
    diverged_at = getattr(daemon, "last_divergence_at", None)
    if diverged_at is not None and now - diverged_at < DIVERGED_RECENT_S:
        reasons.append(f"a training update diverged {now - diverged_at:.0f} s ago and was discarded")
    code = 1 if reasons else 0
    return {"code": code, "status": "degraded" if reasons else "healthy", "reasons": reasons}
