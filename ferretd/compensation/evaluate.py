"""Approximation error of a compensator on a simulated stale stream (tests and benchmark share it).

The simulation is an asynchronous pipeline reduced to its math: per-sample SGD where the
gradient applied at step ``t`` was computed at version ``t - tau`` (weight stashing), passed
through the compensator with the exact version deltas, then applied to version ``t``. Every
block of the ``nn.Sequential`` is one stage (its own lambda), all at the same staleness. After
``warmup`` steps (the fitter has seen the stream), each step also recomputes ``g_fresh``, the
same sample's gradient at the current version, and records

    ratio = ||A(g) - g_fresh||^2 / ||g - g_fresh||^2       (whole model, all stages)

< 1 means the compensation moved the stale gradient towards the fresh one. ``oracle_lambda`` is
the hindsight least-squares lambda of the one-shot form on the measured same-sample pairs
(what a fitter with fresh gradients would find), for comparison with the fitted one. Training applies the
compensated gradient (closed loop: a method sees the trajectory it produces itself).
Pure torch; no data loading here (callers pass tensors).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ferretd.compensation.base import Compensator


@dataclass(frozen=True)
class ApproxResult:
    """Summary of one (compensator, staleness) simulation."""

    staleness: int
    median: float
    q25: float
    q75: float
    samples: int
    oracle_lambda: float
    weights_finite: bool
    stats: dict[int, dict[str, Any]] = field(default_factory=dict)

    def lambdas(self) -> list[float | None]:
        return [row.get("lambda") for _, row in sorted(self.stats.items())]


class _Stream:
    """Model split into stages, with functional gradients at any stored version."""

    def __init__(self, model: nn.Sequential) -> None:
        self.model = model
        self.names = [[f"{j}.{n}" for n, _ in block.named_parameters()] for j, block in enumerate(model)]

    def params(self) -> list[list[Tensor]]:
        return [[p.detach().clone() for p in block.parameters()] for block in self.model]

    def grad(self, version: list[list[Tensor]], x: Tensor, y: Tensor) -> list[list[Tensor]]:
        leaves = [[p.detach().requires_grad_(True) for p in stage] for stage in version]
        flat = {n: p for names, ps in zip(self.names, leaves, strict=True) for n, p in zip(names, ps, strict=True)}
        loss = nn.functional.cross_entropy(functional_call(self.model, flat, (x,)), y)
        grads = torch.autograd.grad(loss, [p for stage in leaves for p in stage])
        out: list[list[Tensor]] = []
        k = 0
        for stage in leaves:
            out.append(list(grads[k : k + len(stage)]))
            k += len(stage)
        return out


def approximation_ratios(
    model: nn.Sequential,
    x: Tensor,
    y: Tensor,
    compensator: Compensator,
    staleness: int,
    *,
    lr: float = 0.05,
    warmup: int = 1000,
    measure: int = 300,
    seed: int = 0,
) -> ApproxResult:
    """Run ``warmup + measure`` stale updates of ``model`` (copied weights, model untouched)."""
    stream = _Stream(model)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    current = stream.params()
    history: deque[list[list[Tensor]]] = deque([current], maxlen=staleness + 1)
    deltas: deque[list[list[Tensor]]] = deque(maxlen=staleness)
    ratios: list[float] = []
    fit_num = fit_den = 0.0
    with torch.no_grad():
        for t in range(warmup + measure):
            i = order[t % len(x)]
            xi, yi = x[i : i + 1], y[i : i + 1]
            pinned = history[0]
            with torch.enable_grad():
                g = stream.grad(pinned, xi, yi)
            out = [
                compensator.compensate(j, g[j], pinned[j], current[j], [d[j] for d in deltas])
                for j in range(len(current))
            ]
            if t >= warmup and len(deltas) == staleness:
                with torch.enable_grad():
                    fresh = stream.grad(current, xi, yi)
                den = _squared_distance(g, fresh)
                if den > 0:
                    ratios.append(_squared_distance(out, fresh) / den)
                num_i, den_i = _one_shot_fit(g, pinned, current, fresh)
                fit_num, fit_den = fit_num + num_i, fit_den + den_i
            new = _combine(current, out, -lr)
            if staleness:
                deltas.append(_combine(new, current, -1.0))
            current = new
            history.append(current)
    r = torch.tensor(ratios, dtype=torch.float64)
    q = [float("nan")] * 3
    if len(r):
        q = torch.quantile(r, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    oracle = fit_num / fit_den if fit_den > 0 else float("nan")
    finite = all(bool(torch.isfinite(p).all()) for stage in current for p in stage)
    return ApproxResult(staleness, q[1], q[0], q[2], len(ratios), oracle, finite, compensator.stats())


def _combine(a: list[list[Tensor]], b: list[list[Tensor]], scale: float) -> list[list[Tensor]]:
    """``a + scale * b`` over per-stage tensor lists."""
    return [[x + scale * y for x, y in zip(sa, sb, strict=True)] for sa, sb in zip(a, b, strict=True)]


def _squared_distance(a: list[list[Tensor]], b: list[list[Tensor]]) -> float:
    return sum(
        float(((x - y).double() ** 2).sum()) for sa, sb in zip(a, b, strict=True) for x, y in zip(sa, sb, strict=True)
    )


def _one_shot_fit(
    g: list[list[Tensor]], pinned: list[list[Tensor]], current: list[list[Tensor]], fresh: list[list[Tensor]]
) -> tuple[float, float]:
    """``<F, g_fresh - g>`` and ``<F, F>`` for ``F = g (.) g (.) (th_c - th_v)`` (hindsight lambda)."""
    num = den = 0.0
    for sg, sp, sc, sf in zip(g, pinned, current, fresh, strict=True):
        for x, p, c, f in zip(sg, sp, sc, sf, strict=True):
            feature = (x * x * (c - p)).double()
            num += float((feature * (f - x).double()).sum())
            den += float((feature * feature).sum())
    return num, den
