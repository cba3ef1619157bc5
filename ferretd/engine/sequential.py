"""The single-stage, single-worker learner: one optimiser update per microbatch, in the caller's thread.

This is the reference the pipeline engine is measured against (P=1, N=1 must match it bitwise)
and the learner the daemon falls back to when the plan has one stage and one worker. It shares
the pipeline core's update rule: gradients by ``torch.autograd.grad`` (no ``.grad``, no
torch.optim wrapper), the functional step of :mod:`ferretd.engine.optim`, the divergence guard
(a refused update leaves weights and optimiser state untouched and its samples are reported
dropped with the guard's reason), and optional weight averaging for export. The model stays in
its constructed mode (no per-step ``train()``/``eval()`` switch; the built-in models have no
mode-dependent layers, and the pipeline engine does the same); ``export_module`` returns an
eval-mode copy.

Lean step (issue 12): the model's forward is pre-bound to ``torch.nn.functional`` calls when
every layer is a plain one (:func:`ferretd.engine.stage.prebind`; bitwise the module's result,
else the module is called), the loss is ``F.cross_entropy`` directly, a single-sample microbatch
becomes a tensor without ``np.stack``, and plain SGD (the default) is one fused add whose state
change (the step count) is committed in place; the weights are bitwise those of before.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ferretd.config import TrainingConfig
from ferretd.engine.learner import DoneCallback, LearnOutcome, OnlineLearner, load_extras
from ferretd.engine.optim import DivergenceGuard, OptimStates, WeightAverage, is_plain_sgd, optimizer_step
from ferretd.engine.plan import Plan
from ferretd.engine.stage import prebind
from ferretd.models.normalize import RunningNorm, wrap_export


class SequentialLearner(OnlineLearner):
    """One functional optimiser update per ``microbatch`` samples, synchronously."""

    kind = "sequential"
    reports_predictions = True

    def __init__(
        self,
        model: nn.Module,
        training: TrainingConfig,
        *,
        norm: RunningNorm | None = None,
        ema_decay: float | None = None,
    ) -> None:
        self.model = model
        self.training = training
        self.norm = norm
        self.names = [n for n, _ in model.named_parameters()]
        self.params = [p for _, p in model.named_parameters()]
        self.optim = OptimStates.empty(len(self.params))
        self.guard = DivergenceGuard.from_config(training)
        self.average = WeightAverage(ema_decay, self.params) if ema_decay else None
        self._tensors = tuple(self.params)
        self._forward = prebind(model, self.names)  # None: call the module
        self._pending_x: list[np.ndarray] = []
        self._pending_y: list[int] = []
        self._pending_done: list[DoneCallback | None] = []
        self._updates = 0
        self._lock = threading.Lock()  # export_module may run from another thread

    @property
    def updates(self) -> int:
        return self._updates

    def predict_one(self, x: np.ndarray) -> np.ndarray:
        with self._lock, torch.no_grad():  # normalised as a tensor: no numpy round trip (same bits)
            features = torch.as_tensor(x, dtype=torch.float32)
            if self.norm is not None:
                features = self.norm(features)
            logits = self.model(features.unsqueeze(0))
        return torch.softmax(logits, dim=1)[0].numpy()

    def predict_many(self, xs: np.ndarray) -> np.ndarray:
        with self._lock, torch.no_grad():
            batch = torch.as_tensor(np.asarray(xs), dtype=torch.float32)
            if self.norm is not None:
                batch = self.norm(batch)
            return torch.softmax(self.model(batch), dim=1).numpy()

    def learn_one(self, x: np.ndarray, y: int, on_done: DoneCallback | None = None) -> None:
        if self.norm is not None:
            with self._lock:
                self.norm.update(x)
                x = self.norm.apply(x)
        self._pending_x.append(x)
        self._pending_y.append(int(y))
        self._pending_done.append(on_done)
        if len(self._pending_x) >= self.training.microbatch:
            self._step()

    def flush(self, timeout: float | None = None) -> bool:
        if self._pending_x:
            self._step()
        return True

    def in_flight_capacity(self) -> int:
        return self.training.microbatch

    def apply_plan(self, plan: Plan, timeout: float | None = None) -> bool:
        """Every sequential plan runs the same way here: apply the pending microbatch, carry on."""
        return self.flush(timeout)

    def _batch(self, xs: list[np.ndarray], ys: list[int]) -> tuple[Tensor, Tensor]:
        """The pending samples as tensors (a lone float32 sample: a view of its array, no copy)."""
        if len(xs) == 1:
            x = xs[0]
            if type(x) is np.ndarray and x.dtype == np.float32 and x.flags.writeable and x.flags.c_contiguous:
                return torch.from_numpy(x[None]), torch.full((1,), ys[0], dtype=torch.long)
        return torch.as_tensor(np.stack(xs), dtype=torch.float32), torch.as_tensor(ys, dtype=torch.long)

    def _step(self) -> None:
        xb, yb = self._batch(self._pending_x, self._pending_y)
        done = self._pending_done
        self._pending_x, self._pending_y, self._pending_done = [], [], []
        params, training, guard = self._tensors, self.training, self.guard
        with self._lock:
            logits = self.model(xb) if self._forward is None else self._forward(params, xb)
            loss = nn.functional.cross_entropy(logits, yb)
            predicted = logits.detach().argmax(1).tolist()  # test, then train: before this update
            refused = guard.check_loss(float(loss.detach()))
            if refused is None:
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                if any(g is None for g in grads):
                    grads = tuple(
                        g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)
                    )
                with torch.no_grad():
                    plain = is_plain_sgd(training)
                    if plain:  # optimizer_step's default branch, its state change committed below
                        new: tuple[Tensor, ...] | list[Tensor] = torch._foreach_add(params, grads, alpha=-training.lr)
                        optim = self.optim
                    else:
                        new, optim = optimizer_step(params, grads, self.optim, training)
                    refused = guard.check_update(params, new)
                    if refused is None:
                        torch._foreach_copy_(params, new)
                        if plain:
                            optim.count_step()
                        self.optim = optim
                        if self.average is not None:
                            self.average.update(new)
                        self._updates += 1
            if refused is not None:
                guard.refused(refused)
        trained, reason = refused is None, refused or ""
        for callback, guess in zip(done, predicted, strict=True):
            if callback is not None:
                callback(LearnOutcome(trained, reason, guess))

    def export_module(self) -> nn.Module:
        with self._lock:
            clone = copy.deepcopy(self.model)
            if self.average is not None:
                with torch.no_grad():
                    for p, avg in zip(clone.parameters(), self.average.tensors, strict=True):
                        p.copy_(avg)
            return wrap_export(clone, self.norm)

    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "kind": "sequential",
                "model": copy.deepcopy(self.model.state_dict()),
                "optim": self.optim.to_dict(self.names),
                "average": dict(zip(self.names, [t.clone() for t in self.average.tensors], strict=True))
                if self.average is not None
                else None,
                "average_count": self.average.count if self.average is not None else 0,
                "normalizer": self.norm.state() if self.norm is not None else None,
                "guard": self.guard.state(),
                "updates": self._updates,
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self._lock:
            self.model.load_state_dict(state["model"])
            device = self.params[0].device if self.params else torch.device("cpu")
            if state.get("optim") is not None:  # None: weights only (resumed from another engine)
                self.optim = OptimStates.from_dict(self.names, state["optim"], device)
            elif state.get("momentum"):
                self.optim = OptimStates.from_dict(
                    self.names, {n: {"first": t} for n, t in state["momentum"].items()}, device
                )
            else:
                self.optim = OptimStates.empty(len(self.params))
            if self.average is not None:
                average = state.get("average")
                if average is not None and all(n in average for n in self.names):
                    self.average.reset([average[n] for n in self.names], int(state.get("average_count") or 0))
                else:
                    self.average.reset(self.params)
            load_extras(state, self.norm, self.guard)
            self._updates = int(state["updates"])

    def status(self) -> dict[str, Any]:
        return {
            "engine": "sequential",
            "stages": 1,
            "workers": 1,
            "pending_in_microbatch": len(self._pending_x),
            "guard": self.guard.stats(),
            "normalizer": self.norm.stats() if self.norm is not None else None,
        }
