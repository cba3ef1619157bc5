"""MIR, LwF and MAS do what their papers say, checked against hand-computed references."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ferretd.ocl.lwf import LearningWithoutForgetting
from ferretd.ocl.mas import MemoryAwareSynapses
from ferretd.ocl.mir import MaximallyInterferedRetrieval
from ferretd.ocl.view import ModelView


def linear_view(weight: torch.Tensor, bias: torch.Tensor, lr: float = 0.1) -> tuple[ModelView, dict]:
    model = nn.Sequential(nn.Linear(weight.shape[1], weight.shape[0]))
    current = {"0.weight": weight, "0.bias": bias}
    return ModelView(model, lambda: current, lr), current


def test_mir_replays_the_candidates_whose_loss_rises_most_under_the_virtual_step() -> None:
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(3, 4, generator=gen), torch.randn(3, generator=gen)
    view, _ = linear_view(w, b, lr=0.5)
    mir = MaximallyInterferedRetrieval(replay_bytes=1 << 20, replay_per_sample=2, mir_candidates=1000, lr=0.5)
    mir.bind(view)
    memory_x, memory_y = torch.randn(30, 4, generator=gen), torch.randint(0, 3, (30,), generator=gen)
    mir.observe(memory_x, memory_y)
    x, y = torch.randn(2, 4, generator=gen), torch.tensor([0, 2])
    xa, ya = mir.augment(x, y)
    # reference: one SGD step on (x, y), loss change per memory sample, top 4
    wl, bl = w.clone().requires_grad_(), b.clone().requires_grad_()
    gw, gb = torch.autograd.grad(F.cross_entropy(x @ wl.T + bl, y), (wl, bl))
    before = F.cross_entropy(memory_x @ w.T + b, memory_y, reduction="none")
    after = F.cross_entropy(memory_x @ (w - 0.5 * gw).T + (b - 0.5 * gb), memory_y, reduction="none")
    expected = torch.topk(after - before, 4).indices
    assert xa.shape == (6, 4) and torch.equal(xa[:2], x)
    assert torch.allclose(xa[2:], memory_x[expected]) and torch.equal(ya[2:], memory_y[expected])


def test_lwf_distils_toward_the_old_model_only_after_a_refresh() -> None:
    w, b = torch.zeros(3, 4), torch.zeros(3)
    view, current = linear_view(w, b)
    lwf = LearningWithoutForgetting(lwf_alpha=1.0, lwf_temperature=2.0, lwf_refresh=10)
    lwf.bind(view)
    x = torch.randn(5, 4)
    logits = torch.randn(5, 3)
    lwf.observe(x[:4], torch.zeros(4, dtype=torch.long))
    assert lwf.extra_loss(logits, torch.zeros(5, dtype=torch.long), x) is None  # no old model yet
    current["0.weight"] = torch.eye(3, 4)
    lwf.observe(torch.randn(6, 4), torch.zeros(6, dtype=torch.long))  # 10 samples: refresh
    assert lwf.refreshes == 1
    old_logits = x @ torch.eye(3, 4).T
    same = lwf.extra_loss(old_logits.clone(), torch.zeros(5, dtype=torch.long), x)
    assert same is not None and abs(float(same)) < 1e-6  # the old model's own outputs: no penalty
    student = logits.clone().requires_grad_()
    loss = lwf.extra_loss(student, torch.zeros(5, dtype=torch.long), x)
    expected = 4.0 * F.kl_div(F.log_softmax(logits / 2, dim=1), F.softmax(old_logits / 2, dim=1), reduction="batchmean")
    assert loss is not None and torch.allclose(loss, expected)
    current["0.weight"] = torch.zeros(3, 4)  # the learner moves on; the old model stays frozen
    assert torch.allclose(lwf.extra_loss(student, torch.zeros(5, dtype=torch.long), x), expected)


def test_mas_importance_is_the_mean_output_norm_gradient_and_pulls_to_the_anchor() -> None:
    gen = torch.Generator().manual_seed(1)
    w, b = torch.randn(2, 3, generator=gen), torch.randn(2, generator=gen)
    view, current = linear_view(w, b, lr=0.01)
    mas = MemoryAwareSynapses(mas_lambda=0.5, mas_refresh=4, lr=0.01)
    mas.bind(view)
    x = torch.randn(4, 3, generator=gen)
    assert mas.extra_grad(["0.weight", "0.bias"], [w, b]) is None  # nothing consolidated yet
    mas.observe(x, torch.zeros(4, dtype=torch.long))
    # d||Wx + b||^2 / dW = 2 (Wx + b) x^T, / db = 2 (Wx + b); importance = mean of |.| per sample
    out = x @ w.T + b
    omega_w = torch.stack([(2 * o[:, None] * xi[None, :]).abs() for o, xi in zip(out, x, strict=True)]).mean(0)
    omega_b = (2 * out).abs().mean(0)
    assert mas.consolidations == 1
    moved = {"0.weight": w + 0.1, "0.bias": b - 0.2}
    grads = mas.extra_grad(["0.weight", "0.bias"], [moved["0.weight"], moved["0.bias"]])
    assert grads is not None
    assert torch.allclose(grads[0], 2 * 0.5 * omega_w * 0.1, atol=1e-6)
    assert torch.allclose(grads[1], 2 * 0.5 * omega_b * -0.2, atol=1e-6)
    current["0.weight"] = w * 1e4  # enormous importance next time: the coefficient is capped at 1/lr
    mas.observe(x * 1e3, torch.zeros(4, dtype=torch.long))
    capped = mas.extra_grad(["0.weight"], [current["0.weight"] + 1.0])
    assert capped is not None and float(capped[0].max()) <= 1.0 / 0.01 + 1e-3
