"""Maximally Interfered Retrieval (MIR; Aljundi et al., NeurIPS 2019) on ER's reservoir buffer.

The method: before training on an incoming batch ``B``, take a virtual SGD step on ``B`` alone,
``theta_v = theta - lr * grad L(theta; B)``; from a random subset of ``C`` memory candidates,
retrieve the ``k`` whose loss increases most under the virtual step,
``score(x) = L(theta_v; x) - L(theta; x)``, and train on ``B`` plus those ``k``.

Decisions: the buffer, its byte budget and reservoir insertion are ER's (MIR in the paper uses a
reservoir too); ``k = replay_per_sample * |B|`` as in ER; ``C = max(mir_candidates, k)``
candidates are drawn without replacement by the seeded RNG; the virtual step is plain SGD with
the learner's ``lr`` on the current published weights (whatever optimiser trains the model, the
paper's criterion is a first-order look-ahead), run in the caller's thread through the
:class:`~ferretd.ocl.view.ModelView`. Until a view is bound the method replays like ER (random).
Ties in the score keep the lower candidate index (stable sort), so runs are reproducible.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ferretd.ocl.base import OclMethod
from ferretd.ocl.er import ExperienceReplay
from ferretd.ocl.view import ModelView


class MaximallyInterferedRetrieval(ExperienceReplay):
    name = "mir"

    def __init__(
        self,
        replay_bytes: int = 4 << 20,
        replay_per_sample: int = 1,
        seed: int = 0,
        mir_candidates: int = 50,
        lr: float = 0.05,
    ) -> None:
        super().__init__(replay_bytes, replay_per_sample, seed)
        self.candidates = mir_candidates
        self.lr = lr
        self._view: ModelView | None = None
        self.retrievals = 0

    @classmethod
    def from_hyper(cls, **hyper: Any) -> OclMethod:
        keys = ("replay_bytes", "replay_per_sample", "seed", "mir_candidates", "lr")
        return cls(**{k: hyper[k] for k in keys if k in hyper})

    def bind(self, view: ModelView) -> None:
        self._view = view

    def augment(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self._view is None:
            return super().augment(x, y)
        with self._lock:
            k = min(len(self._x), self.replay_per_sample * x.shape[0])
            if k == 0:
                return x, y
            c = min(len(self._x), max(self.candidates, k))
            picks = self._rng.sample(range(len(self._x)), c)
            cx = torch.stack([self._x[i] for i in picks]).to(x.dtype)
            cy = torch.tensor([self._y[i] for i in picks], dtype=y.dtype)
        top = self.interference(x, y, cx, cy)[:k]
        self.retrievals += 1
        return torch.cat([x, cx[top]]), torch.cat([y, cy[top]])

    def interference(self, x: Tensor, y: Tensor, cx: Tensor, cy: Tensor) -> Tensor:
        """Candidate indices ordered by loss increase under a virtual SGD step on ``(x, y)``."""
        assert self._view is not None
        view = self._view
        params = view.weights()
        leaves = {n: t.detach().requires_grad_(True) for n, t in params.items()}
        with torch.enable_grad():
            loss = F.cross_entropy(view.forward(leaves, x), y)
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        virtual = {n: t if g is None else t - self.lr * g for (n, t), g in zip(params.items(), grads, strict=True)}
        with torch.no_grad():
            before = F.cross_entropy(view.forward(params, cx), cy, reduction="none")
            after = F.cross_entropy(view.forward(virtual, cx), cy, reduction="none")
        score = torch.nan_to_num(after - before, nan=float("-inf"))
        return torch.sort(score, descending=True, stable=True).indices

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "candidates": self.candidates, "retrievals": self.retrievals}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "retrievals": self.retrievals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.foreign(state):
            return
        super().load_state_dict(state)
        self.retrievals = int(state.get("retrievals", 0))
