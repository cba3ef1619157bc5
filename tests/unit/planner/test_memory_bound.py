"""The memory bound's bounded pieces (issue 12): action log, template, transients at the allocator.

Each piece the old model missed is checked against the real object: the action log stays at its
bound and its Python bytes stay under ``LOG_ENTRY_BYTES`` each (tracemalloc: these are Python
objects); the only real weight copy besides the versions is the learner's template (stage modules
sit on the meta device); and a short conv run measured at the allocator (torch.profiler memory
events) never exceeds the planner's bound.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from ferretd.config import TrainingConfig
from ferretd.engine.executors import ExecutorSpec
from ferretd.engine.pipeline import DEFAULT_LOG_LIMIT, PipelineLearner
from ferretd.engine.plan import Plan
from ferretd.models import convnet, mlp
from ferretd.planner.memory import LOG_ENTRY_BYTES, MemoryParams, predict_memory
from ferretd.planner.profile import AllocationRecorder, Profiler

TR = TrainingConfig(lr=0.01)


def _feed(learner: PipelineLearner, n: int, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        learner.learn_one(rng.normal(size=shape).astype(np.float32), i % 3)
    learner.flush()


def test_action_log_is_bounded_and_its_bytes_counted() -> None:
    assert DEFAULT_LOG_LIMIT <= 1024, "the action log's default must stay small"
    torch.manual_seed(0)
    learner = PipelineLearner(mlp((6,), 3, (8, 8)), Plan.uniform(3, (1, 2)), TR, executor="virtual")
    try:
        _feed(learner, 40, (6,))  # 40 microbatches x 3 stages x 3 actions > the bound
        assert len(learner.core.log) == DEFAULT_LOG_LIMIT
        entries = list(learner.core.log)
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        # what the log holds: re-created entries with the same shapes (actions, tuples, big ints)
        copies = [
            type(e)(type(e.action)(e.action.worker, e.action.stage, e.action.kind, e.action.microbatch + 10**6),
                    tuple(v + 10**6 for v in e.pinned), e.current + 10**6, e.skipped)
            for e in entries
        ]  # fmt: skip
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        used = sum(s.size_diff for s in after.compare_to(before, "filename"))
        assert 0 < used <= len(copies) * LOG_ENTRY_BYTES
    finally:
        learner.close()
    params = MemoryParams(log_entries=DEFAULT_LOG_LIMIT)
    profile = Profiler(warmup=1, repeats=1).profile(mlp((6,), 3, (8, 8)), (6,), 1)
    with_log = predict_memory(profile, Plan.uniform(3, (1, 2)), params)
    assert with_log.log_bytes == DEFAULT_LOG_LIMIT * LOG_ENTRY_BYTES
    assert with_log.total_bytes - predict_memory(profile, Plan.uniform(3, (1, 2))).total_bytes == with_log.log_bytes


def test_template_is_the_one_fixed_weight_copy() -> None:
    torch.manual_seed(0)
    model = convnet((1, 8, 8), 3, (4, 6))
    plan = Plan.uniform(3, (1, 2), 2)
    learner = PipelineLearner(model, plan, TR, executor="virtual")
    try:
        real = 0
        for st in learner.core.stages:
            assert all(p.device.type == "meta" for p in st.runner.module.parameters())
        real += sum(p.numel() * p.element_size() for p in learner.template.parameters() if p.device.type != "meta")
        profile = Profiler(warmup=1, repeats=1).profile(convnet((1, 8, 8), 3, (4, 6)), (1, 8, 8), 1)
        mem = predict_memory(profile, plan, MemoryParams())
        versions_grads_fixed = mem.total_bytes - mem.activation_bytes - mem.transit_bytes - mem.transient_bytes
        fixed = versions_grads_fixed - mem.version_bytes - mem.grad_bytes
        assert fixed == real == profile.total_param_bytes
    finally:
        learner.close()


@pytest.mark.parametrize(
    "plan",
    [Plan.uniform(3, (), 1), Plan.uniform(3, (1,), 2, recompute=True), Plan.uniform(3, (1, 2), 1, accumulation=2)],
    ids=["P1N1", "P2N2-recompute", "P3N1-a2"],
)
def test_allocator_peak_within_bound(plan: Plan) -> None:
    """A conv net at microbatch 16 on the virtual clock: the peak of live torch bytes over the
    learner's whole life stays under the bound (and the transients are what keeps it there)."""
    shape, mb = (1, 16, 16), 16
    torch.manual_seed(0)
    prof = Profiler(warmup=1, repeats=2).profile(convnet(shape, 3, (8, 16)), shape, mb)
    cost = prof.cost_table(plan.stage_blocks())
    training = TrainingConfig(lr=0.01, microbatch=mb)
    torch.manual_seed(0)
    model = convnet(shape, 3, (8, 16))
    with AllocationRecorder() as rec:
        learner = PipelineLearner(model, plan, training, executor=ExecutorSpec.virtual(cost, t_d=1e-6, log_limit=0))
        _feed(learner, 12 * mb * len(plan.active_workers), shape)
        learner.close()
        del learner
    peak = rec.peak
    bound = predict_memory(prof, plan, MemoryParams(concurrent_lanes=False))
    assert peak <= bound.total_bytes, (peak, bound)
    assert peak > bound.total_bytes - bound.transient_bytes - bound.transit_bytes, "the transients are real"
