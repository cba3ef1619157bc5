"""The lean sequential step (issue 12): bitwise the reference step it replaced, refusals included.

The reference below is the step as it was before the lean path: the model called as a module,
``nn.CrossEntropyLoss``, ``np.stack`` of the pending samples, ``optimizer_step`` with a fresh
optimiser state every update, and the guard's two-call check over the step and the old weights
(``_reference_check_update``). The lean learner must produce the same weights, optimiser state,
guard state and outcomes for the same stream, whatever path each piece takes (pre-bound forward
or module, view of a float32 sample or ``np.stack``, plain SGD or the generic optimiser).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

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
    optimizer_step,
)
from ferretd.engine.sequential import SequentialLearner
from ferretd.models import mlp


def _reference_check_update(guard: DivergenceGuard, old, new) -> str | None:
    """The guard's update check before the lean path: one fused norm call over step and weights."""
    k = len(new)
    with torch.no_grad():
        if guard.step_ratio > 0:
            norms = torch._foreach_norm([*torch._foreach_sub(list(new), list(old)), *old])
            squares = torch.stack(norms).double().pow(2).tolist()
            step_sq, norm_sq = sum(squares[:k]), sum(squares[k:])
            if math.isfinite(step_sq):
                return DIVERGED_EXPLODING if step_sq > guard.step_ratio**2 * max(norm_sq, 1.0) else None
        if not math.isfinite(sum(torch.stack(torch._foreach_norm(list(new))).double().pow(2).tolist())):
            return DIVERGED_NONFINITE
    if guard.step_ratio > 0 and math.isfinite(norm_sq):
        return DIVERGED_EXPLODING
    return None


class _Reference:
    """The sequential step before the lean path, for replays."""

    def __init__(self, model: nn.Module, training: TrainingConfig) -> None:
        self.model, self.training = model, training
        self.params = list(model.parameters())
        self.optim = OptimStates.empty(len(self.params))
        self.guard = DivergenceGuard.from_config(training)
        self.loss_fn = nn.CrossEntropyLoss()
        self.pending: list[tuple[np.ndarray, int]] = []
        self.outcomes: list[LearnOutcome] = []

    def learn_one(self, x: np.ndarray, y: int) -> None:
        self.pending.append((x, int(y)))
        if len(self.pending) >= self.training.microbatch:
            self.step()

    def step(self) -> None:
        xb = torch.as_tensor(np.stack([x for x, _ in self.pending]), dtype=torch.float32)
        yb = torch.as_tensor([y for _, y in self.pending], dtype=torch.long)
        n, self.pending = len(self.pending), []
        logits = self.model(xb)
        predicted = logits.detach().argmax(1).tolist()  # test, then train: before the update
        loss = self.loss_fn(logits, yb)
        refused = self.guard.check_loss(float(loss.detach()))
        if refused is None:
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
            grads = tuple(g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.params, strict=True))
            current = tuple(p.detach() for p in self.params)
            new, optim = optimizer_step(current, list(grads), self.optim, self.training)
            refused = _reference_check_update(self.guard, current, new)
            if refused is None:
                with torch.no_grad():
                    torch._foreach_copy_(tuple(self.params), list(new))
                self.optim = optim
        if refused is not None:
            self.guard.refused(refused)
        self.outcomes += [LearnOutcome(refused is None, refused or "", guess) for guess in predicted]
        assert len(predicted) == n


def _tanh_mlp() -> nn.Sequential:
    """Not pre-bindable (Tanh): the learner calls the module."""
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


