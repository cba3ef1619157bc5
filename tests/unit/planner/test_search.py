"""Search: contiguous partitions (bounded count), budget sweep monotonicity, clear minimum error."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferretd.engine.plan import Plan
from ferretd.planner.memory import MemoryParams, predict_memory
from ferretd.planner.rate import RateParams
from ferretd.planner.search import BudgetTooSmall, PlanSearch, enumerate_partitions, greedy_partition, search


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=1e-4, max_value=1.0), min_size=1, max_size=9), st.integers(1, 9))
def test_partitions_contiguous_and_bounded(times: list[float], max_stages: int) -> None:
    n = len(times)
    parts = enumerate_partitions(times, max_stages)
    assert parts[0] == ()  # single stage always present
    assert len(parts) == len(set(parts))
    assert len(parts) <= (n * n - n) // 2 + 1
    for cuts in parts:
        plan = Plan.uniform(n, cuts)  # validates strictly increasing cut points in 1..n-1
        assert plan.num_stages <= max_stages
        starts = [s for s, _ in plan.stage_blocks()]
        assert starts == sorted(starts) and plan.stage_blocks()[-1][1] == n


def test_greedy_is_fewest_stages_under_cap() -> None:
    times = [3.0, 1.0, 4.0, 2.0, 2.0, 1.0]
    assert greedy_partition(times, 5.0) == (2, 3)  # [3,1] [4] [2,2,1]
    assert greedy_partition(times, 13.0) == ()
    assert greedy_partition(times, 3.5) is None  # block 2 alone exceeds the cap
    cuts = greedy_partition(times, 6.0)
    bounds = [0, *cuts, len(times)]
    assert all(sum(times[a:b]) <= 6.0 for a, b in itertools.pairwise(bounds))


def sweep(profile, rate: RateParams, memory: MemoryParams, gpus: int = 0) -> tuple[PlanSearch, list[Plan]]:
    searcher = PlanSearch(profile, rate, memory, max_workers=4, max_stages=4, num_gpus=gpus)
    low = searcher.minimum_bytes
    high = max(c.memory_bytes for c in searcher.all_candidates()) * 2
    budgets = sorted({int(low * (high / low) ** (k / 40)) for k in range(41)} | {low, high})
    return searcher, [searcher.best(b) for b in budgets]


@pytest.mark.parametrize("t_d", [0.0005, 0.002, 0.05])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_budget_sweep_fits_and_rate_is_monotone(six_block_profile, t_d: float, momentum: float) -> None:
    memory = MemoryParams.for_training(momentum, "iter_fisher")
    _searcher, plans = sweep(six_block_profile, RateParams(arrival_interval_s=t_d), memory)
    rates = [p.predicted_rate for p in plans]
    for plan in plans:
        assert plan.predicted_memory_bytes <= plan.budget_bytes
        assert predict_memory(six_block_profile, plan, memory).total_bytes == plan.predicted_memory_bytes
        assert plan.num_stages <= 4
        assert Plan.from_json(plan.to_json()) == plan
        assert plan.extra["expected_memory_bytes"] <= plan.predicted_memory_bytes
    assert all(b >= a for a, b in itertools.pairwise(rates))
    assert rates[-1] > rates[0]  # more memory buys rate on this profile


def test_unconstrained_is_the_fastest_configuration(six_block_profile) -> None:
    rp = RateParams(arrival_interval_s=0.002)
    searcher = PlanSearch(six_block_profile, rp, max_workers=4, max_stages=4)
    top = searcher.best(1 << 40)
    assert all(not w.recompute and not any(w.omit) and set(w.accumulation) == {1} for w in top.workers)
    assert len(top.workers) == searcher.initial_workers == min(4, math.ceil(six_block_profile.total_time_s / 0.002))


def test_budget_below_minimum_names_it(six_block_profile) -> None:
    searcher = PlanSearch(six_block_profile, RateParams(arrival_interval_s=0.002))
    low = searcher.minimum_bytes
    assert searcher.best(low).predicted_memory_bytes == low
    with pytest.raises(BudgetTooSmall) as info:
        searcher.best(low - 1)
    msg = str(info.value)
    assert str(low) in msg and f"{low / 2**20:.2f} MiB" in msg
    assert info.value.minimum_bytes == low
    with pytest.raises(BudgetTooSmall):
        search(six_block_profile, 10, RateParams(arrival_interval_s=0.002))


def test_devices_follow_gpus(six_block_profile) -> None:
    searcher = PlanSearch(six_block_profile, RateParams(arrival_interval_s=0.001), max_stages=4, num_gpus=2)
    for cand in searcher.all_candidates():
        assert cand.plan.devices == tuple(f"cuda:{j % 2}" for j in range(cand.plan.num_stages))
    cpu = PlanSearch(six_block_profile, RateParams(arrival_interval_s=0.001)).best(1 << 40)
    assert set(cpu.devices) == {"cpu"}


def test_max_stages_caps_partitions(six_block_profile) -> None:
    searcher = PlanSearch(six_block_profile, RateParams(arrival_interval_s=0.001), max_stages=2)
    assert all(len(p) + 1 <= 2 for p in searcher.partitions)
    assert searcher.best(1 << 40).num_stages <= 2
