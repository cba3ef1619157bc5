"""Learning without Forgetting (LwF; Li & Hoiem, ECCV 2016 / TPAMI 2018), made online.

The method: keep the "old model" frozen and add a knowledge-distillation term that keeps the
new model's outputs on the *current* inputs close to the old model's:
``alpha * T^2 * KL(softmax(old(x) / T) || softmax(new(x) / T))`` (Hinton's temperature-scaled
distillation, the form LwF uses; T = 2 in the paper).

Online decisions (a stream has no task boundaries):

* The old model is refreshed every ``lwf_refresh`` stream samples: it becomes a copy of the
  current published weights, so it always lags the learner by between 0 and ``lwf_refresh``
  samples. Before the first refresh there is no old model and no extra loss (distilling toward
  the random initial weights would only slow learning).
* The paper's old model has task-specific heads; ferretd has one head over the configured
  classes, so the distillation covers every logit (the single-head form used in online
  continual-learning surveys).
* The term is computed at the last stage on the microbatch as trained (stream plus anything a
  caller mixed in), from the stage-0 input the engine passes; the old model runs on the CPU in
  the lane thread, read-only. A refresh builds a new module and swaps the reference.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ferretd.ocl.base import OclMethod
from ferretd.ocl.view import ModelView


class LearningWithoutForgetting(OclMethod):
    name = "lwf"

    def __init__(self, lwf_alpha: float = 1.0, lwf_temperature: float = 2.0, lwf_refresh: int = 1000) -> None:
        if lwf_refresh < 1 or lwf_temperature <= 0 or lwf_alpha < 0:
            raise ValueError("lwf: refresh must be >= 1, temperature > 0, alpha >= 0")
        self.alpha = lwf_alpha
        self.temperature = lwf_temperature
        self.refresh_every = lwf_refresh
        self._view: ModelView | None = None
        self._old_weights: dict[str, Tensor] | None = None
        self._old: nn.Module | None = None
        self._seen = 0
        self._since = 0
        self.refreshes = 0

    @classmethod
    def from_hyper(cls, **hyper: Any) -> OclMethod:
        keys = ("lwf_alpha", "lwf_temperature", "lwf_refresh")
        return cls(**{k: hyper[k] for k in keys if k in hyper})

    def bind(self, view: ModelView) -> None:
        self._view = view
        if self._old_weights is not None:
            self._old = view.frozen(self._old_weights)

    def observe(self, x: Tensor, y: Tensor) -> None:
        self._seen += x.shape[0]
        self._since += x.shape[0]
        if self._since >= self.refresh_every and self._view is not None:
            self.refresh()

    def refresh(self) -> None:
        """The old model becomes a copy of the current weights."""
        assert self._view is not None
        weights = {n: t.clone() for n, t in self._view.weights().items()}
        self._old = self._view.frozen(weights)
        self._old_weights = weights
        self._since = 0
        self.refreshes += 1

    def extra_loss(self, logits: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor | None:
        old = self._old  # one read: a refresh swaps the reference
        if old is None or x is None or self.alpha == 0:
            return None
        with torch.no_grad():
            target = old(x.detach().cpu().to(torch.float32)).to(logits.device, logits.dtype)
        t = self.temperature
        soft = F.softmax(target / t, dim=1)
        kl = F.kl_div(F.log_softmax(logits / t, dim=1), soft, reduction="batchmean")
        return self.alpha * t * t * kl

    def memory_bytes(self) -> int:
        weights = self._old_weights or {}
        return sum(t.numel() * t.element_size() for t in weights.values())

    def memory_bound(self, param_bytes: int) -> int:
        return param_bytes  # one copy of the weights (the old model)

    def stats(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "refreshes": self.refreshes,
            "samples_since_refresh": self._since,
            "has_old_model": self._old_weights is not None,
            "bytes": self.memory_bytes(),
        }

    def state_dict(self) -> dict[str, Any]:
        weights = self._old_weights
        return {
            "method": self.name,
            "old": {n: t.clone() for n, t in weights.items()} if weights is not None else None,
            "seen": self._seen,
            "since": self._since,
            "refreshes": self.refreshes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.foreign(state):
            return
        old = state.get("old")
        self._old_weights = {n: t.clone() for n, t in old.items()} if old is not None else None
        self._old = self._view.frozen(self._old_weights) if self._view and self._old_weights is not None else None
        self._seen = int(state["seen"])
        self._since = int(state["since"])
        self.refreshes = int(state["refreshes"])
