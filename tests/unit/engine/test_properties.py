"""Property test: random plans (P, N, accumulation, omission, recompute, removed workers) keep
every invariant of the engine under the virtual clock."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferretd.config import TrainingConfig
from ferretd.engine.core import PipelineCore
from ferretd.engine.executors import ExecutorSpec
from ferretd.engine.pipeline import PipelineLearner
from ferretd.engine.plan import Plan, WorkerPlan
from ferretd.engine.runtime import replay
from ferretd.models import mlp


@st.composite
def plans(draw):
    p = draw(st.integers(1, 3))
    n = draw(st.integers(1, 3))
    workers = []
    for _ in range(n):
        workers.append(
            WorkerPlan(
                active=draw(st.booleans()),
                recompute=draw(st.booleans()),
                accumulation=tuple(draw(st.lists(st.integers(1, 3), min_size=p, max_size=p))),
                omit=tuple(draw(st.lists(st.booleans(), min_size=p, max_size=p))),
            )
        )
    if not any(w.active for w in workers):
        workers[0] = WorkerPlan(True, workers[0].recompute, workers[0].accumulation, workers[0].omit)
    return Plan(num_blocks=3, partition=Plan.even_partition(3, p), devices=("cpu",) * p, workers=tuple(workers))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans(), t_d=st.sampled_from([0.0, 0.5, 3.0]), microbatch=st.integers(1, 2))
def test_random_plans_keep_the_invariants(plan, t_d, microbatch):
    tr = TrainingConfig(lr=0.05, momentum=0.5, microbatch=microbatch)
    torch.manual_seed(0)
    model = mlp((5,), 3, (6, 6))
    rng = np.random.default_rng(0)
    learner = PipelineLearner(
        model, plan, tr, executor=ExecutorSpec.virtual(t_d=t_d, record_inputs=True, log_limit=None), devices="plan"
    )
    outcomes = []
    for i in range(12):
        learner.learn_one(rng.normal(size=5).astype(np.float32), i % 3, outcomes.append)
    assert learner.flush()
    assert len(outcomes) == 12  # every sample reported exactly once
    assert learner.core.in_flight() == 0
    assert all(stage.store.live_versions() == 1 for stage in learner.core.stages)  # all pins released
    fresh = PipelineCore(model, plan, tr)
    assert replay(list(learner.core.log), fresh, learner.core.inputs) == []
    a, b = learner.core.full_state(), fresh.full_state()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.isfinite(v).all() for v in a.values())
