"""Functional optimisers against torch's, the divergence guard, and the weight average."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from ferretd.config import TrainingConfig
from ferretd.engine.learner import LearnOutcome
from ferretd.engine.optim import (
    DIVERGED_EXPLODING,
    DIVERGED_NONFINITE,
    DivergenceGuard,
    OptimStates,
    WeightAverage,
    optimizer_step,
)
from ferretd.engine.pipeline import PipelineLearner
from ferretd.engine.plan import Plan
from ferretd.engine.sequential import SequentialLearner


def _torch_optimizer(kind: str, params, tr: TrainingConfig):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=tr.lr, momentum=tr.momentum, weight_decay=tr.weight_decay)
    if kind == "adam":
        return torch.optim.Adam(
            params, lr=tr.lr, betas=(tr.beta1, tr.beta2), eps=tr.eps, weight_decay=tr.weight_decay, foreach=False
        )
    return torch.optim.Adagrad(params, lr=tr.lr, eps=tr.eps, weight_decay=tr.weight_decay, foreach=False)


@pytest.mark.parametrize("kind", ["sgd", "plain_sgd", "adam", "adagrad"])
def test_functional_step_matches_torch_optimizer(make_mlp, stream, kind):
    tr = TrainingConfig(optimizer=kind, lr=0.01, momentum=0.9 if kind == "sgd" else 0.0, weight_decay=1e-3)
    if kind == "plain_sgd":  # the default configuration takes a fused path: still bitwise torch's SGD
        tr = TrainingConfig(optimizer="sgd", lr=0.01)
        kind = "sgd"
    model = make_mlp()
    reference = copy.deepcopy(model)
    opt = _torch_optimizer(kind, reference.parameters(), tr)
    params = tuple(p.detach().clone() for p in model.parameters())
    state = OptimStates.empty(len(params))
    x, y = stream(8)
    for i in range(8):
        xb, yb = torch.tensor(x[i : i + 1]), torch.tensor(y[i : i + 1])
        opt.zero_grad(set_to_none=True)
        nn.CrossEntropyLoss()(reference(xb), yb).backward()
        opt.step()
        for p, t in zip(model.parameters(), params, strict=True):
            p.data = t
        grads = torch.autograd.grad(nn.CrossEntropyLoss()(model(xb), yb), list(model.parameters()))
        params, state = optimizer_step(params, list(grads), state, tr)
    for got, want in zip(params, reference.parameters(), strict=True):
        if kind == "sgd":
            assert torch.equal(got, want.detach())
        else:
            torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adagrad"])
def test_step_leaves_inputs_untouched(kind):
    """What lets the guard discard an update: neither the weights nor the state are modified in place."""
    tr = TrainingConfig(optimizer=kind, momentum=0.9)
    params = (torch.randn(4, 3), torch.randn(3))
    grads = [torch.randn(4, 3), torch.randn(3)]
    _, state = optimizer_step(params, grads, OptimStates.empty(2), tr)
    before = [t.clone() for t in params]
    saved = copy.deepcopy(state)
    optimizer_step(params, grads, state, tr)
    assert all(torch.equal(a, b) for a, b in zip(before, params, strict=True))
    for a, b in zip(saved.params, state.params, strict=True):
        for ta, tb in ((a.first, b.first), (a.second, b.second)):
            assert (ta is None and tb is None) or torch.equal(ta, tb)
        assert a.steps == b.steps


def test_state_round_trips_by_name():
    tr = TrainingConfig(optimizer="adam")
    _, state = optimizer_step((torch.ones(2),), [torch.ones(2)], OptimStates.empty(1), tr)
    back = OptimStates.from_dict(["w"], state.to_dict(["w"]), torch.device("cpu"))
    assert back.params[0].steps == 1 and torch.equal(back.params[0].second, state.params[0].second)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adagrad"])
def test_single_stage_pipeline_equals_sequential_bitwise_for_every_optimizer(make_mlp, stream, kind):
    tr = TrainingConfig(optimizer=kind, lr=0.01, momentum=0.5 if kind == "sgd" else 0.0)
    model = make_mlp()
    seq = SequentialLearner(copy.deepcopy(model), tr)
    pipe = PipelineLearner(model, Plan.uniform(3), tr, executor="virtual", devices="plan")
    x, y = stream(10)
    for xi, yi in zip(x, y, strict=True):
        seq.learn_one(xi, int(yi))
        pipe.learn_one(xi, int(yi))
    assert pipe.flush(10)
    got, want = pipe.core.full_state(), dict(seq.model.state_dict())
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert seq.state_dict()["optim"].keys() == pipe.state_dict()["optim"].keys()


def test_optimizer_state_survives_a_replan(make_mlp, stream):
    tr = TrainingConfig(optimizer="adam", lr=0.01)
    learner = PipelineLearner(make_mlp(blocks=4), Plan.uniform(4), tr, executor="virtual", devices="plan")
    x, y = stream(12)
    for xi, yi in zip(x, y, strict=True):
        learner.learn_one(xi, int(yi))
    learner.flush()
    before = learner.state_dict()["optim"]
    assert learner.apply_plan(Plan.uniform(4, Plan.even_partition(4, 2)))
    after = learner.state_dict()["optim"]
    assert before.keys() == after.keys()
    for name, entry in before.items():
        assert after[name]["steps"] == entry["steps"] > 0
        assert torch.equal(after[name]["second"], entry["second"])


# ------------------------------------------------------------------ divergence guard


def test_guard_classifies_losses_and_updates():
    guard = DivergenceGuard(loss_factor=100.0, step_ratio=1.0)
    assert guard.check_loss(float("nan")) == DIVERGED_NONFINITE
    assert guard.check_loss(0.5) is None and guard.check_loss(0.5) is None
    assert guard.check_loss(10.0) is None  # a hard sample, below the floor
    assert guard.check_loss(1e4) == DIVERGED_EXPLODING
    old = (torch.ones(10),)
    assert guard.check_update(old, (torch.full((10,), 1.01),)) is None
    assert guard.check_update(old, (torch.full((10,), 50.0),)) == DIVERGED_EXPLODING
    assert guard.check_update(old, (torch.tensor([float("inf")] * 10),)) == DIVERGED_NONFINITE
    assert DivergenceGuard(loss_factor=0.0, step_ratio=0.0).check_update(old, (torch.full((10,), 50.0),)) is None


def _guard_by_definition(old, new, step_ratio):
    """The guard's documented rule, per tensor and in float64 (the reference for the fused check)."""
    if not all(torch.isfinite(t).all() for t in new):
        return DIVERGED_NONFINITE
    if step_ratio > 0:
        step = math.sqrt(sum(float((n.double() - o.double()).norm()) ** 2 for o, n in zip(old, new, strict=True)))
        norm = math.sqrt(sum(float(o.double().norm()) ** 2 for o in old))
        if step > step_ratio * max(norm, 1.0):
            return DIVERGED_EXPLODING
    return None


