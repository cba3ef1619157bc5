"""``step_aware``: divide a stale gradient by its staleness (Zhang et al. 2016 style baseline).

Decisions: the *gradient* is divided (not the step), so the optimizer downstream (momentum,
weight decay) sees the damped gradient; ``tau = len(deltas)``; ``tau <= 1`` returns the input
tensors unchanged (``g / 1 == g``, and staleness 0 must be the identity). No state beyond the
shared counters. The paper measures this row at -4..-56 oacc points: it is a baseline, not a
recommendation; like ``gap_aware`` it damps rather than extrapolates, so its
approximation ratio against a fresh gradient is far above 1 (tools/bench/bench_compensation.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ferretd.compensation.base import Compensator


class StepAware(Compensator):
    """``g / tau`` for staleness ``tau >= 2``; unchanged otherwise."""

    name = "step_aware"

    def _compensate(
        self,
        stage: int,
        grads: Sequence[Tensor],
        pinned: Sequence[Tensor],
        current: Sequence[Tensor],
        deltas: Sequence[Sequence[Tensor]],
    ) -> list[Tensor]:
        tau = len(deltas)
        if tau <= 1:
            return list(grads)
        return [g / tau for g in grads]
