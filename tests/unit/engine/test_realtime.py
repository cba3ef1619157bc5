"""The real-time executor: lanes on threads, shaken by random sleeps, still equal its replay log."""

from __future__ import annotations

import math
import random
import time

import pytest
import torch

from ferretd.config import TrainingConfig
from ferretd.engine.core import PipelineCore
from ferretd.engine.executors import ExecutorSpec
from ferretd.engine.pipeline import PipelineLearner
from ferretd.engine.plan import Plan, WorkerPlan
from ferretd.engine.runtime import replay

TR = TrainingConfig(lr=0.1, momentum=0.9, microbatch=1)


def _plans():
    p = 3
    mixed = Plan(
        num_blocks=3,
        partition=Plan.even_partition(3, p),
        devices=("cpu",) * p,
        workers=(
            WorkerPlan(recompute=True, accumulation=(2, 1, 1), omit=(False, True, False)),
            WorkerPlan(recompute=False, accumulation=(1, 2, 1), omit=(True, False, False)),
            WorkerPlan(active=False, accumulation=(1, 1, 1), omit=(False, False, False)),
        ),
    )
    return [Plan.uniform(3, Plan.even_partition(3, p), workers=2), mixed, Plan.uniform(3, (1,), workers=1)]


def test_twenty_jittered_realtime_runs_each_equal_their_replay(make_mlp, stream):
    x, y = stream(10)
    plans = _plans()
    for run in range(20):
        plan = plans[run % len(plans)]
        rng = random.Random(run)
        learner = PipelineLearner(
            make_mlp(),
            plan,
            TR,
            executor=ExecutorSpec(
                "realtime",
                record_inputs=True,
                log_limit=None,
                jitter=lambda _action, rng=rng: time.sleep(rng.random() * 0.002),
            ),
            devices="plan",
        )
        outcomes = []
        for xi, yi in zip(x, y, strict=True):
            learner.learn_one(xi, int(yi), outcomes.append)
            assert learner.predict_one(xi).shape == (3,)  # reads current versions while lanes train
        assert learner.flush(timeout=30), f"run {run} did not drain"
        learner.close()
        assert len(outcomes) == len(x)
        fresh = PipelineCore(make_mlp(), plan, TR)
        mismatches = replay(list(learner.core.log), fresh, learner.core.inputs)
        assert mismatches == [], f"run {run}: {mismatches[:3]}"
        got, want = learner.core.full_state(), fresh.full_state()
        assert all(torch.equal(got[k], want[k]) for k in want), f"run {run}: weights differ from the replay"
        if len(plan.active_workers) == 1:
            stats = learner.core.stats()
            p = plan.num_stages
            assert all(s["max_staleness"] <= p - 1 - j for j, s in enumerate(stats))


def test_realtime_single_worker_respects_version_bounds(make_mlp, stream):
    x, y = stream(16)
    plan = Plan.uniform(3, Plan.even_partition(3, 3), accumulation=2)
    learner = PipelineLearner(make_mlp(), plan, TR, executor="realtime", devices="plan")
    for xi, yi in zip(x, y, strict=True):
        learner.learn_one(xi, int(yi))
    assert learner.flush(30)
    stats = learner.core.stats()
    assert all(s["max_live_versions"] <= 1 + math.ceil((3 - 1 - j) / 2) for j, s in enumerate(stats))
    util = learner.status()["lane_utilisation"]
    assert set(util) == {"w0s0", "w0s1", "w0s2"} and all(0.0 <= u <= 1.0 for u in util.values())
    learner.close()


def test_a_failing_lane_surfaces_on_flush(make_mlp):
    learner = PipelineLearner(make_mlp(), Plan.uniform(3, (1,)), TR, executor="realtime", devices="plan")
    learner.core.add_microbatch(99, 0, torch.zeros(1, 5), torch.zeros(1, dtype=torch.long), [])  # wrong width
    learner.executor.submit(99, 0)
    with pytest.raises(RuntimeError, match="lane failed"):
        learner.flush(10)
    learner.close()


def test_lanes_set_their_own_intra_op_threads(make_mlp, stream):
    from ferretd.engine.clock import OnlineProgram
    from ferretd.engine.executors import build_executor

    x, y = stream(2)
    plan = Plan.uniform(3, (1,))
    core = PipelineCore(make_mlp(), plan, TR)
    seen = []
    program = OnlineProgram(2, {(0, 0): 1, (0, 1): 1})
    spec = ExecutorSpec("realtime", threads=2, jitter=lambda _a: seen.append(torch.get_num_threads()))
    executor = build_executor(spec, core, program)
    core.add_microbatch(0, 0, torch.as_tensor(x[:1]), torch.as_tensor(y[:1]), [])
    executor.submit(0, 0)
    assert executor.drain(10)
    executor.close()
    assert seen and set(seen) == {2}
    assert torch.get_num_threads() == 1  # the caller's thread is untouched