def test_fused_guard_decides_like_its_definition():
    """One fused norm call over the step and the old weights (the lean path) must refuse exactly
    what the per-tensor rule refuses: a NaN or inf hidden in one tensor of several, a step past
    the float range, a step just over or under the ratio, and no step check at ratio 0."""
    big = 3e38
    base = (torch.ones(3, 4), torch.full((5,), 2.0), torch.zeros(2))
    cases = [
        (base, tuple(t + 0.01 for t in base)),
        (base, (base[0], torch.tensor([1.0, float("nan"), 1.0, 1.0, 1.0]), base[2])),
        (base, (base[0], base[1], torch.tensor([0.0, float("-inf")]))),
        (base, tuple(t * 3.0 for t in base)),  # step 2x the norm
        (base, tuple(t * 1.9 for t in base)),  # step 0.9x the norm
        ((torch.full((1,), -big),), (torch.full((1,), big),)),  # finite weights, step beyond float32
        ((torch.full((4,), float("inf")),), (torch.ones(4),)),  # non-finite old weights
    ]
    for ratio in (1.0, 0.5, 0.0):
        guard = DivergenceGuard(loss_factor=100.0, step_ratio=ratio)
        for old, new in cases:
            assert guard.check_update(old, new) == _guard_by_definition(old, new, ratio), (ratio, old, new)


def _outcomes() -> tuple[list[LearnOutcome], object]:
    seen: list[LearnOutcome] = []
    return seen, seen.append


