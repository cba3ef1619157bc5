"""The snapshot promotion gate (``[snapshot] gate_window > 0``; off by default).

A periodic snapshot is not exported at once: its weights wait as the *candidate* while the next
``gate_window`` labeled arrivals come in. Neither the candidate nor the served model has trained
on those (they arrive after both were taken), so they are a held-back window of the stream.
When it is full, both models predict it; the candidate is promoted (exported, announced,
served) unless its accuracy is lower than the served one's by more than ``gate_tolerance``.
A newer candidate replaces a waiting one (the window restarts). The first candidate is promoted
at once (nothing is served yet), and so are explicit snapshots (``ferretctl snapshot``,
shutdown): they become the model the next candidate is compared with. Each decision is one log
line and counted (``status.snapshot.gate``). The weights are copies (``export_module()``), so
the gate never touches the training state; it runs on the daemon loop thread.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import structlog
import torch
from torch import nn

log = structlog.get_logger(__name__)


class PromotionGate:
    def __init__(self, window: int, tolerance: float) -> None:
        self.window = window
        self.tolerance = tolerance
        self.served: nn.Module | None = None
        self._candidate: tuple[nn.Module, dict[str, Any]] | None = None
        self._xs: list[np.ndarray] = []
        self._ys: list[int] = []
        self.promoted = 0
        self.held_back = 0
        self.replaced = 0
        self.last: dict[str, Any] | None = None

    @property
    def enabled(self) -> bool:
        return self.window > 0

    @property
    def pending(self) -> bool:
        return self._candidate is not None

    def hold(self, module: nn.Module, meta: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]] | None:
        """A periodic snapshot: returns it to export now when nothing is served yet, else keeps it."""
        if self.served is None:
            self.served = copy.deepcopy(module)  # the exporter thread works on `module`
            self.promoted += 1
            return module, meta
        if self._candidate is not None:
            self.replaced += 1
        self._candidate = (module, meta)
        self._xs, self._ys = [], []
        return None

    def serving(self, module: nn.Module) -> None:
        """An explicit snapshot bypassed the gate: it is what the next candidate must beat."""
        self.served = copy.deepcopy(module)

    def observe(self, features: np.ndarray, label: int) -> tuple[nn.Module, dict[str, Any]] | None:
        """One labeled arrival; the candidate to export when it was promoted on a full window."""
        if self._candidate is None:
            return None
        self._xs.append(np.asarray(features, dtype=np.float32))
        self._ys.append(int(label))
        if len(self._ys) < self.window:
            return None
        module, meta = self._candidate
        self._candidate = None
        x = torch.from_numpy(np.stack(self._xs))
        y = np.asarray(self._ys)
        candidate_acc, served_acc = _accuracy(module, x, y), _accuracy(self.served, x, y)
        promote = candidate_acc >= served_acc - self.tolerance
        self.last = {
            "decision": "promoted" if promote else "held_back",
            "candidate_accuracy": candidate_acc,
            "served_accuracy": served_acc,
            "window": self.window,
            "updates": meta.get("updates"),
        }
        log.info("snapshot_gate", **self.last, tolerance=self.tolerance)
        if not promote:
            self.held_back += 1
            return None
        self.promoted += 1
        self.served = copy.deepcopy(module)
        return module, meta

    def status(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "tolerance": self.tolerance,
            "promoted": self.promoted,
            "held_back": self.held_back,
            "replaced": self.replaced,
            "pending": self.pending,
            "collected": len(self._ys) if self.pending else 0,
            "last": self.last,
        }


def _accuracy(module: nn.Module | None, x: torch.Tensor, y: np.ndarray) -> float:
    if module is None:
        return 0.0
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            predicted = module(x).argmax(dim=1).numpy()
    finally:
        module.train(was_training)
    return float((predicted == y).mean())
