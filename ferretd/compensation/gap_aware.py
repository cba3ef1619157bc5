"""``gap_aware`` (Barkai, Hakimi, Schuster 2019): damp each coordinate by how far it moved.

    A(g) = g / (1 + |th_c - th_v| / C)          elementwise

``C`` estimates the size of *one* update per coordinate, so the penalty is roughly "1 + number
of typical steps the coordinate travelled while the gradient was in flight".

Decisions:

* ``C`` is elementwise (one value per parameter, |w_j| extra memory per stage), an EMA with rate
  ``alpha`` of ``|delta|``. Only the newest delta of each call (``deltas[-1]``, the step that
  produced the current version) feeds it, so a step seen by several in-flight gradients is not
  counted several times. The first call with deltas initialises ``C`` to the mean of ``|delta|``
  over all its deltas.
* ``C`` is floored at ``EPS`` so a coordinate that never moved divides by 1 (gap 0) instead of
  0/0, and a coordinate that suddenly moves gets a large finite penalty.
* The EMA is updated before compensating (the current step is part of the typical size).
* Staleness 0 returns the inputs themselves (gap 0 -> divisor 1) and leaves ``C`` untouched.
* It damps, it does not extrapolate: its approximation ratio against a fresh gradient is far
  above 1 by design (tools/bench/bench_compensation.py); it is the paper's baseline row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import torch
from torch import Tensor

from ferretd.compensation.base import DEFAULT_MAX_CORRECTION, Compensator, clone_tensors

EPS = 1e-12


class GapAware(Compensator):
    """Elementwise ``g / (1 + |gap| / C)`` with ``C`` an EMA of the update size."""

    name = "gap_aware"

    def __init__(self, alpha: float = 0.9, max_correction: float = DEFAULT_MAX_CORRECTION) -> None:
        super().__init__(max_correction=max_correction)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        self.alpha = float(alpha)
        self._scale: dict[int, list[Tensor]] = {}

    @classmethod
    def from_hyper(cls, **hyper: Any) -> Self:
        return cls(
            alpha=float(hyper.get("alpha", 0.9)),
            max_correction=float(hyper.get("max_correction", DEFAULT_MAX_CORRECTION)),
        )

    def _compensate(
        self,
        stage: int,
        grads: Sequence[Tensor],
        pinned: Sequence[Tensor],
        current: Sequence[Tensor],
        deltas: Sequence[Sequence[Tensor]],
    ) -> list[Tensor]:
        if not deltas:
            return list(grads)
        scale = self._scale.get(stage)
        if scale is None:
            scale = [torch.stack([d[i].abs() for d in deltas]).mean(0) for i in range(len(grads))]
            self._scale[stage] = scale
        else:
            if scale[0].device != grads[0].device:  # restored from a CPU state dict
                scale = self._scale[stage] = [c.to(grads[0].device) for c in scale]
            for c, d in zip(scale, deltas[-1], strict=True):
                c.mul_(self.alpha).add_(d.abs(), alpha=1.0 - self.alpha)
        return [
            g / (1.0 + (cur - pin).abs() / c.clamp_min(EPS))
            for g, pin, cur, c in zip(grads, pinned, current, scale, strict=True)
        ]

    def _method_state(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "scale": {s: clone_tensors(c) for s, c in self._scale.copy().items()}}

    def _load_method_state(self, state: dict[str, Any]) -> None:
        self.alpha = float(state.get("alpha", self.alpha))
        self._scale = {int(s): [t.clone() for t in c] for s, c in state.get("scale", {}).items()}