def test_sequential_learner_discards_a_diverging_update_and_recovers(make_mlp, stream):
    learner = SequentialLearner(make_mlp(), TrainingConfig(optimizer="sgd", momentum=0.9, lr=0.05))
    x, y = stream(30)
    seen, done = _outcomes()
    for i in range(10):
        learner.learn_one(x[i], int(y[i]), done)
    weights, optim = learner.state_dict()["model"], learner.state_dict()["optim"]
    learner.training = dataclasses.replace(learner.training, lr=1e12)  # one diverging update
    learner.learn_one(x[10], int(y[10]), done)
    assert (seen[-1].trained, seen[-1].reason) == (False, DIVERGED_EXPLODING) and seen[-1].predicted is not None
    state = learner.state_dict()
    assert all(torch.equal(state["model"][k], weights[k]) for k in weights)
    assert all(torch.equal(state["optim"][k]["first"], optim[k]["first"]) for k in optim)
    learner.training = dataclasses.replace(learner.training, lr=float("inf"))
    learner.learn_one(x[11], int(y[11]), done)
    assert (seen[-1].trained, seen[-1].reason) == (False, DIVERGED_NONFINITE)
    learner.training = dataclasses.replace(learner.training, lr=0.05)
    for i in range(12, 30):
        learner.learn_one(x[i], int(y[i]), done)
    assert [o.trained for o in seen[12:]] == [True] * 18 and learner.updates == 28
    assert learner.guard.counts == {DIVERGED_EXPLODING: 1, DIVERGED_NONFINITE: 1}


def test_pipeline_leaves_out_an_exploding_microbatch_on_every_stage(make_mlp, stream):
    tr = TrainingConfig(lr=0.05)
    learner = PipelineLearner(make_mlp(), Plan.uniform(3, Plan.even_partition(3, 3)), tr, executor="virtual")
    x, y = stream(40)
    seen, done = _outcomes()
    for i in range(20):
        learner.learn_one(x[i], int(y[i]), done)
    learner.flush()
    before = learner.core.full_state()
    learner.learn_one(x[20] * 1e30, int(y[20]), done)  # logits explode: loss far above its running mean
    learner.flush()
    assert seen[-1].reason in (DIVERGED_EXPLODING, DIVERGED_NONFINITE) and not seen[-1].trained
    after = learner.core.full_state()
    assert all(torch.equal(before[k], after[k]) for k in before)
    for i in range(21, 40):
        learner.learn_one(x[i], int(y[i]), done)
    learner.flush()
    assert len(seen) == 40 and sum(o.trained for o in seen) == 39
    assert np.isfinite(np.concatenate([t.numpy().ravel() for t in learner.core.full_state().values()])).all()


# ------------------------------------------------------------------ weight average


def test_weight_average_formula():
    avg = WeightAverage(0.9, [torch.zeros(3)])
    values = [torch.full((3,), float(v)) for v in (1, 2, 3, 4)]
    want = torch.zeros(3)
    for t, v in enumerate(values):
        d = min(0.9, (1 + t) / (10 + t))
        want = d * want + (1 - d) * v
        avg.update([v])
    torch.testing.assert_close(avg.tensors[0], want)
    assert avg.count == 4


def test_export_serves_the_average_and_both_learners_agree(make_mlp, stream):
    tr = TrainingConfig(lr=0.05)
    model = make_mlp()
    seq = SequentialLearner(copy.deepcopy(model), tr, ema_decay=0.9)
    pipe = PipelineLearner(model, Plan.uniform(3), tr, executor="virtual", devices="plan", ema_decay=0.9)
    x, y = stream(25)
    for xi, yi in zip(x, y, strict=True):
        seq.learn_one(xi, int(yi))
        pipe.learn_one(xi, int(yi))
    pipe.flush()
    a, b = seq.export_module().state_dict(), pipe.export_module().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    latest = dict(seq.model.state_dict())
    assert any(not torch.equal(a[k], latest[k]) for k in a)  # the average is not the latest weights
    restored = SequentialLearner(make_mlp(seed=5), tr, ema_decay=0.9)
    restored.load_state_dict(seq.state_dict())
    c = restored.export_module().state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("kind", ["adam", "adagrad"])
def test_adaptive_optimizers_run_with_stashing_and_compensation(make_mlp, stream, kind):
    from ferretd.compensation import make_compensator

    tr = TrainingConfig(optimizer=kind, lr=0.01)
    plan = Plan.uniform(3, Plan.even_partition(3, 3), workers=2)
    learner = PipelineLearner(
        make_mlp(), plan, tr, compensator=make_compensator("iter_fisher"), executor="virtual", devices="plan"
    )
    x, y = stream(60)
    seen, done = _outcomes()
    for xi, yi in zip(x, y, strict=True):
        learner.learn_one(xi, int(yi), done)
    assert learner.flush()
    assert len(seen) == 60 and all(o.trained for o in seen)
    assert max(s["max_staleness"] for s in learner.core.stats()) > 0  # stale gradients were compensated
    state = learner.state_dict()
    assert all(entry["steps"] > 0 and "second" in entry for entry in state["optim"].values())
    assert all(bool(torch.isfinite(t).all()) for t in state["model"].values())
