"""Memory Aware Synapses (MAS; Aljundi et al., ECCV 2018), with importance accumulated online.

The method: a parameter's importance is how sensitive the learned function's output is to it,
``Omega_ij = mean_k | d ||F(x_k)||_2^2 / d theta_ij |`` over the data seen (no labels needed),
and learning adds ``lambda * sum_ij Omega_ij (theta_ij - theta*_ij)^2`` where ``theta*`` are the
weights when the importance was consolidated.

Online decisions:

* Importance is accumulated on every stream sample as it arrives (``observe``, caller's
  thread), per sample as in the paper: a functional forward of that one sample with the current
  published weights and the gradient of the squared L2 norm of its output (the logits).
* Every ``mas_refresh`` stream samples the running mean becomes the consolidated ``Omega`` and
  the current weights become the anchor ``theta*`` (the online stand-in for the paper's end of
  task; the running mean keeps counting, so importance is over the whole stream). Until the
  first consolidation there is no penalty.
* The penalty enters as a gradient, ``2 * lambda * Omega * (theta - theta*)`` evaluated at each
  stage's pinned version (``extra_grad``), so it is compensated and accumulated like the rest of
  the gradient. Stability clamp: the coefficient ``2 * lambda * Omega`` is capped at ``1 / lr``,
  so one SGD step of the penalty alone never overshoots the anchor (without it, a large
  importance times the learning rate makes the penalty diverge and the weights NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ferretd.ocl.base import OclMethod
from ferretd.ocl.view import ModelView


class MemoryAwareSynapses(OclMethod):
    name = "mas"

    def __init__(self, mas_lambda: float = 1.0, mas_refresh: int = 1000, lr: float = 0.05) -> None:
        if mas_refresh < 1 or mas_lambda < 0 or lr <= 0:
            raise ValueError("mas: refresh must be >= 1, lambda >= 0, lr > 0")
        self.lam = mas_lambda
        self.refresh_every = mas_refresh
        self.lr = lr
        self._view: ModelView | None = None
        self._acc: dict[str, Tensor] = {}  # running sum of |d||F||^2 / d theta|
        self._count = 0
        self._since = 0
        # consolidated: coefficient 2*lambda*Omega (clamped) and anchor, swapped whole
        self._coef: dict[str, Tensor] | None = None
        self._anchor: dict[str, Tensor] | None = None
        self.consolidations = 0

    @classmethod
    def from_hyper(cls, **hyper: Any) -> OclMethod:
        keys = ("mas_lambda", "mas_refresh", "lr")
        return cls(**{k: hyper[k] for k in keys if k in hyper})

    def bind(self, view: ModelView) -> None:
        self._view = view

    def observe(self, x: Tensor, y: Tensor) -> None:
        if self._view is None:
            return
        view = self._view
        params = view.weights()
        for xi in x:
            leaves = {n: t.detach().requires_grad_(True) for n, t in params.items()}
            with torch.enable_grad():
                out = view.forward(leaves, xi.unsqueeze(0).to(torch.float32))
                grads = torch.autograd.grad(out.pow(2).sum(), list(leaves.values()), allow_unused=True)
            for (n, t), g in zip(params.items(), grads, strict=True):
                mag = torch.zeros_like(t) if g is None else g.abs()
                if not torch.isfinite(mag).all():
                    continue
                self._acc[n] = self._acc[n] + mag if n in self._acc else mag.clone()
            self._count += 1
            self._since += 1
        if self._since >= self.refresh_every:
            self.consolidate(params)

    def consolidate(self, weights: dict[str, Tensor]) -> None:
        """Omega = running mean of the importance so far; anchor = ``weights``."""
        cap = 1.0 / self.lr
        coef = {n: (2.0 * self.lam * a / self._count).clamp(max=cap) for n, a in self._acc.items()}
        self._coef, self._anchor = coef, {n: weights[n].detach().clone() for n in coef}
        self._since = 0
        self.consolidations += 1

    def extra_grad(self, names: Sequence[str], tensors: Sequence[Tensor]) -> list[Tensor | None] | None:
        coef, anchor = self._coef, self._anchor  # one read each: consolidate swaps them whole
        if coef is None or anchor is None or self.lam == 0:
            return None
        out: list[Tensor | None] = []
        for n, t in zip(names, tensors, strict=True):
            if n not in coef:
                out.append(None)
                continue
            c, a = coef[n], anchor[n]
            if c.device != t.device:
                c, a = c.to(t.device), a.to(t.device)
            out.append(c * (t.detach() - a))
        return out

    def importance(self) -> dict[str, Tensor]:
        """The running-mean importance Omega (not yet consolidated), by parameter name."""
        return {n: a / max(1, self._count) for n, a in self._acc.items()}

    def memory_bytes(self) -> int:
        groups = [self._acc, self._coef or {}, self._anchor or {}]
        return sum(t.numel() * t.element_size() for g in groups for t in g.values())

    def memory_bound(self, param_bytes: int) -> int:
        return 3 * param_bytes  # running importance, consolidated coefficient, anchor weights

    def stats(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "consolidations": self.consolidations,
            "samples": self._count,
            "bytes": self.memory_bytes(),
        }

    def state_dict(self) -> dict[str, Any]:
        def copy(d: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
            return None if d is None else {n: t.clone() for n, t in d.items()}

        return {
            "method": self.name,
            "acc": copy(self._acc),
            "count": self._count,
            "since": self._since,
            "coef": copy(self._coef),
            "anchor": copy(self._anchor),
            "consolidations": self.consolidations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.foreign(state):
            return
        self._acc = {n: t.clone() for n, t in (state.get("acc") or {}).items()}
        self._count = int(state["count"])
        self._since = int(state["since"])
        coef, anchor = state.get("coef"), state.get("anchor")
        self._coef = {n: t.clone() for n, t in coef.items()} if coef is not None else None
        self._anchor = {n: t.clone() for n, t in anchor.items()} if anchor is not None else None
        self.consolidations = int(state["consolidations"])
