"""Experience Replay (ER): a reservoir buffer under a byte budget, replayed into every microbatch.

Decisions: the buffer holds at most ``replay_bytes // bytes_per_sample`` samples (input bytes +
8 bytes of label), fixed at the first observed sample; insertion is reservoir sampling over the
whole stream; each stream sample brings ``replay_per_sample`` replayed samples drawn without
replacement (fewer while the buffer is small). A seeded ``random.Random`` keeps runs reproducible.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import torch
from torch import Tensor

from ferretd.ocl.base import OclMethod


class ExperienceReplay(OclMethod):
    name = "er"

    def __init__(self, replay_bytes: int = 4 << 20, replay_per_sample: int = 1, seed: int = 0) -> None:
        self.replay_bytes = replay_bytes
        self.replay_per_sample = replay_per_sample
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._x: list[Tensor] = []
        self._y: list[int] = []
        self._capacity: int | None = None
        self._seen = 0

    @classmethod
    def from_hyper(cls, **hyper: Any) -> OclMethod:
        keys = ("replay_bytes", "replay_per_sample", "seed")
        return cls(**{k: hyper[k] for k in keys if k in hyper})

    @property
    def capacity(self) -> int | None:
        return self._capacity

    def __len__(self) -> int:
        return len(self._x)

    def augment(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with self._lock:
            k = min(len(self._x), self.replay_per_sample * x.shape[0])
            if k == 0:
                return x, y
            picks = self._rng.sample(range(len(self._x)), k)
            rx = torch.stack([self._x[i] for i in picks]).to(x.dtype)
            ry = torch.tensor([self._y[i] for i in picks], dtype=y.dtype)
        return torch.cat([x, rx]), torch.cat([y, ry])

    def observe(self, x: Tensor, y: Tensor) -> None:
        with self._lock:
            for xi, yi in zip(x, y.tolist(), strict=True):
                if self._capacity is None:
                    self._capacity = self.replay_bytes // (xi.numel() * xi.element_size() + 8)
                self._seen += 1
                if len(self._x) < self._capacity:
                    self._x.append(xi.detach().clone())
                    self._y.append(int(yi))
                else:
                    j = self._rng.randrange(self._seen)
                    if j < self._capacity:
                        self._x[j] = xi.detach().clone()
                        self._y[j] = int(yi)

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() + 8 for t in self._x)

    def memory_bound(self, param_bytes: int) -> int:
        return self.replay_bytes

    def stats(self) -> dict[str, Any]:
        return {"method": self.name, "size": len(self._x), "capacity": self._capacity, "bytes": self.memory_bytes()}

    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "method": self.name,
                "x": [t.clone() for t in self._x],
                "y": list(self._y),
                "capacity": self._capacity,
                "seen": self._seen,
                "rng": self._rng.getstate(),
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.foreign(state):
            return
        with self._lock:
            self._x = [t.clone() for t in state["x"]]
            self._y = [int(v) for v in state["y"]]
            self._capacity = state["capacity"]
            self._seen = int(state["seen"])
            if "rng" in state:
                self._rng.setstate(state["rng"])
