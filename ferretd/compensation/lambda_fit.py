"""Online ridge fit of the Iter-Fisher lambda (section 3 of the method notes), per stage.

Every gradient handed to the compensator is an *observation*: the exact gradient ``g`` of one
sample at the point ``th_v`` it was computed at (the pinned version). Staleness does not matter
for the fit: it regresses on the difference of *evaluation points* of two consecutive
observations of the stage (consecutive in call order, i.e. update order; ``th_v - th_prev`` may
span several versions, be zero when two workers used the same version, or even point backwards).

    target  D - E = (1 - alpha) (g - E)        E: EMA (rate alpha) of the observed gradients, D the next
    feature F     = g_prev (.) g_prev (.) (th_v - th_prev)
    lambda        = argmin ||(D - E) - lambda F||^2 + nu lambda^2

Decisions:

* **Scale of lambda.** The regression above predicts the change of the *EMA*, ``D - E``, which
  is only ``(1 - alpha)`` times the change of a raw gradient; A is applied to raw gradients. We
  therefore solve the same problem for ``lambda_apply = lambda / (1 - alpha)``: substituting
  gives ``(1 - alpha)^2 [ ||(g - E) - lambda_apply F||^2 + nu lambda_apply^2 ]``, the same
  minimiser with the same ``nu``. So the target used is ``g - E`` and every lambda reported or
  applied is ``lambda_apply``. (Fitting ``D - E`` literally gave lambdas ~10x too small,
  ratios indistinguishable from 1; see tools/bench/bench_compensation.py.)
* ``fit = "closed_form"``: ``lambda = S_fd / (S_ff + nu)`` with ``S_fd, S_ff`` EMAs with rate
  ``beta`` (bias-corrected like Adam's moments, so ``nu`` compares with a *mean* ``<F, F>``) of
  ``<F, g - E>`` and ``<F, F>``. ``beta`` is separate from ``alpha`` and slow (0.999): a single
  pair's ``<F, g - E>`` is dominated by sample-to-sample noise (different samples), the
  curvature signal only appears averaged over hundreds of pairs.
* ``fit = "gradient"``: one step per observation on the instantaneous objective,
  ``lambda += eta (<F, g - E> - lambda (<F, F> + nu))``; ``eta = 0`` freezes lambda at
  ``lambda0``. The step is scale dependent (``<F, F>`` is tiny): closed form is the default.
* ``lambda`` is clamped to ``>= 0``: a negative value would claim negative curvature from a
  positive-semidefinite Fisher and amplify the stale gradient instead of correcting it.
* Initial lambda is ``lambda0`` until the first informative pair (``F != 0``); the first
  observation initialises ``E = g`` (no zero-start bias). Pairs with ``F == 0`` (same point)
  update ``E`` and the previous observation but not the regression statistics.
* A non-finite gradient is not an observation (skipped, counted in ``skipped``).
* ``scope = "stage"``: one scalar over all tensors of the stage (inner products summed);
  ``scope = "tensor"``: one scalar per parameter tensor.
* Known bias: the displacement ``th_v - th_prev`` is the step made from a gradient that is
  also inside ``E`` (weight ``(1 - alpha) alpha^tau``), which correlates ``F`` with the target
  and pushes lambda up, more so for small ``alpha``; the noise pushes ``|lambda|`` around. On
  digits the fitted lambda stays below the hindsight-optimal one at lr 0.05 (measured in the
  benchmark), but with ``nu = 0`` and ``alpha = 0.5`` it overshoots at lr 0.01 (the bias grows
  like 1 / lr).
* Defaults (``alpha = 0.9``, ``beta = 0.999``, ``nu = 1e-4``; tools/bench/bench_compensation.py):
  ``beta = 0.99`` lets lambda hit 0 for long stretches (noise); ``nu = 1e-3`` shrinks lambda to
  ~1/20 of the hindsight value (ratios ~0.999); ``nu = 0`` or ``alpha = 0.5`` score best at
  lr 0.05 but give ratios > 1 at lr 0.01. ``nu`` is absolute, so its strength depends on the
  size of ``<F, F>`` (stage size, gradient scale, learning rate).

Memory kept per stage: ``E``, ``g_prev (.) g_prev`` and ``th_prev`` = **3 |w_j|** (plus a few
scalars per tensor). The method notes say "about 2 |w_j|"; exact spec semantics (F built from
the previous *raw* gradient at the previous *point*, target from the EMA) need all three.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

FITS = ("closed_form", "gradient")
SCOPES = ("stage", "tensor")


@dataclass
class StageFit:
    """What the fitter keeps for one stage."""

    ema_grad: list[Tensor]
    prev_sq: list[Tensor]
    prev_point: list[Tensor]
    lam: list[float]
    s_fd: list[float] = field(default_factory=list)
    s_ff: list[float] = field(default_factory=list)
    weight: float = 0.0  # 1 - beta^pairs: the bias correction of the statistics EMAs
    pairs: int = 0
    observations: int = 0
    skipped: int = 0


class LambdaFitter:
    """Keeps per-stage regression state and answers the current lambda per tensor."""

    def __init__(
        self,
        lambda0: float = 0.04,
        nu: float = 1e-4,
        alpha: float = 0.9,
        eta_lambda: float = 0.0,
        fit: str = "closed_form",
        scope: str = "stage",
        beta: float = 0.999,
    ) -> None:
        if not lambda0 >= 0 or not nu >= 0 or not eta_lambda >= 0:
            raise ValueError("lambda0, nu and eta_lambda must be >= 0")
        if not (0.0 <= alpha < 1.0 and 0.0 <= beta < 1.0):
            raise ValueError(f"alpha and beta must be in [0, 1), got {alpha}, {beta}")
        if fit not in FITS or scope not in SCOPES:
            raise ValueError(f"fit must be one of {FITS} and scope one of {SCOPES}; got {fit!r}, {scope!r}")
        self.lambda0, self.nu, self.alpha, self.eta = float(lambda0), float(nu), float(alpha), float(eta_lambda)
        self.fit, self.scope = fit, scope
        self.stages: dict[int, StageFit] = {}
        self.beta = float(beta)

    # ------------------------------------------------------------------ fitting

    def observe(self, stage: int, grads: Sequence[Tensor], point: Sequence[Tensor]) -> bool:
        """Take one observation (gradient at its evaluation point); False if it was skipped."""
        st = self.stages.get(stage)
        with torch.no_grad():
            if not _all_finite(grads):
                if st is not None:
                    st.skipped += 1
                return False
            if st is None:
                groups = 1 if self.scope == "stage" else len(grads)
                self.stages[stage] = StageFit(
                    ema_grad=[g.detach().clone() for g in grads],
                    prev_sq=[g.detach() * g.detach() for g in grads],
                    prev_point=[p.detach().clone() for p in point],
                    lam=[self.lambda0] * groups,
                    s_fd=[0.0] * groups,
                    s_ff=[0.0] * groups,
                    observations=1,
                )
                return True
            self._move_to(st, grads[0].device)
            fd, ff = self._pair_statistics(st, grads, point)
            if self.scope == "stage":
                fd, ff = [sum(fd)], [sum(ff)]
            if all(v == v and abs(v) != float("inf") for v in fd + ff) and any(v > 0 for v in ff):
                self._update_lambda(st, fd, ff)
            a = self.alpha
            grads, point = list(grads), list(point)
            torch._foreach_mul_(st.ema_grad, a)
            torch._foreach_add_(st.ema_grad, grads, alpha=1.0 - a)
            torch._foreach_copy_(st.prev_sq, grads)
            torch._foreach_mul_(st.prev_sq, grads)
            torch._foreach_copy_(st.prev_point, point)
            st.observations += 1
        return True

    def _pair_statistics(
        self, st: StageFit, grads: Sequence[Tensor], point: Sequence[Tensor]
    ) -> tuple[list[float], list[float]]:
        # One fused call per step over all tensors (a loop per tensor spent ~0.7 ms of Python on a
        # 9k-parameter conv net, inside the stage's single-writer update). Same values bit for bit:
        # feature = g_prev^2 (.) (p - p_prev), target = g - E, and float64 sums of float32
        # products. Two |w| temporaries at most (compensation_temp_factor in the memory model).
        feature = torch._foreach_sub(list(point), st.prev_point)
        torch._foreach_mul_(feature, st.prev_sq)
        target = torch._foreach_sub(list(grads), st.ema_grad)  # (D - E) / (1 - alpha): see the module docstring
        torch._foreach_mul_(target, feature)
        torch._foreach_mul_(feature, feature)
        sums = torch.stack([t.sum(dtype=torch.float64) for t in (*target, *feature)]).tolist()
        n = len(target)
        return sums[:n], sums[n:]

    def _update_lambda(self, st: StageFit, fd: list[float], ff: list[float]) -> None:
        st.pairs += 1
        if self.fit == "gradient":
            steps = zip(st.lam, fd, ff, strict=True)
            st.lam = [max(0.0, lam + self.eta * (d - lam * (f + self.nu))) for lam, d, f in steps]
            return
        a = self.beta
        st.s_fd = [a * s + (1.0 - a) * d for s, d in zip(st.s_fd, fd, strict=True)]
        st.s_ff = [a * s + (1.0 - a) * f for s, f in zip(st.s_ff, ff, strict=True)]
        st.weight = 1.0 - a**st.pairs
        stats = zip(st.s_fd, st.s_ff, strict=True)
        st.lam = [max(0.0, ridge_lambda(d / st.weight, f / st.weight, self.nu)) for d, f in stats]

    # ------------------------------------------------------------------ answers

    def lambdas(self, stage: int, n_tensors: int) -> list[float]:
        """Lambda for each of the stage's ``n_tensors`` tensors (lambda0 before any data)."""
        st = self.stages.get(stage)
        if st is None:
            return [self.lambda0] * n_tensors
        return st.lam * n_tensors if len(st.lam) == 1 else list(st.lam)

    def summary(self, stage: int) -> float | None:
        """One number for status: the stage's lambda (mean over tensors with scope=tensor)."""
        st = self.stages.get(stage)
        if st is None:
            return self.lambda0
        return sum(st.lam) / len(st.lam)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "stages": {
                s: {
                    "ema_grad": [t.detach().to("cpu", copy=True) for t in st.ema_grad],
                    "prev_sq": [t.detach().to("cpu", copy=True) for t in st.prev_sq],
                    "prev_point": [t.detach().to("cpu", copy=True) for t in st.prev_point],
                    "lam": list(st.lam),
                    "s_fd": list(st.s_fd),
                    "s_ff": list(st.s_ff),
                    "weight": st.weight,
                    "pairs": st.pairs,
                    "observations": st.observations,
                    "skipped": st.skipped,
                }
                for s, st in self.stages.copy().items()
            }
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stages = {}
        for s, raw in state.get("stages", {}).items():
            tensors = {k: [t.clone() for t in raw[k]] for k in ("ema_grad", "prev_sq", "prev_point")}
            scalars = {k: raw[k] for k in ("lam", "s_fd", "s_ff", "weight", "pairs", "observations", "skipped")}
            self.stages[int(s)] = StageFit(**tensors, **scalars)

    @staticmethod
    def _move_to(st: StageFit, device: torch.device) -> None:
        if st.ema_grad and st.ema_grad[0].device != device:
            st.ema_grad = [t.to(device) for t in st.ema_grad]
            st.prev_sq = [t.to(device) for t in st.prev_sq]
            st.prev_point = [t.to(device) for t in st.prev_point]


def _all_finite(tensors: Sequence[Tensor]) -> bool:
    """True when every element is finite: one fused norm per tensor, one sync (a NaN or an inf
    makes its tensor's norm non-finite; so would a finite tensor whose norm overflows, which is
    no usable observation either)."""
    if not tensors:
        return True
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(list(tensors)))).all())


def ridge_lambda(s_fd: float, s_ff: float, nu: float) -> float:
    """Unclamped minimiser of ``s_ff l^2 - 2 s_fd l + nu l^2`` (0 when there is no information)."""
    denom = s_ff + nu
    return s_fd / denom if denom > 0 else 0.0
