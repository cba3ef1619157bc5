"""``none``: apply the stashed gradient as it is (PipeDream semantics, the baseline row).

The gradient computed at the pinned version is applied unchanged to the current version,
whatever the staleness. Returns the input tensors themselves (no copy, bitwise unchanged).
Keeps no state besides the shared per-stage counters.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ferretd.compensation.base import Compensator


class NoCompensation(Compensator):
    """The identity: stale gradients are applied as computed."""

    name = "none"

    def _compensate(
        self,
        stage: int,
        grads: Sequence[Tensor],
        pinned: Sequence[Tensor],
        current: Sequence[Tensor],
        deltas: Sequence[Sequence[Tensor]],
    ) -> list[Tensor]:
        return list(grads)
