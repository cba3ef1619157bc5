"""Live re-planning: watch the memory headroom and re-plan when it moves (the paper plans once).

Owned by the daemon loop. Every ``[planner] replan_check_s`` it reads the headroom and works
out the budget a new plan may use::

    machine = safety x (what the box has left, psutil / cgroup / GPU) + what the running plan holds
    budget  = min(machine, [planner] memory_cap_bytes, ferretctl budget BYTES)

The running plan's own predicted footprint is added back because psutil and the cgroup already
count it as used, and switching plans releases it. Caps are absolute limits on the plan.

The load matters too: unless ``[planner] arrival_interval_s`` fixes it, plans are made for the
arrival interval measured at ingest. Before that is measured (the first ~100 arrivals), the
daemon runs the plan the ``[pipeline]`` keys describe (by default one lane: the sequential
learner), not a plan for a load nobody has seen; the first measurement triggers a re-plan. The
planner is still asked once at start (its answer unused) so that the model profile and the
engine overhead are measured and cached before traffic, not on the loop thread mid-stream.

A new plan is searched when the running one no longer fits, when the budget moved by more than
``[planner] hysteresis`` (a fraction) from the one the plan was made for, when the measured
arrival interval moved by more than a factor of 2 from the one it was made for, or on
``ferretctl replan`` / ``ferretctl budget``. It is applied (and counted) only if the engine
would run it differently (:func:`engine_shape`: two plans that both run on the sequential
learner, or differ only in inactive workers or predictions, are the same), through
``learner.apply_plan`` at a safe point: the loop stops feeding samples (the queue keeps
accepting them), in-flight microbatches finish, then the engine rebuilds its lanes with the
same weights. Nothing queued or accepted is lost.

Only ``[pipeline] plan = "auto"`` re-plans; a manual plan is the operator's decision.

As a daemon component the re-planner checkpoints the ``ferretctl budget`` cap (``capture`` /
``restore``) and takes reloaded ``[planner]`` keys (``reconfigure``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from ferretd.config import Config
from ferretd.engine.plan import Plan
from ferretd.logs import RateLimitedLog
from ferretd.planner.headroom import Headroom, read_headroom

if TYPE_CHECKING:
    from ferretd.components.trainer import Trainer

log = structlog.get_logger(__name__)

HeadroomFn = Callable[[], Headroom]
ArrivalFn = Callable[[], float | None]
PlanFn = Callable[[Config, Headroom, float | None], Plan]
LOAD_FACTOR = 2.0


def _plan_with_planner(config: Config, headroom: Headroom, arrival_interval_s: float | None) -> Plan:
    from ferretd.planner import plan_for_config

    return plan_for_config(config, headroom=headroom, arrival_interval_s=arrival_interval_s)


def plan_shape(plan: Plan) -> dict[str, Any]:
    """What the engine runs, without the planner's predictions (for "did the plan change?")."""
    data = plan.to_dict()
    for key in ("predicted_memory_bytes", "predicted_rate", "budget_bytes", "notes", "extra"):
        data.pop(key, None)
    return data


def engine_shape(plan: Plan, config: Config) -> dict[str, Any]:
    """What the engine would actually do with ``plan``: one-lane plans are all the sequential learner."""
    from ferretd.learners import is_sequential

    if is_sequential(plan, config):
        return {"engine": "sequential", "devices": list(plan.devices[:1])}
    data = plan_shape(plan)
    data["workers"] = [w for w in data["workers"] if w.get("active", True)]
    return data