CASES = {
    "default sgd, mb 1": ({}, "mlp", "float32"),
    "default sgd, mb 3": ({"microbatch": 3}, "mlp", "float32"),
    "momentum + wd": ({"momentum": 0.9, "weight_decay": 1e-3}, "mlp", "float32"),
    "adam": ({"optimizer": "adam", "lr": 0.01}, "mlp", "float32"),
    "read-only float32 samples": ({}, "mlp", "readonly32"),
    "float64 samples": ({}, "mlp", "float64"),
    "module path (tanh)": ({}, "tanh", "float32"),
    "guard off": ({"guard_loss_factor": 0.0, "guard_step_ratio": 0.0}, "mlp", "float32"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_lean_step_is_bitwise_the_reference_step(case: str) -> None:
    overrides, arch, samples = CASES[case]
    rng = np.random.default_rng(7)
    xs = rng.normal(size=(64, 6)).astype(np.float32)
    ys = rng.integers(0, 3, size=64)
    if samples == "float64":
        xs = xs.astype(np.float64)
    elif samples == "readonly32":  # e.g. np.frombuffer of a wire frame: torch must not wrap it
        xs.flags.writeable = False
    build = (lambda: mlp((6,), 3, (10, 8))) if arch == "mlp" else _tanh_mlp
    torch.manual_seed(3)
    model = build()
    ref_model = build()
    ref_model.load_state_dict(model.state_dict())
    training = TrainingConfig(**{"lr": 0.05, **overrides})
    learner = SequentialLearner(model, training)
    assert (learner._forward is None) == (arch == "tanh")
    ref = _Reference(ref_model, training)
    seen: list[LearnOutcome] = []
    for i in range(64):
        if i == 30:  # one exploding update, then one non-finite, both refused by both
            learner.training = ref.training = dataclasses.replace(training, lr=1e12)
        elif i == 33:
            learner.training = ref.training = dataclasses.replace(training, lr=float("inf"))
        elif i == 36:
            learner.training = ref.training = training
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch warns when it wraps a read-only array
            learner.learn_one(xs[i], int(ys[i]), seen.append)
        ref.learn_one(xs[i], int(ys[i]))
    learner.flush()
    if ref.pending:
        ref.step()
    assert seen == ref.outcomes
    for p, q in zip(learner.model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(p, q), case
    state = learner.state_dict()
    assert learner.guard.state() == ref.guard.state()
    expected = ref.optim.to_dict(learner.names)
    assert state["optim"].keys() == expected.keys()
    for name, entry in expected.items():
        assert state["optim"][name].keys() == entry.keys(), name
        for key, value in entry.items():
            same = (
                value == state["optim"][name][key] if key == "steps" else torch.equal(value, state["optim"][name][key])
            )
            assert same, (case, name, key)
    if overrides.get("guard_step_ratio", 1.0) > 0:
        assert not all(o.trained for o in seen)


def test_plain_sgd_drops_moments_loaded_from_another_optimizer() -> None:
    """A momentum state resumed into plain SGD is dropped at the first update, as the
    out-of-place default step did (it returned states without moments)."""
    torch.manual_seed(0)
    learner = SequentialLearner(mlp((6,), 3, (10, 8)), TrainingConfig(lr=0.05, momentum=0.9))
    x = np.ones(6, dtype=np.float32)
    learner.learn_one(x, 1)
    assert all("first" in e for e in learner.state_dict()["optim"].values())
    learner.training = TrainingConfig(lr=0.05)
    learner.learn_one(x, 1)
    optim = learner.state_dict()["optim"]
    assert all(set(e) == {"steps"} and e["steps"] == 2 for e in optim.values())


@pytest.mark.parametrize("ratio", [1.0, 0.5, 2.0])
def test_guard_short_step_shortcut_decides_like_the_full_check(ratio: float) -> None:
    """A finite step no longer than the ratio is accepted without the weights' norm; steps around
    the ratio on weights of norm below and above 1 decide as the full two-call check does."""
    guard = DivergenceGuard(loss_factor=100.0, step_ratio=ratio)
    cases = []
    for weight_norm in (0.0, 0.3, 1.0, 1.7, 40.0):
        old = (torch.full((4,), weight_norm / 2), torch.zeros(3))
        for step in (0.5, 0.99, 1.0, 1.01, 1.5, 1.69, 1.71, 2.5, 39.0, 41.0, 81.0):
            new = (old[0] + step * ratio / 2, old[1])
            cases.append((old, new))
    refused = 0
    for old, new in cases:
        got = guard.check_update(old, new)
        assert got == _reference_check_update(guard, old, new), (old, new)
        refused += got is not None
    assert 0 < refused < len(cases)
