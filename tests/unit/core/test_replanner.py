"""Replanner decisions with injected headroom and planner: hysteresis, over-budget, caps."""

from __future__ import annotations

import dataclasses

import pytest

from ferretd.config import load_config
from ferretd.engine.plan import Plan
from ferretd.planner.headroom import Headroom
from ferretd.replan import Replanner

MiB = 1 << 20


def fake_planner(config, headroom, arrival_interval_s=None):
    """More budget, more workers: one worker per 10 MiB, at most 4; each worker 'costs' 8 MiB.
    A slow stream (interval >= 1 s) needs only one worker."""
    workers = max(1, min(4, headroom.budget_bytes // (10 * MiB)))
    if arrival_interval_s is not None and arrival_interval_s >= 1.0:
        workers = 1
    plan = Plan.uniform(3, (1, 2), workers)
    return dataclasses.replace(
        plan,
        predicted_memory_bytes=workers * 8 * MiB,
        budget_bytes=headroom.budget_bytes,
        extra={"arrival_interval_s": arrival_interval_s or 0.001},
    )


class Machine:
    def __init__(self, free: int) -> None:
        self.free = free

    def __call__(self) -> Headroom:
        return Headroom(budget_bytes=self.free, raw_bytes=self.free, bound_by="psutil", safety_factor=1.0,
                        sources={"psutil": self.free})  # fmt: skip


def replanner(machine: Machine, arrival_fn=lambda: 0.001, **planner) -> Replanner:
    """Auto re-planning for a stream whose arrival interval was measured (1 ms unless given)."""
    config = load_config(None, env={}, overrides={"pipeline": {"plan": "auto"}, "planner": planner})
    return Replanner(config, headroom_fn=machine, plan_fn=fake_planner, arrival_fn=arrival_fn)


def test_small_moves_inside_the_hysteresis_band_keep_the_plan():
    machine = Machine(40 * MiB)
    r = replanner(machine, hysteresis=0.2)
    plan = r.initial_plan()
    assert len(plan.workers) == 4
    machine.free = 40 * MiB - 32 * MiB + 2 * MiB  # the plan holds 32 MiB; 10 % more budget
    assert r.check(plan) is None


def test_budget_drop_past_the_band_replans_smaller():
    machine = Machine(40 * MiB)
    r = replanner(machine, hysteresis=0.1)
    plan = r.initial_plan()
    machine.free = 0  # something else took the rest: only what we hold (32 MiB) remains, 20 % less
    smaller = r.check(plan)
    assert smaller is not None and len(smaller.workers) == 3 and r.replans == 1


def test_running_plan_over_budget_replans_even_inside_the_band():
    machine = Machine(40 * MiB)
    r = replanner(machine, hysteresis=0.9)
    plan = r.initial_plan()
    r.override_bytes = 30 * MiB  # below the 32 MiB the plan holds; a 25 % move, inside the band
    smaller = r.check(plan)
    assert smaller is not None and smaller.predicted_memory_bytes <= 30 * MiB and r.last_reason == "over budget"


def test_caps_are_absolute_and_override_wins():
    machine = Machine(1000 * MiB)
    r = replanner(machine, memory_cap_bytes=25 * MiB)
    plan = r.initial_plan()
    assert len(plan.workers) == 2 and r.headroom.bound_by == "cap"
    r.override_bytes = 12 * MiB
    new = r.check(plan, force=True)
    assert new is not None and len(new.workers) == 1 and r.headroom.bound_by == "ferretctl budget"


def test_same_shape_is_not_a_new_plan_and_manual_refuses():
    machine = Machine(40 * MiB)
    r = replanner(machine)
    plan = r.initial_plan()
    assert r.check(plan, force=True) is None
    manual_config = load_config(None, env={}, overrides={"pipeline": {"plan": "manual"}})
    manual = Replanner(manual_config, headroom_fn=machine, plan_fn=fake_planner)
    with pytest.raises(ValueError, match="manual"):
        manual.check(plan, force=True)


def test_measured_arrival_rate_replans_when_the_load_moves_past_a_factor_of_two():
    machine = Machine(40 * MiB)
    measured: list[float | None] = [None]
    r = replanner(machine, arrival_fn=lambda: measured[0])
    plan = r.initial_plan()  # no samples yet: the [pipeline] keys' one-lane plan, not one for saturation
    assert plan.num_stages == 1 and len(plan.active_workers) == 1 and plan.extra["unmeasured"]
    assert r.check(plan) is None  # still nothing measured: nothing to decide
    measured[0] = 0.001  # the first measurement re-plans
    plan = r.check(plan)
    assert plan is not None and len(plan.workers) == 4 and r.last_reason == "arrival rate measured"
    measured[0] = 0.0015  # 1.5x the interval the plan was made for: inside the factor of 2
    assert r.check(plan) is None
    measured[0] = 2.0  # the stream slowed down a lot
    slower = r.check(plan)
    assert slower is not None and len(slower.workers) == 1 and r.last_reason == "arrival rate"


def test_configured_arrival_interval_overrides_the_measurement():
    r = replanner(Machine(40 * MiB), arrival_fn=lambda: 2.0, arrival_interval_s=0.001)
    assert r.measured_arrival_interval() is None


def test_auto_is_the_default_and_a_plan_the_engine_runs_the_same_way_is_not_counted():
    assert load_config(None, env={}).pipeline.plan == "auto"
    machine = Machine(40 * MiB)
    r = replanner(machine)

    def one_lane(config, headroom, arrival_interval_s=None):  # differs only in what the engine ignores
        plan = Plan.uniform(3, (), 2, recompute=True)
        workers = (plan.workers[0], dataclasses.replace(plan.workers[1], active=False))
        return dataclasses.replace(plan, workers=workers, extra={"arrival_interval_s": 0.001}, notes="x")

    running = r.unmeasured_plan()
    r._plan_fn = one_lane
    assert r.check(running, force=True) is None and r.replans == 0


def test_start_asks_the_planner_once_to_warm_its_caches_but_runs_the_keys_plan():
    calls: list[float | None] = []

    def spy(config, headroom, arrival_interval_s=None):
        calls.append(arrival_interval_s)
        return fake_planner(config, headroom, arrival_interval_s)

    config = load_config(None, env={})
    r = Replanner(config, headroom_fn=Machine(40 * MiB), plan_fn=spy, arrival_fn=lambda: None)
    plan = r.initial_plan()
    assert calls == [None] and plan.extra["unmeasured"] and len(plan.active_workers) == 1
