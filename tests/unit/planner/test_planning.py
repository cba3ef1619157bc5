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
            "planner": {"arrival_interval_s": 0.001, "max_stages": 3},
        },
        env={},
    )
    profiler = Profiler(cache_dir=tmp_path / "profiles", warmup=0, repeats=1)
    plan = plan_for_config(config, headroom=budget(1 << 30), profiler=profiler, num_gpus=0)
    assert plan.predicted_memory_bytes <= plan.budget_bytes == 1 << 30
    assert plan.predicted_rate is not None and plan.num_stages <= 3
    assert plan.extra["headroom"]["bound_by"] == "cap"
    assert Plan.from_json(plan.to_json()) == plan
    assert len(list((tmp_path / "profiles").glob("*.json"))) == 1

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
