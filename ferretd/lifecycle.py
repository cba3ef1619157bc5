"""Service lifecycle pieces the components share: cadences, checkpoint assembly and resume.

* :class:`Cadence`: "every K updates or S seconds, if there are new updates" (snapshots and
  checkpoints);
* :func:`checkpoint_state` / :func:`restore_checkpoint`: a checkpoint is the components'
  ``capture()`` parts plus the RNG state; resume hands the loaded dict to every component's
  ``restore``;
* :func:`adapt_learner_state`: a saved learner state made loadable by a learner of another kind
  or stage layout (resume after a config change, a live plan switch);
* :class:`CheckpointRecord`: the outcome of the checkpoint writes, for status and health;
* :func:`reload_components`: a reload is :func:`ferretd.config.diff_live`, then ``reconfigure``
  on each component it names (sockets, model, training, ... are reported as needing a restart);
* :func:`health`: ``ferretctl health`` for anything with a ``health()`` (the daemon); the rules
  are :func:`ferretd.health.assess`, a pure function of a status snapshot.

Nothing here knows the daemon: functions take the components they need.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import structlog

from ferretd.checkpoint import restore_rng, rng_state
from ferretd.config import Config, LiveDiff, diff_live, load_config
from ferretd.engine.plan import Plan

log = structlog.get_logger("ferretd")


class Captures(Protocol):
    def capture(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


class Reconfigures(Protocol):
    def reconfigure(self, config: Config) -> None: ...


class HasHealth(Protocol):
    def health(self) -> dict[str, Any]: ...


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


def checkpoint_state(components: Iterable[Captures], reason: str) -> dict[str, Any]:
    """The full learning state: every component's part, the reason and the RNG state.

    The caller has flushed the learner (nothing in flight)."""
    state: dict[str, Any] = {"reason": reason, "saved_at": time.time()}
    for component in components:
        state.update(component.capture())
    state["rng"] = rng_state()
    return state


def restore_checkpoint(components: Iterable[Captures], state: dict[str, Any]) -> None:
    """Hand a loaded checkpoint to every component, in order, then restore the RNG state."""
    for component in components:
        component.restore(state)
    restore_rng(state["rng"])


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




def reload_components(components: Mapping[str, Reconfigures], running: Config, path: str) -> LiveDiff:
    """Re-read ``path`` (ConfigError when invalid: nothing changes) and ask each component whose
    live keys changed to reconfigure with the merged config; the caller runs that config next."""
    diff = diff_live(running, load_config(path))
    for name in sorted(diff.components):
        components[name].reconfigure(diff.merged)
    log.info("config_reloaded", path=path, applied=list(diff.applied), needs_restart=list(diff.needs_restart))
    return diff


def health(daemon: HasHealth) -> dict[str, Any]:
    """``ferretctl health``: ``{"code", "status", "reasons"}`` (see :mod:`ferretd.health`)."""
    return daemon.health()
