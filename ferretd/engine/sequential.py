"""The single-stage, single-worker learner: plain SGD on every microbatch, in the caller's thread.

This is the reference the pipeline engine is measured against (P=1, N=1 must match it bitwise)
and the learner the daemon falls back to when the plan has one stage and one worker.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import numpy as np
import torch
from torch import nn

from ferretd.config import TrainingConfig
from ferretd.engine.learner import DoneCallback, LearnOutcome, OnlineLearner


class SequentialLearner(OnlineLearner):
    """SGD on a torch model, one update per ``microbatch`` samples, synchronously."""

    def __init__(self, model: nn.Module, training: TrainingConfig) -> None:
        self.model = model
        self.training = training
        self.optimizer = torch.optim.SGD(
            model.parameters(),
            lr=training.lr,
            momentum=training.momentum,
            weight_decay=training.weight_decay,
        )
        self.loss_fn = nn.CrossEntropyLoss()
        self._pending_x: list[np.ndarray] = []
        self._pending_y: list[int] = []
        self._pending_done: list[DoneCallback | None] = []
        self._updates = 0
        self._lock = threading.Lock()  # export_module may run from another thread

    @property
    def updates(self) -> int:
        return self._updates

    def predict_one(self, x: np.ndarray) -> np.ndarray:
        with self._lock, torch.no_grad():
            was_training = self.model.training
            self.model.eval()
            logits = self.model(torch.as_tensor(x, dtype=torch.float32).unsqueeze(0))
            self.model.train(was_training)
        return torch.softmax(logits, dim=1)[0].numpy()

    def learn_one(self, x: np.ndarray, y: int, on_done: DoneCallback | None = None) -> None:
        self._pending_x.append(x)
        self._pending_y.append(int(y))
        self._pending_done.append(on_done)
        if len(self._pending_x) >= self.training.microbatch:
            self._step()

    def flush(self, timeout: float | None = None) -> bool:
        if self._pending_x:
            self._step()
        return True

    def _step(self) -> None:
        xb = torch.as_tensor(np.stack(self._pending_x), dtype=torch.float32)
        yb = torch.as_tensor(self._pending_y, dtype=torch.long)
        done = self._pending_done
        self._pending_x, self._pending_y, self._pending_done = [], [], []
        with self._lock:
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(xb), yb)
            loss.backward()
            self.optimizer.step()
            self._updates += 1
        for callback in done:
            if callback is not None:
                callback(LearnOutcome(trained=True))

    def export_module(self) -> nn.Module:
        with self._lock:
            clone = copy.deepcopy(self.model)
        return clone.eval()

    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "kind": "sequential",
                "model": copy.deepcopy(self.model.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "updates": self._updates,
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self._lock:
            self.model.load_state_dict(state["model"])
            if state.get("optimizer") is not None:  # None: weights only (resumed from another engine)
                self.optimizer.load_state_dict(state["optimizer"])
            self._updates = int(state["updates"])

    def status(self) -> dict[str, Any]:
        return {
            "engine": "sequential",
            "stages": 1,
            "workers": 1,
            "pending_in_microbatch": len(self._pending_x),
        }
