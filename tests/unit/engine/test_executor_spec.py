"""ExecutorSpec: one value for every executor knob, a string form that parses back, and the factory
that turns it into the executor it names."""

from __future__ import annotations

import pytest

from ferretd.config import TrainingConfig
from ferretd.engine.clock import OnlineProgram
from ferretd.engine.core import PipelineCore
from ferretd.engine.executors import ExecutorSpec, build_executor
from ferretd.engine.pipeline import PipelineLearner
from ferretd.engine.plan import Plan
from ferretd.engine.schedule import Action


def test_the_string_form_names_every_knob_but_code():
    spec = ExecutorSpec.virtual({(1, "B"): 3.0, (0, "F"): 0.5}, t_d=0.25, log_limit=None)
    assert str(spec) == "virtual(t_d=0.25, cost={0F: 0.5, 1B: 3}, log_limit=None)"
    assert ExecutorSpec.parse(str(spec)) == spec
    assert str(ExecutorSpec()) == "realtime" and ExecutorSpec.of("process") == ExecutorSpec("process")
    jittery = ExecutorSpec("realtime", jitter=lambda _a: None)
    assert str(jittery) == "realtime(jitter)" and jittery == ExecutorSpec("realtime")
    with pytest.raises(ValueError, match="jitter has no string form"):
        ExecutorSpec.parse(str(jittery))


@pytest.mark.parametrize("bad", ["gpu", "virtual(t_d=0.5", "virtual(speed=2)"])
def test_a_bad_spec_is_refused_with_its_text(bad):
    with pytest.raises(ValueError, match=r"executor|knob"):
        ExecutorSpec.parse(bad)


def test_the_learner_refuses_an_unknown_kind(make_mlp):
    with pytest.raises(ValueError, match="gpu"):
        PipelineLearner(make_mlp(), Plan.uniform(3), TrainingConfig(), executor="gpu")


def test_the_virtual_clock_charges_the_spec_costs_and_a_recomputing_backward_its_forward(make_mlp):
    plan = Plan.uniform(3, (1,), recompute=True)
    core = PipelineCore(make_mlp(), plan, TrainingConfig())
    program = OnlineProgram(2, {(0, 0): 1, (0, 1): 1})
    executor = build_executor(ExecutorSpec.virtual({(1, "F"): 3.0, (1, "B"): 5.0}), core, program)
    cost = executor.clock.cost  # type: ignore[union-attr]
    assert cost(Action(0, 1, "F", 0)) == 3.0
    assert cost(Action(0, 1, "B", 0)) == 8.0, "recompute runs the forward again inside the backward"
    assert cost(Action(0, 0, "B", 0)) == 2.0 + 1.0  # the defaults: F 1, B 2
    executor.close()
