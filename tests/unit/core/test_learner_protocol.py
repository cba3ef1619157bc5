"""Every learner the daemon can build carries the whole OnlineLearner protocol: ``kind`` (the same
as its state dict's), ``in_flight_capacity`` and ``apply_plan`` for a plan of its kind."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ferretd.config import Config
from ferretd.learners import learner_kind, make_learner, plan_from_config


def config_for(stages: int) -> Config:
    config = Config()
    manual = dataclasses.replace(config.pipeline, plan="manual", stages=stages, executor="realtime")
    return dataclasses.replace(config, pipeline=manual)


@pytest.mark.parametrize("stages", [1, 2])
def test_each_learner_reports_its_kind_capacity_and_applies_a_plan_of_its_kind(stages):
    config = config_for(stages)
    plan = plan_from_config(config)
    learner = make_learner(config, plan)
    try:
        assert learner.kind == learner_kind(plan, config)
        assert learner.state_dict()["kind"] == learner.kind
        assert learner.in_flight_capacity() >= 1
        x = np.zeros(config.model.input_shape, dtype=np.float32)
        for label in range(4):
            learner.learn_one(x, label)
        assert learner.apply_plan(plan, timeout=30)
        assert learner.updates == 4, "apply_plan applies what was accepted and keeps the learning state"
    finally:
        learner.close()
