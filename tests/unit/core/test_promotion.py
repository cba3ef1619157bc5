"""The snapshot promotion gate with real torch models: a worse candidate is held back, an equal
or better one promoted after the held-back window, the first one at once (the daemon side:
tests/integration/test_promotion_gate.py)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ferretd.promotion import PromotionGate
from tests.integration.harness import digits


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def trained(x: np.ndarray, y: np.ndarray) -> nn.Module:
    model = mlp(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model


def test_worse_candidates_are_held_back_and_good_ones_promoted():
    x, y = digits(700)
    good, bad = trained(x[:500], y[:500]), mlp(1)
    gate = PromotionGate(window=60, tolerance=0.02)
    assert gate.hold(good, {"updates": 1}) == (good, {"updates": 1}), "nothing served yet: promoted at once"

    assert gate.hold(bad, {"updates": 2}) is None and gate.pending
    held = [gate.observe(f, int(label)) for f, label in zip(x[500:560], y[500:560], strict=True)]
    assert held == [None] * 60 and not gate.pending
    assert gate.held_back == 1 and gate.last["decision"] == "held_back"
    assert gate.last["served_accuracy"] > 0.8 > gate.last["candidate_accuracy"]

    equal = copy.deepcopy(good)
    gate.hold(bad, {"updates": 3})
    gate.hold(equal, {"updates": 4})  # a newer candidate replaces the waiting one, window restarts
    assert gate.replaced == 1
    out = [gate.observe(f, int(label)) for f, label in zip(x[560:620], y[560:620], strict=True)]
    assert out[:-1] == [None] * 59 and out[-1] == (equal, {"updates": 4})
    assert gate.promoted == 2 and gate.status()["last"]["decision"] == "promoted"

    gate.serving(bad)  # an explicit snapshot became the baseline: now the good one wins easily
    gate.hold(good, {"updates": 5})
    assert [gate.observe(f, int(label)) for f, label in zip(x[620:680], y[620:680], strict=True)][-1] is not None
