"""The process executor: same math as the thread lanes and the replay, and a lost worker is survived."""

from __future__ import annotations

import os
import signal
from collections import Counter

import numpy as np
import pytest
import structlog
import structlog.testing
import torch

from ferretd.config import TrainingConfig
from ferretd.engine.core import PipelineCore
from ferretd.engine.executors import ExecutorSpec
from ferretd.engine.pipeline import PipelineLearner
from ferretd.engine.plan import Plan
from ferretd.engine.process import WORKER_LOST, ProcessExecutor
from ferretd.engine.runtime import replay
from ferretd.engine.sequential import SequentialLearner

TR = TrainingConfig(lr=0.1, momentum=0.9, microbatch=2)


def _run(make_mlp, plan: Plan, executor: str, x: np.ndarray, y: np.ndarray) -> PipelineLearner:
    learner = PipelineLearner(
        make_mlp(), plan, TR, executor=ExecutorSpec(executor, record_inputs=True, log_limit=None), devices="plan"
    )
    for xi, yi in zip(x, y, strict=True):
        learner.learn_one(xi, int(yi))
    assert learner.flush(60)
    return learner


def test_p1n1_process_equals_threads_and_plain_sgd(make_mlp, stream) -> None:
    x, y = stream(16)
    plan = Plan.uniform(3)
    proc = _run(make_mlp, plan, "process", x, y)
    assert isinstance(proc.executor, ProcessExecutor)
    threads = _run(make_mlp, plan, "realtime", x, y)
    virtual = _run(make_mlp, plan, "virtual", x, y)  # one lane: F, B, U per microbatch
    sgd = SequentialLearner(make_mlp(), TR)  # plain SGD on the whole model
    for xi, yi in zip(x, y, strict=True):
        sgd.learn_one(xi, int(yi))
    sgd.flush()
    got = proc.core.full_state()
    for want in (threads.core.full_state(), virtual.core.full_state(), sgd.model.state_dict()):
        assert all(torch.equal(got[k], want[k]) for k in got)
    for learner in (proc, threads, virtual):
        learner.close()


@pytest.mark.parametrize(
    "plan",
    [
        Plan.uniform(3, (1,)),
        Plan.uniform(3, (1, 2), 2, recompute=True, accumulation=2, omit_stages=(2,)),
    ],
    ids=["P2N1", "P3N2-recompute-a2-omit"],
)
def test_process_uses_stashed_versions_and_equals_its_replay(make_mlp, stream, plan: Plan) -> None:
    x, y = stream(24)
    proc = _run(make_mlp, plan, "process", x, y)
    proc.close()
    assert proc.core.stats()[0]["max_staleness"] >= 1, "stage 0 trained on a stashed (older) version"
    fresh = PipelineCore(make_mlp(), plan, TR)
    assert replay(list(proc.core.log), fresh, proc.core.inputs) == []
    got, want = proc.core.full_state(), fresh.full_state()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_killed_worker_process_degrades_without_losing_the_ledger(make_mlp, stream) -> None:
    x, y = stream(40)
    learner = PipelineLearner(make_mlp(), Plan.uniform(3, (1,), workers=2), TR, executor="process", devices="plan")
    outcomes: Counter[int] = Counter()
    reasons: Counter[str] = Counter()

    def done(i: int):
        def cb(outcome) -> None:
            outcomes[i] += 1
            reasons["trained" if outcome.trained else outcome.reason] += 1

        return cb

    for i in range(12):
        learner.learn_one(x[i], int(y[i]), done(i))
    assert learner.flush(60)
    victim = learner.executor.procs[(1, 0)]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    for i in range(12, 40):
        learner.learn_one(x[i], int(y[i]), done(i))
    assert learner.flush(60)
    assert learner.executor.lost == {1} and learner.active == [0]
    assert sorted(outcomes) == list(range(40)) and set(outcomes.values()) == {1}, "every sample settled once"
    # worker 0 trains its half; worker 1's share until the loss is seen is dropped, never lost
    assert reasons[WORKER_LOST] >= 1 and reasons["trained"] >= 12 + 14
    assert reasons["trained"] + reasons[WORKER_LOST] == 40
    before = reasons["trained"]
    for i in range(40, 50):  # after the loss every sample goes to the surviving worker
        learner.learn_one(x[i % 40], int(y[i % 40]), done(i))
    assert learner.flush(60)
    assert reasons["trained"] == before + 10 and set(outcomes.values()) == {1}
    learner.close()


def test_when_every_worker_process_is_lost_thread_lanes_train_on_and_say_so(make_mlp, stream) -> None:
    x, y = stream(40)
    learner = PipelineLearner(make_mlp(), Plan.uniform(3, (), workers=2), TR, executor="process", devices="plan")
    trained: list[bool] = []
    for i in range(8):
        learner.learn_one(x[i], int(y[i]), lambda o: trained.append(o.trained))
    assert learner.flush(60)
    for victim in learner.executor.procs.values():
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
    sent = 8
    with structlog.testing.capture_logs() as logs:
        while learner.executor.kind == "process" and sent < 40:  # each lane finds its worker gone
            learner.learn_one(x[sent], int(y[sent]), lambda o: trained.append(o.trained))
            sent += 1
            assert learner.flush(60)
    assert learner.executor.kind == "realtime", "thread lanes took over"
    assert any(e["event"] == "process_workers_lost" for e in logs), "the fallback is logged"
    for i in range(5):
        learner.learn_one(x[i], int(y[i]), lambda o: trained.append(o.trained))
    assert learner.flush(60)
    assert len(trained) == sent + 5 and trained[-5:] == [True] * 5, "every sample settled; the thread lanes train"
    learner.close()
