"""OCL hooks: registry, Vanilla, ER's reservoir under a byte budget, and the engine's use of them."""

from __future__ import annotations

import pytest
import torch

from ferretd.config import TrainingConfig
from ferretd.engine.executors import ExecutorSpec
from ferretd.engine.pipeline import PipelineLearner
from ferretd.engine.plan import Plan
from ferretd.models import mlp
from ferretd.ocl.base import OCL_METHODS, OclMethod, make_ocl
from ferretd.ocl.er import ExperienceReplay


def test_registry_knows_vanilla_and_er():
    assert isinstance(make_ocl("vanilla"), OclMethod)
    er = make_ocl("er", replay_bytes=1000, replay_per_sample=2, unknown=1)
    assert isinstance(er, ExperienceReplay) and er.replay_per_sample == 2
    assert {"vanilla", "er"} <= set(OCL_METHODS)
    with pytest.raises(ValueError, match="unknown OCL method"):
        make_ocl("nope")


def test_vanilla_changes_nothing():
    method = make_ocl("vanilla")
    x, y = torch.randn(2, 4), torch.tensor([0, 1])
    assert method.augment(x, y) == (x, y)
    assert method.extra_loss(torch.randn(2, 3), y) is None


def test_er_reservoir_respects_the_byte_budget():
    per_sample = 4 * 4 + 8
    er = ExperienceReplay(replay_bytes=10 * per_sample, replay_per_sample=1, seed=1)
    for i in range(100):
        er.observe(torch.full((1, 4), float(i)), torch.tensor([i % 3]))
    assert er.capacity == 10 and len(er) == 10
    assert er.memory_bytes() <= 10 * per_sample
    values = {int(t[0]) for t in er._x}
    assert max(values) > 10  # later samples made it in (reservoir, not first-come)


def test_er_mixes_replay_into_the_microbatch_and_round_trips():
    er = ExperienceReplay(replay_bytes=1 << 16, replay_per_sample=2, seed=0)
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    assert er.augment(x, y)[0].shape[0] == 3  # empty buffer: nothing to replay
    er.observe(x, y)
    xa, ya = er.augment(torch.randn(2, 4), torch.tensor([1, 1]))
    assert xa.shape == (5, 4) and ya.shape == (5,)
    clone = ExperienceReplay(replay_bytes=1 << 16, replay_per_sample=2)
    clone.load_state_dict(er.state_dict())
    a = er.augment(x, y)
    b = clone.augment(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_engine_trains_on_replayed_samples_and_adds_extra_loss():
    class Penalty(OclMethod):
        name = ""

        def __init__(self):
            self.calls = 0

        def extra_loss(self, logits, y, x=None):
            self.calls += 1
            return 0.0 * logits.sum()

    torch.manual_seed(0)
    model = mlp((4,), 3, (8,))
    er = ExperienceReplay(replay_bytes=1 << 16, replay_per_sample=1, seed=0)
    learner = PipelineLearner(
        model,
        Plan.uniform(2, (1,)),
        TrainingConfig(microbatch=1),
        ocl=er,
        executor=ExecutorSpec("virtual", record_inputs=True),
    )
    for i in range(6):
        learner.learn_one(torch.randn(4).numpy(), i % 3)
    assert learner.flush()
    sizes = [x.shape[0] for (_, x, _) in learner.core.inputs.values()]
    assert sizes[0] == 1 and all(s == 2 for s in sizes[1:])
    assert learner.status()["ocl"]["size"] == 6
    penalty = Penalty()
    plan = Plan.uniform(2, (1,))
    other = PipelineLearner(mlp((4,), 3, (8,)), plan, TrainingConfig(), ocl=penalty, executor="virtual")
    other.learn_one(torch.randn(4).numpy(), 1)
    other.flush()
    assert penalty.calls >= 1
