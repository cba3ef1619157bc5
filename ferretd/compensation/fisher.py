"""``fisher``: one-shot DC-ASGD (Zheng et al. 2017) with a fixed lambda.

    A(g) = g + lambda0 * g (.) g (.) (th_c - th_v)

Decisions: the sign follows the first-order Taylor expansion ``g(th_c) ~ g(th_v) + H (th_c -
th_v)`` with ``H ~ lambda * diag(g g)`` (the diagonal empirical Fisher), so the displacement is
*current minus pinned*, computed directly as ``current - pinned`` (not summed from ``deltas``).
``lambda0 == 0`` or staleness 0 returns the inputs themselves (no ``0 * inf`` NaN). DC-ASGD's
default ``lambda0 = 0.04``. No state beyond the shared counters; a large lambda0 is caught by the
shared guard (non-finite or correction larger than the gradient -> raw gradient, counted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import torch
from torch import Tensor

from ferretd.compensation.base import DEFAULT_MAX_CORRECTION, Compensator


class Fisher(Compensator):
    """One Taylor step from the pinned to the current version with a fixed lambda."""

    name = "fisher"

    def __init__(self, lambda0: float = 0.04, max_correction: float = DEFAULT_MAX_CORRECTION) -> None:
        super().__init__(max_correction=max_correction)
        if not lambda0 >= 0:
            raise ValueError(f"lambda0 must be >= 0, got {lambda0}")
        self.lambda0 = float(lambda0)

    @classmethod
    def from_hyper(cls, **hyper: Any) -> Self:
        return cls(
            lambda0=float(hyper.get("lambda0", 0.04)),
            max_correction=float(hyper.get("max_correction", DEFAULT_MAX_CORRECTION)),
        )

    def stage_lambda(self, stage: int) -> float | None:
        return self.lambda0

    def _compensate(
        self,
        stage: int,
        grads: Sequence[Tensor],
        pinned: Sequence[Tensor],
        current: Sequence[Tensor],
        deltas: Sequence[Sequence[Tensor]],
    ) -> list[Tensor]:
        if not deltas or self.lambda0 == 0.0:
            return list(grads)
        return [fisher_step(g, c - p, self.lambda0) for g, p, c in zip(grads, pinned, current, strict=True)]


def fisher_step(g: Tensor, displacement: Tensor, lam: float) -> Tensor:
    """One DC-ASGD step ``g + lam * g (.) g (.) displacement`` (a new tensor)."""
    return torch.addcmul(g, g * g, displacement, value=lam)
