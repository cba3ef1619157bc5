"""Shared pieces of the engine tests: tiny models, data, a recording compensator."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from torch import Tensor

from ferretd.compensation.base import Compensator
from ferretd.models import convnet, mlp


class RecordingCompensator(Compensator):
    """Identity compensation that records every call (the engine's side of the contract)."""

    name = ""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []

    def compensate(  # type: ignore[override]
        self,
        stage: int,
        grads: Sequence[Tensor],
        pinned: Sequence[Tensor],
        current: Sequence[Tensor],
        deltas: Sequence[Sequence[Tensor]],
    ) -> list[Tensor]:
        self.calls.append(
            {
                "stage": stage,
                "grads": [g.clone() for g in grads],
                "pinned": [p.clone() for p in pinned],
                "current": [c.clone() for c in current],
                "deltas": [[d.clone() for d in ds] for ds in deltas],
            }
        )
        return list(grads)

    def _compensate(self, stage, grads, pinned, current, deltas):  # pragma: no cover - compensate overrides
        return list(grads)


@pytest.fixture
def make_mlp():
    def build(seed: int = 0, blocks: int = 3):
        torch.manual_seed(seed)
        return mlp((6,), 3, tuple([10] * (blocks - 1)))

    return build


@pytest.fixture
def make_conv():
    def build(seed: int = 0):
        torch.manual_seed(seed)
        return convnet((1, 8, 8), 3, (4, 6))

    return build


@pytest.fixture
def stream():
    def build(n: int, shape: tuple[int, ...] = (6,), classes: int = 3, seed: int = 0):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, *shape)).astype(np.float32)
        y = rng.integers(0, classes, size=n)
        return x, y

    return build


@pytest.fixture
def recording_compensator():
    return RecordingCompensator
