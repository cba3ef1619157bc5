"""What an OCL method may see of the learner's model: current weights and a functional forward.

Role: MIR (virtual update), LwF (old model) and MAS (importance) need the model itself, which in
the pipeline engine is spread over stages as immutable published versions. The learner hands
each method a :class:`ModelView` through ``OclMethod.bind``:

* ``weights()``: the current published weights by full-model parameter name, on the CPU
  (no copy when they already are; versions never change after publication, so this is a
  consistent-per-stage read without locks). Never modify them in place.
* ``forward(params, x)``: the full model on ``x`` with exactly ``params`` as its parameters,
  differentiable in ``params`` (``torch.func.functional_call`` on a private copy of the
  template, under a lock, so only one caller computes with it at a time).
* ``frozen(params)``: a standalone module holding a copy of ``params``, for a lane thread to run
  read-only (LwF's old model).
* ``lr``: the learner's learning rate (MIR's virtual step; MAS's stability clamp).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable

import torch
from torch import Tensor, nn


class ModelView:
    def __init__(self, template: nn.Module, weights: Callable[[], dict[str, Tensor]], lr: float) -> None:
        self._template = copy.deepcopy(template).cpu()
        self._weights = weights
        self._lock = threading.Lock()
        self.lr = lr

    def weights(self) -> dict[str, Tensor]:
        return {n: t.detach().cpu() for n, t in self._weights().items()}

    def forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        with self._lock:
            return torch.func.functional_call(self._template, params, (x,))

    def frozen(self, params: dict[str, Tensor]) -> nn.Module:
        with self._lock:
            module = copy.deepcopy(self._template)
        module.load_state_dict({n: t.detach().clone() for n, t in params.items()}, strict=False)
        for p in module.parameters():
            p.requires_grad_(False)
        return module.eval()
