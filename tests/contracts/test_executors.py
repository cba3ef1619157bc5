"""Contract checks every registered executor kind must pass (discovered from the registry).

A kind added to ``ferretd.engine.executors.EXECUTORS`` runs through every check here: the action
log it leaves replays single-threaded (``runtime.replay``, the reference) to bitwise the same
weights; a drain returns only after every submitted sample is settled, each exactly once; a
failing action surfaces as an error instead of a hang; closing twice is harmless.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from ferretd.config import TrainingConfig
from ferretd.engine.clock import OnlineProgram
from ferretd.engine.core import PipelineCore
from ferretd.engine.executors import EXECUTORS, ExecutorSpec, build_executor
from ferretd.engine.learner import LearnOutcome
from ferretd.engine.pipeline import PipelineLearner
from ferretd.engine.plan import Plan, WorkerPlan
from ferretd.engine.runtime import replay
from ferretd.models import mlp

KINDS = sorted(EXECUTORS)
TR = TrainingConfig(lr=0.1, momentum=0.9, microbatch=2)
#: Two workers over three stages: worker 0 accumulates two gradients at stages 0 and 1, worker 1
#: recomputes and omits the backward at stage 1 (T3): the log holds windows, skipped backwards
#: and stale pins.
PLAN = Plan(
    num_blocks=3,
    partition=(1, 2),
    devices=("cpu",) * 3,
    workers=(WorkerPlan(True, False, (2, 2, 1), (False,) * 3), WorkerPlan(True, True, (1, 1, 1), (False, True, False))),
)
DRAIN_S = 60.0  # a hang fails the check after this long instead of blocking the suite


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return mlp((6,), 3, (10, 10))


def _stream(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6)).astype(np.float32), rng.integers(0, 3, size=n)


def _learner(kind: str, training: TrainingConfig = TR) -> PipelineLearner:
    spec = ExecutorSpec(kind, t_d=0.5, record_inputs=True, log_limit=None)  # type: ignore[arg-type]
    learner = PipelineLearner(_model(), PLAN, training, executor=spec, devices="plan")
    assert learner.executor.kind == kind, "the registered kind runs (no silent fallback)"
    return learner


@pytest.mark.parametrize("kind", KINDS)
def test_the_action_log_replays_to_bitwise_the_same_weights(kind):
    learner = _learner(kind)
    x, y = _stream(24)
    for xi, yi in zip(x, y, strict=True):
        learner.learn_one(xi, int(yi))
    assert learner.flush(DRAIN_S)
    learner.close()
    fresh = PipelineCore(_model(), PLAN, TR)
    assert replay(list(learner.core.log), fresh, learner.core.inputs) == []
    got, want = learner.core.full_state(), fresh.full_state()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    got, want = learner.core.momentum_state(), fresh.momentum_state()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert learner.core.updates == fresh.updates and sum(fresh.updates) > 0


@pytest.mark.parametrize("kind", KINDS)
def test_drain_returns_after_every_sample_is_settled_exactly_once(kind):
    learner = _learner(kind)
    x, y = _stream(19)  # 10 microbatches, the last one partial; worker 0's last window (a = 2) too
    settled: Counter[int] = Counter()
    outcomes: list[LearnOutcome] = []

    def done(i: int):
        return lambda outcome: (settled.update([i]), outcomes.append(outcome))

    for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
        learner.learn_one(xi, int(yi), done(i))
    assert learner.flush(DRAIN_S)
    assert settled == Counter(range(len(x))), "each sample settled exactly once, before drain returned"
    assert learner.core.in_flight() == 0 and learner.core.book.records == {}
    for j, stage in enumerate(learner.core.stages):  # every pin released, in the book and in the store
        assert learner.core.book.pinned(j) == {} and stage.store.live_versions() == 1
    assert any(o.trained for o in outcomes)
    assert learner.flush(DRAIN_S) and sum(settled.values()) == len(x), "a second drain settles nothing again"
    learner.close()
    assert sum(settled.values()) == len(x), "closing reports nothing already reported"


@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_action_raises_instead_of_hanging(kind):
    learner = _learner(kind, TrainingConfig(lr=0.1, microbatch=1))
    x, y = _stream(4)
    for xi, yi in zip(x, y, strict=True):
        learner.learn_one(xi, int(yi))
    assert learner.flush(DRAIN_S)
    with pytest.raises(RuntimeError):  # stage 0's Linear cannot take 5 features: its F fails
        learner.learn_one(np.zeros(5, dtype=np.float32), 0)
        learner.flush(DRAIN_S)  # lanes report the failure on drain
    learner.close()


@pytest.mark.parametrize("kind", KINDS)
def test_close_is_idempotent(kind):
    learner = _learner(kind)
    x, y = _stream(6)
    for xi, yi in zip(x, y, strict=True):
        learner.learn_one(xi, int(yi))
    learner.close()
    learner.close()
    core = PipelineCore(_model(), PLAN, TR)
    program = OnlineProgram(3, {(w, s): 1 for w in range(2) for s in range(3)})
    executor = build_executor(ExecutorSpec(kind), core, program)  # type: ignore[arg-type]
    executor.close()
    executor.close()


@pytest.mark.parametrize("kind", KINDS)
def test_the_spec_string_form_names_the_same_executor(kind):
    spec = ExecutorSpec(kind, t_d=0.25, threads=2, record_inputs=True, log_limit=None)  # type: ignore[arg-type]
    assert ExecutorSpec.parse(str(spec)) == spec and str(spec).startswith(kind)
    assert ExecutorSpec.of(kind) == ExecutorSpec(kind)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_one_lane_reports_the_sequential_learners_test_then_train_predictions(kind):
    """P1 N1 is plain SGD: on every executor each outcome carries the class the training forward
    predicted, before the sample's own update, the same as the sequential learner's."""
    from ferretd.engine.sequential import SequentialLearner

    training = TrainingConfig(lr=0.5, microbatch=2)
    spec = ExecutorSpec(kind, t_d=0.5)  # type: ignore[arg-type]
    lane = PipelineLearner(_model(), Plan.uniform(3), training, executor=spec, devices="plan")
    plain = SequentialLearner(_model(), training)
    x, y = _stream(40)
    got: list[LearnOutcome] = []
    want: list[LearnOutcome] = []
    for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
        lane.learn_one(xi, int(yi), got.append)
        if i % 2:
            assert lane.flush(DRAIN_S)  # one microbatch at a time: the sequential learner's order
        plain.learn_one(xi, int(yi), want.append)
    plain.flush()
    lane.close()
    assert lane.reports_predictions and plain.reports_predictions
    assert len(got) == len(want) == 40 and all(o.predicted is not None for o in got)
    assert [o.predicted for o in got] == [o.predicted for o in want]
    assert len({o.predicted for o in got}) > 1  # the weights moved: not one constant guess
