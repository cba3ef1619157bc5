"""predict_many: one batched forward gives what predict_one gives sample by sample, for every learner."""

from __future__ import annotations

import numpy as np
import pytest

from ferretd.config import TrainingConfig
from ferretd.engine.pipeline import PipelineLearner
from ferretd.engine.plan import Plan
from ferretd.engine.sequential import SequentialLearner
from ferretd.models.normalize import RunningNorm

TR = TrainingConfig(lr=0.05, momentum=0.9, microbatch=2)


def _learners(make_mlp):
    yield "sequential", SequentialLearner(make_mlp(), TR, norm=RunningNorm((6,)))
    plan = Plan.uniform(3, Plan.even_partition(3, 3), workers=2)
    yield "pipeline", PipelineLearner(make_mlp(), plan, TR, executor="virtual", norm=RunningNorm((6,)))


@pytest.mark.parametrize("kind", ["sequential", "pipeline"])
def test_batched_prediction_equals_one_by_one(make_mlp, stream, kind):
    learner = dict(_learners(make_mlp))[kind]
    x, y = stream(40)
    x = x * 1000.0 + 50.0  # raw scale: the running normalisation must be applied to the batch too
    for xi, yi in zip(x[:20], y[:20], strict=True):
        learner.learn_one(xi, int(yi))
    assert learner.flush(30)
    batched = learner.predict_many(x[20:])
    one_by_one = np.stack([learner.predict_one(xi) for xi in x[20:]])
    assert batched.shape == (20, 3)
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-6)
    learner.close()
