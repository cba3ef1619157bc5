"""Memory and rate models: formulas on hand-sized profiles (no torch needed)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from ferretd.engine.plan import Plan
from ferretd.planner.memory import MemoryParams, expected_versions, plan_versions, predict_memory, stage_versions
from ferretd.planner.rate import RateParams, predict_rate


def test_single_stage_single_worker_by_hand(make_profile) -> None:
    prof = make_profile([0.001, 0.002], param_bytes=[1000, 3000], act_bytes=[500, 700])
    mem = predict_memory(prof, Plan.uniform(2), MemoryParams(optimizer_factor=1, compensation_factor=2))
    # 1 version + 1 grad + 1 template + 1 momentum + 2 lambda state, each 4000; acts 1 x (500+700)
    assert mem.version_bytes == 4000 and mem.grad_bytes == 4000 and mem.delta_bytes == 0
    assert mem.optimizer_bytes == 4000 and mem.compensation_bytes == 8000
    assert mem.activation_bytes == 1200
    # an update builds the next version and momentum out of place before the old ones go, and the
    # divergence guard takes the step difference of all tensors at once
    assert mem.transient_bytes == 3 * 4000 and mem.transit_bytes == 0 and mem.log_bytes == 0
    assert mem.total_bytes == 6 * 4000 + 1200 + 3 * 4000 == sum(mem.stage_bytes) + mem.transient_bytes


def test_versions_one_worker_match_plan_formula(six_block_profile) -> None:
    for acc in (1, 2, 3):
        plan = Plan.uniform(6, (1, 2, 4), 1, accumulation=acc, omit_stages=(1,))
        for j in range(plan.num_stages):
            assert stage_versions(plan, j) == plan.max_versions(0, j)


def test_versions_shared_across_workers(six_block_profile) -> None:
    # engine bookkeeping: with N saturated workers every in-flight microbatch can pin its own
    # version, and the current version is shared: N (P - j) at a = 1
    plan = Plan.uniform(6, (2, 4), 3)
    assert plan_versions(plan) == (9, 6, 3)
    assert plan_versions(plan, exact=False) == (9, 6, 3)
    one = predict_memory(six_block_profile, Plan.uniform(6, (2, 4), 1))
    three = predict_memory(six_block_profile, plan)
    w = [six_block_profile.stage_param_bytes(a, b) for a, b in plan.stage_blocks()]
    assert three.version_bytes - one.version_bytes == 6 * w[0] + 4 * w[1] + 2 * w[2]


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("acc", [1, 2, 3])
def test_versions_match_engine_simulation(workers: int, acc: int) -> None:
    from ferretd.engine.clock import OnlineProgram
    from ferretd.engine.simulate import simulate

    p = 4
    plan = Plan.uniform(p, (1, 2, 3), workers, accumulation=acc)
    program = OnlineProgram(p, {(w, s): acc for w in range(workers) for s in range(p)})
    count = 40
    report = simulate(
        program,
        {(s, "F"): 1.0 for s in range(p)} | {(s, "B"): 2.0 for s in range(p)},
        arrivals={m: 0.3 * m for m in range(count)},
        owner={m: m % workers for m in range(count)},
    )
    assert all(sim <= pred for sim, pred in zip(report.max_live_versions, plan_versions(plan), strict=True))
    assert plan_versions(plan) == plan_versions(plan, exact=False)  # closed form exact when identical


def test_deltas_and_accumulation_window(six_block_profile) -> None:
    plan = Plan.uniform(6, (2, 4), 2, accumulation=2)
    base = predict_memory(six_block_profile, plan)
    comp = predict_memory(six_block_profile, plan, MemoryParams.for_training(0.9, "iter_fisher"))
    w = [six_block_profile.stage_param_bytes(a, b) for a, b in plan.stage_blocks()]
    assert comp.delta_bytes == sum((v - 1) * wj for v, wj in zip(comp.versions, w, strict=True))
    assert comp.compensation_bytes == 3 * sum(w) and comp.optimizer_bytes == sum(w)
    assert base.grad_bytes == 2 * 2 * sum(w)  # two workers, windows of two gradients


def test_activations_recompute_and_inflight(make_profile) -> None:
    prof = make_profile([0.001] * 4, act_bytes=[1000] * 4)
    base = Plan.uniform(4, (2,), 1)
    mem = predict_memory(prof, base)
    # stage 0: 2 in flight x 2000, stage 1: 1 x 2000
    assert mem.activation_bytes == 2 * 2000 + 2000
    rec = predict_memory(prof, Plan.uniform(4, (2,), 1, recompute=True))
    assert rec.activation_bytes == (2 * 256 + 2000) + (256 + 2000)
    assert rec.total_bytes < mem.total_bytes


def test_accumulation_and_omission_drop_versions(six_block_profile) -> None:
    p = Plan.uniform(6, (1, 2, 4), 2)
    one = MemoryParams(concurrent_lanes=False)  # one action at a time (virtual clock)
    base = predict_memory(six_block_profile, p, one).total_bytes
    # accumulation helps only where it drops versions (the window itself costs a gradients)
    w = replace(p.workers[0], accumulation=(2, 1, 1, 1))
    acc = predict_memory(six_block_profile, replace(p, workers=(w, w)), one).total_bytes
    omit = predict_memory(six_block_profile, Plan.uniform(6, (1, 2, 4), 2, omit_stages=(0, 1, 2)), one).total_bytes
    assert omit < base and acc < base
    off = replace(p, workers=(p.workers[0], replace(p.workers[1], active=False)))
    assert predict_memory(six_block_profile, off).total_bytes < predict_memory(six_block_profile, p).total_bytes


def test_rate_bounds_and_drops(make_profile) -> None:
    prof = make_profile([0.001, 0.001])
    slow_stream = predict_rate(prof, Plan.uniform(2), RateParams(arrival_interval_s=1.0))
    assert 0.99 < slow_stream.rate <= 1.0 and slow_stream.drop_fraction == 0.0
    fast = predict_rate(prof, Plan.uniform(2), RateParams(arrival_interval_s=0.0005))
    assert fast.drop_fraction == pytest.approx(0.75)
    assert fast.rate < slow_stream.rate
    two = predict_rate(prof, Plan.uniform(2, (), 4), RateParams(arrival_interval_s=0.0005))
    assert two.drop_fraction == 0.0 and two.rate > fast.rate


def test_each_knob_costs_rate_when_saturated(six_block_profile) -> None:
    rp = RateParams(arrival_interval_s=0.002)
    part = (1, 2, 4)
    base = predict_rate(six_block_profile, Plan.uniform(6, part, 2), rp).rate
    for kwargs in ({"recompute": True}, {"accumulation": 3}, {"omit_stages": (0,)}):
        worse = predict_rate(six_block_profile, Plan.uniform(6, part, 2, **kwargs), rp).rate
        assert worse < base, kwargs
    fewer = predict_rate(six_block_profile, Plan.uniform(6, part, 1), rp).rate
    assert fewer < base


def test_omission_is_free_when_the_pipeline_is_idle(six_block_profile) -> None:
    rp = RateParams(arrival_interval_s=10.0, decay_per_arrival=0.0)
    plain = predict_rate(six_block_profile, Plan.uniform(6, (1, 2, 4), 1), rp).rate
    omit = predict_rate(six_block_profile, Plan.uniform(6, (1, 2, 4), 1, omit_stages=(0, 1)), rp).rate
    assert math.isclose(plain, omit, rel_tol=1e-3)


def test_rate_params_validation() -> None:
    with pytest.raises(ValueError, match="arrival_interval_s"):
        RateParams(arrival_interval_s=0.0)


def test_stage_input_shared_with_upstream_output(make_profile) -> None:
    prof = make_profile([0.001] * 2, act_bytes=[1000, 1000])
    chained = replace(prof, blocks=(replace(prof.blocks[0], saves_output=True), prof.blocks[1]))
    plan = Plan.uniform(2, (1,), 1)
    # stage 1's saved input (256 bytes) is stage 0's saved output: counted upstream only
    assert predict_memory(chained, plan).activation_bytes == predict_memory(prof, plan).activation_bytes - 256
    rec = Plan.uniform(2, (1,), 1, recompute=True)
    assert predict_memory(chained, rec).activation_bytes == predict_memory(prof, rec).activation_bytes


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_expected_versions_within_bound(six_block_profile, workers: int) -> None:
    for t_d in (0.0005, 0.002, 0.05):
        plan = Plan.uniform(6, (1, 2, 4), workers)
        expected = expected_versions(six_block_profile, plan, t_d)
        bound = plan_versions(plan)
        assert all(1 <= e <= b for e, b in zip(expected, bound, strict=True))
        if workers == 1 and t_d == 0.0005:  # saturated single worker: the notes' formula
            assert expected == bound == (4, 3, 2, 1)
    assert expected == (1, 1, 1, 1)  # a slow stream never overlaps microbatches


def test_joint_peak_of_versions_deltas_and_windows(make_profile) -> None:
    """The replay's joint peak: by hand for one worker, and below the sum of peaks when workers'
    accumulation windows fill in turn."""
    from ferretd.engine.clock import OnlineProgram
    from ferretd.engine.simulate import simulate
    from ferretd.planner.memory import MemoryParams, expected_memory, expected_versions, predict_memory

    one = simulate(OnlineProgram(1, {(0, 0): 2}), {(0, "F"): 1.0, (0, "B"): 1.0, (0, "U"): 0.0},
                   arrivals={m: float(m) for m in range(6)}, owner=dict.fromkeys(range(6), 0),
                   stage_bytes=[100])  # fmt: skip
    assert one.peak_held_bytes == 100 * (1 + 2), "current version + a full window of 2 gradients"

    profile = make_profile([1e-3, 1e-3, 1e-3])
    plan = Plan.uniform(3, (1, 2), 2, recompute=True, accumulation=2)
    params = MemoryParams.for_training(0.0, "none")
    t_d = 1e-3 / 4
    summed = predict_memory(profile, plan, params, versions=expected_versions(profile, plan, t_d)).total_bytes
    joint = expected_memory(profile, plan, params, t_d)
    assert joint < summed, "two workers' windows are not full at the same moment"
    assert joint <= predict_memory(profile, plan, params).total_bytes
