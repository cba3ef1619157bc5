"""plan_for_config: builds, profiles into the state dir (cached), uses headroom, fills the Plan."""

from __future__ import annotations

import pytest

from ferretd.config import load_config
from ferretd.engine.plan import Plan
from ferretd.planner import plan_for_config
from ferretd.planner.headroom import Headroom
from ferretd.planner.profile import Profiler
from ferretd.planner.search import BudgetTooSmall


def budget(n: int) -> Headroom:
    return Headroom(budget_bytes=n, raw_bytes=n, bound_by="cap", safety_factor=1.0, sources={"cap": n})


def test_plan_for_config_end_to_end(tmp_path) -> None:
    config = load_config(
        overrides={
            "daemon": {"state_dir": str(tmp_path)},
            "model": {"hidden": [32, 32, 16]},
            # lanes as free as the virtual clock's: the rate model then prefers big plans
            "planner": {"arrival_interval_s": 0.001, "max_stages": 3, "action_overhead_s": 0.0},
        },
        env={},
    )
    profiler = Profiler(cache_dir=tmp_path / "profiles", warmup=0, repeats=1)
    plan = plan_for_config(config, headroom=budget(1 << 30), profiler=profiler, num_gpus=0)
    assert plan.predicted_memory_bytes <= plan.budget_bytes == 1 << 30
    assert plan.predicted_rate is not None and plan.num_stages <= 3
    assert plan.extra["headroom"]["bound_by"] == "cap"
    assert Plan.from_json(plan.to_json()) == plan
    assert len(list((tmp_path / "profiles").glob("profile-*.json"))) == 1

    with pytest.raises(BudgetTooSmall, match="MiB") as info:
        plan_for_config(config, headroom=budget(1000), profiler=profiler, num_gpus=0)
    middle = (info.value.minimum_bytes + plan.predicted_memory_bytes) // 2
    small = plan_for_config(config, headroom=budget(middle), profiler=profiler, num_gpus=0)
    assert profiler.hits >= 1 and profiler.misses == 1
    assert small.predicted_memory_bytes <= middle < plan.predicted_memory_bytes
    assert small.predicted_rate <= plan.predicted_rate


def test_plan_for_config_reads_real_headroom(tmp_path) -> None:
    config = load_config(overrides={"daemon": {"state_dir": str(tmp_path)}}, env={})
    plan = plan_for_config(config, profiler=Profiler(cache_dir=tmp_path, warmup=0, repeats=1))
    assert plan.budget_bytes is not None and plan.predicted_memory_bytes <= plan.budget_bytes


def test_real_time_rate_params_carry_measured_overhead_and_cores(tmp_path) -> None:
    import os

    from ferretd.planner.planning import profile_for_config, rate_params_for_config

    config = load_config(overrides={"daemon": {"state_dir": str(tmp_path)}}, env={})
    profile = profile_for_config(config, Profiler(cache_dir=tmp_path / "profiles", warmup=0, repeats=1))
    params = rate_params_for_config(config, profile)
    assert params.action_overhead_s > 0
    assert params.cpu_cores == len(os.sched_getaffinity(0))
    assert len(list((tmp_path / "profiles").glob("overhead-*.json"))) == 1
    again = rate_params_for_config(config, profile)
    assert again.action_overhead_s == params.action_overhead_s, "measured once, then read from the cache"
    overrides = {"daemon": {"state_dir": str(tmp_path)}, "planner": {"action_overhead_s": 0.0}}
    fixed = load_config(overrides=overrides, env={})
    assert rate_params_for_config(fixed, profile).action_overhead_s == 0.0


def test_lane_overhead_and_core_contention_make_many_lanes_of_a_tiny_model_lose(tmp_path) -> None:
    from dataclasses import replace

    from ferretd.planner.planning import profile_for_config
    from ferretd.planner.rate import RateParams, predict_rate

    config = load_config(overrides={"daemon": {"state_dir": str(tmp_path)}}, env={})
    profile = profile_for_config(config, Profiler(cache_dir=tmp_path / "profiles", warmup=0, repeats=1))
    saturating = RateParams(arrival_interval_s=profile.total_time_s / 8)
    one_lane, many_lanes = Plan.uniform(3), Plan.uniform(3, (1, 2), 4)
    free = [predict_rate(profile, p, saturating).rate for p in (one_lane, many_lanes)]
    assert free[1] > free[0], "with free lanes, 3 stages x 4 workers beat one lane under overload"
    real = replace(saturating, action_overhead_s=1e-4, cpu_cores=2.0)
    costly = [predict_rate(profile, p, real).rate for p in (one_lane, many_lanes)]
    assert costly[0] > costly[1], "with 0.1 ms per action on 2 cores, one lane wins for a tiny MLP"
