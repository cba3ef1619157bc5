"""``iter_fisher``: Ferret's iterative Fisher compensation with an online-fitted lambda.

    g_c = g
    for k in v .. c-1:   g_c = g_c + lambda * g_c (.) g_c (.) (th^{k+1} - th^k)

i.e. :func:`ferretd.compensation.fisher.fisher_step` applied once per intermediate version, the
curvature re-estimated from the partly compensated gradient at every step (at staleness 1 this
is exactly DC-ASGD). ``lambda`` comes from :class:`~ferretd.compensation.lambda_fit.LambdaFitter`
(one per stage or per tensor, config ``scope``; see that module for the regression).

Decisions:

* The fitter observes every call's gradient at its pinned point *before* compensating, staleness
  0 included (those are observations too), so the lambda used for this update already reflects
  the newest pair of observations (no fresh gradient is ever needed).
* ``lambda == 0`` (per tensor) returns the input tensor itself: bitwise unchanged, no ``0 * inf``.
* No check inside the loop (an overflow stays inf/NaN through the remaining steps, and a check
  per step costs more than the step); the shared guard in
  :class:`~ferretd.compensation.base.Compensator` then falls back to ``g`` and counts it.
* Extra memory: the fitter's 3 |w_j| per stage, plus one temporary ``g_c`` per tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

from torch import Tensor

from ferretd.compensation.base import DEFAULT_MAX_CORRECTION, Compensator
from ferretd.compensation.fisher import fisher_step
from ferretd.compensation.lambda_fit import LambdaFitter


class IterFisher(Compensator):
    """Per-version Fisher correction with lambda fitted online per stage (or per tensor)."""

    name = "iter_fisher"

    def __init__(
        self,
        lambda0: float = 0.04,
        nu: float = 1e-4,
        alpha: float = 0.9,
        eta_lambda: float = 0.0,
        fit: str = "closed_form",
        scope: str = "stage",
        beta: float = 0.999,
        max_correction: float = DEFAULT_MAX_CORRECTION,
    ) -> None:
        super().__init__(max_correction=max_correction)
        self.fitter = LambdaFitter(
            lambda0=lambda0, nu=nu, alpha=alpha, eta_lambda=eta_lambda, fit=fit, scope=scope, beta=beta
        )

    @classmethod
    def from_hyper(cls, **hyper: Any) -> Self:
        keys = ("lambda0", "nu", "alpha", "beta", "eta_lambda", "fit", "scope", "max_correction")
        return cls(**{k: hyper[k] for k in keys if k in hyper})

    def stage_lambda(self, stage: int) -> float | None:
        return self.fitter.summary(stage)

    def _compensate(
        self,
        stage: int,
        grads: Sequence[Tensor],
        pinned: Sequence[Tensor],
        current: Sequence[Tensor],
        deltas: Sequence[Sequence[Tensor]],
    ) -> list[Tensor]:
        self.fitter.observe(stage, grads, pinned)
        if not deltas:
            return list(grads)
        out: list[Tensor] = []
        for i, (g, lam) in enumerate(zip(grads, self.fitter.lambdas(stage, len(grads)), strict=True)):
            out.append(g if lam == 0.0 else iterate(g, [d[i] for d in deltas], lam))
        return out

    def stats(self) -> dict[int, dict[str, Any]]:
        out = super().stats()
        for stage, row in out.items():
            fit = self.fitter.stages.get(stage)
            if fit is not None and len(fit.lam) > 1:
                row["lambda_per_tensor"] = list(fit.lam)
        return out

    def _method_state(self) -> dict[str, Any]:
        return {"fitter": self.fitter.state_dict()}

    def _load_method_state(self, state: dict[str, Any]) -> None:
        self.fitter.load_state_dict(state.get("fitter", {}))


def iterate(g: Tensor, steps: Sequence[Tensor], lam: float) -> Tensor:
    """Apply :func:`fisher_step` once per version step (a non-finite value stays non-finite)."""
    out = g
    for d in steps:
        out = fisher_step(out, d, lam)
    return out