class Replanner:
    def __init__(
        self,
        config: Config,
        *,
        headroom_fn: HeadroomFn | None = None,
        plan_fn: PlanFn = _plan_with_planner,
        arrival_fn: ArrivalFn | None = None,
    ) -> None:
        self.config = config
        self._headroom_fn = headroom_fn or (lambda: read_headroom(0, self.config.planner.safety_factor))
        self._plan_fn = plan_fn
        self._arrival_fn = arrival_fn or (lambda: None)
        self.override_bytes: int | None = None
        self._failures = RateLimitedLog(log)
        self.headroom: Headroom | None = None
        self.replans = 0
        self.last_reason = "start"
        self._next_check = time.monotonic() + config.planner.replan_check_s

    @property
    def auto(self) -> bool:
        return self.config.pipeline.plan == "auto"

    def budget(self, running: Plan | None) -> Headroom:
        """The budget for a plan, given the plan running now (None at start)."""
        machine = self._headroom_fn()
        held = (running.predicted_memory_bytes or 0) if running is not None else 0
        sources = dict(machine.sources)
        candidates = {"machine": machine.budget_bytes + held}
        if self.config.planner.memory_cap_bytes:
            candidates["cap"] = self.config.planner.memory_cap_bytes
        if self.override_bytes:
            candidates["ferretctl budget"] = self.override_bytes
        bound = min(candidates, key=lambda k: candidates[k])
        if held:
            sources["held by running plan"] = held
        return Headroom(
            budget_bytes=int(candidates[bound]),
            raw_bytes=machine.raw_bytes,
            bound_by=machine.bound_by if bound == "machine" else bound,
            safety_factor=machine.safety_factor,
            sources=sources,
        )

    def measured_arrival_interval(self) -> float | None:
        """The ingest's measured interval, unless the config fixes the planning interval."""
        if self.config.planner.arrival_interval_s > 0:
            return None
        return self._arrival_fn()

    def initial_plan(self) -> Plan:
        """The planner's plan for the configured or measured load; the ``[pipeline]`` keys' plan
        (marked ``unmeasured``) while the daemon has not measured the arrival rate yet."""
        self.headroom = self.budget(None)
        arrival = self.measured_arrival_interval()
        planned = self._plan_fn(self.config, self.headroom, arrival)
        if arrival is None and self.config.planner.arrival_interval_s <= 0:
            # The planner's answer for an unknown load is not used, but asking now (before any
            # traffic) profiles the model and the engine overhead into their caches, so the re-plan
            # at the first measurement does not stall the loop for seconds.
            return self.unmeasured_plan()
        return planned

    def unmeasured_plan(self) -> Plan:
        from ferretd.learners import plan_from_config

        manual = dataclasses.replace(self.config, pipeline=dataclasses.replace(self.config.pipeline, plan="manual"))
        plan = plan_from_config(manual)
        note = "arrival rate not measured yet: the [pipeline] keys' plan until it is"
        return dataclasses.replace(plan, notes=note, extra={**plan.extra, "unmeasured": True})

    def due(self) -> bool:
        return self.auto and time.monotonic() >= self._next_check

    def check(self, running: Plan, *, force: bool = False, reason: str = "headroom") -> Plan | None:
        """A new plan to apply, or None when the running one should stay."""
        self._next_check = time.monotonic() + self.config.planner.replan_check_s
        if not self.auto:
            raise ValueError('the plan is manual ([pipeline] plan = "manual"); set plan = "auto" to re-plan')
        headroom = self.budget(running)
        made_for = running.budget_bytes or headroom.budget_bytes
        moved = abs(headroom.budget_bytes - made_for) / max(made_for, 1)
        over = (running.predicted_memory_bytes or 0) > headroom.budget_bytes
        arrival = self.measured_arrival_interval()
        planned_for = running.extra.get("arrival_interval_s") or 0.0
        load_moved = bool(arrival and planned_for) and max(arrival / planned_for, planned_for / arrival) > LOAD_FACTOR
        if load_moved and reason == "headroom":
            reason = "arrival rate"
        if running.extra.get("unmeasured") and arrival is not None:
            load_moved = True
            reason = "arrival rate measured" if reason == "headroom" else reason
        if not (force or over or load_moved or moved > self.config.planner.hysteresis):
            return None
        new = self._plan_fn(self.config, headroom, arrival)
        self.headroom = headroom
        if engine_shape(new, self.config) == engine_shape(running, self.config):
            return None
        self.replans += 1
        self.last_reason = "over budget" if over else reason
        log.info(
            "replanned",
            reason=self.last_reason,
            budget_bytes=headroom.budget_bytes,
            bound_by=headroom.bound_by,
            old=running.describe().splitlines()[0],
            new=new.describe().splitlines()[0],
            predicted_memory_bytes=new.predicted_memory_bytes,
        )
        return new

    def replan(self, trainer: Trainer, *, force: bool = False, reason: str = "headroom") -> dict[str, Any]:
        """Check the budget; if the planner finds a new plan, the trainer switches to it at a safe point."""
        try:
            new = self.check(trainer.plan, force=force, reason=reason)
        except ValueError as exc:  # manual plan, or budget below the smallest feasible plan
            if force:
                raise
            self.failed(exc)
            return {"changed": False, "error": str(exc)}
        if new is None:
            return {"changed": False, "plan": trainer.plan.to_dict()}
        if not trainer.switch_plan(new, timeout=self.config.daemon.shutdown_timeout_s):
            log.error("replan_not_applied", detail="in-flight microbatches did not drain in time")
            return {"changed": False, "error": "could not drain in-flight work in time"}
        return {"changed": True, "plan": new.to_dict(), "describe": new.describe()}

    def set_budget(self, trainer: Trainer, budget_bytes: int) -> dict[str, Any]:
        """``ferretctl budget``: an absolute cap on the plan's memory (0 clears it), then re-plan;
        a budget no plan fits raises ValueError and leaves the previous cap."""
        previous = self.override_bytes
        self.override_bytes = budget_bytes or None
        try:
            return self.replan(trainer, force=True, reason=f"ferretctl budget {budget_bytes}")
        except ValueError:
            self.override_bytes = previous
            raise

    def failed(self, exc: BaseException) -> None:
        """A periodic check found no plan (budget below the smallest feasible one): logged at most
        once per 10 s on the re-planner's own channel; the running plan stays."""
        self._failures.warning("replan_failed", "replan_failed", error=str(exc))

    # ------------------------------------------------------------------ component

    def capture(self) -> dict[str, Any]:
        """Checkpoint part: the ``ferretctl budget`` cap, an operator decision that survives restarts."""
        return {"override_bytes": self.override_bytes}

    def restore(self, state: dict[str, Any]) -> None:
        self.override_bytes = state.get("override_bytes")

    def reconfigure(self, config: Config) -> None:
        """``[planner]`` keys; the caller re-plans (``auto``) so a new budget or limit takes effect."""
        self.config = config

    def describe(self, running: Plan) -> dict[str, Any]:
        return {
            "mode": self.config.pipeline.plan,
            "plan": running.to_dict(),
            "describe": running.describe(),
            "headroom": dataclasses.asdict(self.headroom) if self.headroom else None,
            "override_bytes": self.override_bytes,
            "replans": self.replans,
            "last_reason": self.last_reason,
        }
