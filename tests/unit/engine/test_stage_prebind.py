"""Pre-bound stage functions (issue 12, lean action path): bitwise the module's own results."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ferretd.engine.stage import StageContext, StageRunner, prebind
from ferretd.models import Block, convnet, mlp


def _models() -> list[tuple[str, nn.Sequential, tuple[int, ...]]]:
    torch.manual_seed(0)
    extra = nn.Sequential(
        Block(nn.Conv1d(2, 3, 3, padding=1, stride=2, bias=False), nn.ReLU(), nn.MaxPool1d(2)),
        Block(nn.Flatten(), nn.Identity(), nn.Dropout(0.0), nn.Linear(6, 4)),
    )
    return [
        ("mlp", mlp((6,), 3, (10, 8)), (6,)),
        ("conv", convnet((1, 8, 8), 3, (4, 6)), (1, 8, 8)),
        ("conv1d-nobias", extra, (2, 8)),
    ]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_prebound_forward_and_backward_are_bitwise_the_module(index: int) -> None:
    name, model, shape = _models()[index]
    runner = StageRunner(0, model, torch.device("cpu"), last=False)
    assert runner.prebound is not None, name
    tensors = runner.initial_tensors()
    x = torch.randn(5, *shape)
    fast = runner.forward(StageContext(0, None, False), tensors, x, None)
    grads_fast, _ = runner.backward(StageContext(0, None, True, inp=x), tensors, torch.ones_like(fast), None)
    runner.prebound = None  # the module path: bind the tensors into the per-thread template copy
    slow = runner.forward(StageContext(0, None, False), tensors, x, None)
    grads_slow, _ = runner.backward(StageContext(0, None, True, inp=x), tensors, torch.ones_like(slow), None)
    assert torch.equal(fast, slow)
    assert all(torch.equal(a, b) for a, b in zip(grads_fast, grads_slow, strict=True))


def test_unknown_layers_and_hooks_fall_back_to_the_module() -> None:
    torch.manual_seed(0)
    assert prebind(nn.Sequential(nn.Linear(3, 3), nn.Tanh()), ["0.weight", "0.bias"]) is None
    hooked = nn.Sequential(nn.Linear(3, 3))
    hooked[0].register_forward_hook(lambda *_: None)
    assert prebind(hooked, ["0.weight", "0.bias"]) is None
    assert prebind(nn.Sequential(nn.BatchNorm1d(3)), ["0.weight", "0.bias"]) is None  # buffers
    runner = StageRunner(0, nn.Sequential(nn.Linear(3, 3), nn.Tanh()), torch.device("cpu"), last=False)
    assert runner.prebound is None
    out = runner.predict(runner.initial_tensors(), torch.ones(2, 3))
    assert out.shape == (2, 3)
