"""The fused (``torch._foreach_*``) lambda fit and correction check give what the plain per-tensor
formulas give: bit for bit for the fitter's state and lambdas, the same accept/fall-back decisions
for the correction check. The references below are the module docstrings' formulas, one tensor at
a time (what the code did before it was fused for the update's CPU cost, issue 12)."""

from __future__ import annotations

import math

import pytest
import torch

from ferretd.compensation.base import _acceptable_all
from ferretd.compensation.lambda_fit import LambdaFitter, ridge_lambda

SHAPES = [(8, 1, 3, 3), (8,), (16, 8, 3, 3), (16,), (10, 32), (10,)]


class ReferenceFit:
    """Closed-form fit, per tensor: feature = g_prev^2 (.) (p - p_prev), target = g - E."""

    def __init__(self, scope: str, alpha: float = 0.9, beta: float = 0.9, nu: float = 1e-4) -> None:
        self.scope, self.alpha, self.beta, self.nu = scope, alpha, beta, nu
        self.state: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] | None = None
        self.s_fd: list[float] = []
        self.s_ff: list[float] = []
        self.pairs = 0
        self.lam: list[float] = []

    def observe(self, grads: list[torch.Tensor], point: list[torch.Tensor]) -> bool:
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            return False
        if self.state is None:
            self.state = ([g.clone() for g in grads], [g * g for g in grads], [p.clone() for p in point])
            groups = 1 if self.scope == "stage" else len(grads)
            self.s_fd, self.s_ff, self.lam = [0.0] * groups, [0.0] * groups, [0.04] * groups
            return True
        ema, sq, prev = self.state
        fd, ff = [], []
        for e, s, pp, g, p in zip(ema, sq, prev, grads, point, strict=True):
            feature = s * (p - pp)
            target = g - e
            fd.append(float(torch.sum(feature * target, dtype=torch.float64)))
            ff.append(float(torch.sum(feature * feature, dtype=torch.float64)))
        if self.scope == "stage":
            fd, ff = [sum(fd)], [sum(ff)]
        if any(v > 0 for v in ff):
            self.pairs += 1
            b = self.beta
            self.s_fd = [b * s + (1 - b) * d for s, d in zip(self.s_fd, fd, strict=True)]
            self.s_ff = [b * s + (1 - b) * f for s, f in zip(self.s_ff, ff, strict=True)]
            w = 1 - b**self.pairs
            stats = zip(self.s_fd, self.s_ff, strict=True)
            self.lam = [max(0.0, ridge_lambda(d / w, f / w, self.nu)) for d, f in stats]
        for e, s, pp, g, p in zip(ema, sq, prev, grads, point, strict=True):
            e.mul_(self.alpha).add_(g, alpha=1 - self.alpha)
            torch.mul(g, g, out=s)
            pp.copy_(p)
        return True


@pytest.mark.parametrize("scope", ["stage", "tensor"])
def test_the_fused_fit_equals_the_per_tensor_formulas_bit_for_bit(scope: str) -> None:
    torch.manual_seed(0)
    fused, reference = LambdaFitter(scope=scope, alpha=0.9, beta=0.9), ReferenceFit(scope)
    point = [torch.randn(s) for s in SHAPES]
    for k in range(60):
        grads = [torch.randn(s) * 0.1 for s in SHAPES]
        if k in (30, 41):  # a NaN and an inf: the observation is skipped, the state untouched
            grads[k % 2][0] = float("nan") if k == 30 else float("inf")
        point = [p + 0.01 * torch.randn_like(p) for p in point]
        assert fused.observe(0, grads, point) == reference.observe(grads, point)
        lam = fused.lambdas(0, len(SHAPES))
        assert lam == (reference.lam * len(SHAPES) if scope == "stage" else reference.lam), k
    assert reference.state is not None
    stage = fused.stages[0]
    theirs_all = [t for group in reference.state for t in group]
    for mine, theirs in zip(stage.ema_grad + stage.prev_sq + stage.prev_point, theirs_all, strict=True):
        assert torch.equal(mine, theirs)
    assert stage.skipped == 2
    assert stage.pairs == 57 and all(v != 0.0 for v in stage.s_fd + stage.s_ff), "the regression saw data"


def test_the_fused_correction_check_decides_like_the_formula() -> None:
    torch.manual_seed(1)
    grads = [torch.randn(s) for s in SHAPES]
    corrected = [
        grads[0] * 1.5,  # correction 0.5 |g|: accepted at max_correction 1
        grads[1] * 3.0,  # 2 |g|: refused
        grads[2].clone().index_fill_(0, torch.tensor([0]), float("nan")),  # NaN: refused
        grads[3] + float("inf"),  # inf: refused
        grads[4] * 1.99,  # 0.99 |g|: accepted
        -grads[5],  # 2 |g|: refused
    ]

    def formula(g: torch.Tensor, c: torch.Tensor) -> bool:
        correction = float(torch.linalg.vector_norm(c - g))
        return math.isfinite(correction) and correction <= float(torch.linalg.vector_norm(g))

    expected = [formula(g, c) for g, c in zip(grads, corrected, strict=True)]
    assert expected == [True, False, False, False, True, False]
    assert _acceptable_all(grads, corrected, 1.0) == expected
