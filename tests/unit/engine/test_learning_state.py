"""The learner's learning state (normaliser, optimiser, weight average, guard) survives a checkpoint
file and a switch between the sequential and the pipeline learner (a re-plan)."""

from __future__ import annotations

import numpy as np
import torch

from ferretd.checkpoint import CheckpointStore
from ferretd.config import TrainingConfig
from ferretd.engine.pipeline import PipelineLearner
from ferretd.engine.plan import Plan
from ferretd.engine.sequential import SequentialLearner
from ferretd.lifecycle import adapt_learner_state
from ferretd.models.normalize import RunningNorm

TR = TrainingConfig(optimizer="adam", lr=0.01)


def _outputs(learner, x):
    with torch.no_grad():
        return learner.export_module()(torch.as_tensor(x)).numpy()


def test_state_survives_a_checkpoint_file_and_a_switch_to_the_pipeline(make_mlp, stream, tmp_path):
    x, y = stream(40)
    x = x * np.array([1e-3, 1.0, 1e2, 1e4, 1e5, 1e6], dtype=np.float32)
    seq = SequentialLearner(make_mlp(), TR, norm=RunningNorm((6,)), ema_decay=0.9)
    for xi, yi in zip(x[:30], y[:30], strict=True):
        seq.learn_one(xi, int(yi))
    store = CheckpointStore(tmp_path)
    store.save({"learner": seq.state_dict()})
    saved = store.load(store.sequences()[-1])["learner"]

    plan = Plan.uniform(3, Plan.even_partition(3, 3))
    pipe = PipelineLearner(make_mlp(seed=7), plan, TR, executor="virtual", norm=RunningNorm((6,)), ema_decay=0.9)
    pipe.load_state_dict(adapt_learner_state(saved, None, plan, "pipeline"))
    assert pipe.norm.count == 30 and np.array_equal(pipe.norm.mean, seq.norm.mean)
    np.testing.assert_array_equal(_outputs(pipe, x[30:]), _outputs(seq, x[30:]))  # averaged weights + normaliser
    np.testing.assert_array_equal(pipe.predict_one(x[31]), seq.predict_one(x[31]))  # latest weights
    for name, entry in seq.state_dict()["optim"].items():
        got = pipe.state_dict()["optim"][name]
        assert got["steps"] == entry["steps"] == 30 and torch.equal(got["second"], entry["second"])
    for xi, yi in zip(x[30:], y[30:], strict=True):  # both keep learning from the restored state
        seq.learn_one(xi, int(yi))
        pipe.learn_one(xi, int(yi))
    pipe.flush()
    assert pipe.norm.count == seq.norm.count == 40
