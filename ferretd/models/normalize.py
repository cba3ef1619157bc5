"""Online input normalisation: per-feature running mean and variance, applied before the model.

Role: raw sensor streams arrive with feature scales from 1e-3 to 1e6; an MLP trained on them by
one-sample SGD diverges within a few steps. :class:`RunningNorm` standardises every feature with
statistics learned from the stream itself, so devices need not know them.

Decisions (``[model] normalize``, ``normalize_decay``, ``normalize_clip``):

* It is a buffer-holding module in front of the model, not a block of the model: it has no
  trainable weights, is never cut by a pipeline partition, and the learner applies it to a
  sample before the sample enters the engine (sequential or pipeline alike).
* Test-then-train: a sample is predicted with the statistics of the samples before it; the
  learner updates the statistics with the sample in ``learn_one`` (before normalising it for
  training), so a prediction never benefits from the sample it scores.
* Update rule: ``rate = max(1/n, decay)``; ``mean += rate * d``;
  ``var = (1 - rate) * (var + rate * d^2)`` with ``d = x - mean``. With ``decay = 0`` this is
  exactly Welford's population variance; with ``decay > 0`` it becomes an EMA after ``1/decay``
  samples (forgets old statistics under drift). Statistics are kept in float64.
* Near-constant features: ``std = max(sqrt(var), 1e-6 * (|mean| + 1))``; a feature that was
  always the same value maps to 0 (``x - mean = 0``), never to a huge number. Normalised values
  are clipped to ``[-clip, clip]`` so one wild reading cannot blow up an update.
* The forward uses float32 ``shift``/``scale`` buffers derived from the statistics (brought up
  to date when next used, not on every update); export (``frozen()``) copies exactly those
  buffers into the ONNX graph, so ferret-infer applies the identical transform. ``apply`` (the
  learner's per-sample path) does the same float32 arithmetic in numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

REL_EPS = 1e-6


class FrozenNorm(nn.Module):
    """``clamp((x - shift) / scale, -clip, clip)`` with fixed float32 buffers (what gets exported)."""

    def __init__(self, shift: Tensor, scale: Tensor, clip: float) -> None:
        super().__init__()
        self.register_buffer("shift", shift.to(torch.float32).clone())
        self.register_buffer("scale", scale.to(torch.float32).clone())
        self.clip = float(clip)

    def forward(self, x: Tensor) -> Tensor:
        z = (x - self.shift) / self.scale
        return torch.clamp(z, -self.clip, self.clip) if self.clip > 0 else z


class RunningNorm(FrozenNorm):
    """Running per-feature statistics of the stream; ``update`` then ``forward`` as a FrozenNorm."""

    def __init__(self, shape: tuple[int, ...], decay: float = 0.0, clip: float = 10.0) -> None:
        super().__init__(torch.zeros(shape), torch.ones(shape), clip)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.shape = tuple(shape)
        self.decay = float(decay)
        self.count = 0
        self.mean = np.zeros(self.shape, dtype=np.float64)
        self.var = np.zeros(self.shape, dtype=np.float64)
        self._dirty = True
        self._stale_buffers = True
        self._shift32 = np.zeros(self.shape, dtype=np.float32)
        self._scale32 = np.ones(self.shape, dtype=np.float32)

    def update(self, x: np.ndarray) -> None:
        """Fold one sample (of the configured shape) into the statistics."""
        xs = np.asarray(x, dtype=np.float64).reshape(self.shape)
        self.count += 1
        rate = max(1.0 / self.count, self.decay)
        d = xs - self.mean
        step = rate * d
        self.mean += step
        step *= d  # (rate * d) * d, then var = (1 - rate) * (var + that): in place, the same bits
        self.var += step
        self.var *= 1.0 - rate
        self._dirty = True

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The float32 shift and scale of the current statistics (computed once per update)."""
        if self._dirty:
            std = np.maximum(np.sqrt(self.var), REL_EPS * (np.abs(self.mean) + 1.0))
            self._shift32 = self.mean.astype(np.float32)
            self._scale32 = std.astype(np.float32)
            self._dirty = False
            self._stale_buffers = True
        return self._shift32, self._scale32

    def _refresh(self) -> None:
        """Bring the module's buffers (what forward, export and ONNX use) to the current statistics."""
        shift, scale = self._arrays()
        if self._stale_buffers:
            self.shift.copy_(torch.from_numpy(shift))
            self.scale.copy_(torch.from_numpy(scale))
            self._stale_buffers = False

    def forward(self, x: Tensor) -> Tensor:
        self._refresh()
        return super().forward(x)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalise one numpy sample with the current statistics (float32), in numpy: the same
        elementwise float32 subtract, divide and clip as :meth:`forward`, so the same bits (tested),
        without a torch call or a buffer copy per sample (the learner calls it on every sample)."""
        shift, scale = self._arrays()
        z = np.asarray(x, dtype=np.float32) - shift
        z /= scale
        if self.clip > 0:
            np.clip(z, -self.clip, self.clip, out=z)
        return z

    def frozen(self) -> FrozenNorm:
        """A standalone copy of the current transform, for export."""
        self._refresh()
        return FrozenNorm(self.shift, self.scale, self.clip)

    def stats(self) -> dict[str, Any]:
        return {"count": self.count, "decay": self.decay}

    def state(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean.copy(), "var": self.var.copy(), "decay": self.decay}

    def load(self, state: dict[str, Any]) -> None:
        mean = np.asarray(state["mean"], dtype=np.float64)
        var = np.asarray(state["var"], dtype=np.float64)
        if mean.shape != self.shape or var.shape != self.shape:
            raise ValueError(f"normaliser state has shape {mean.shape}, the model input is {self.shape}")
        self.count, self.mean, self.var = int(state["count"]), mean.copy(), var.copy()
        self._dirty = True
        self._refresh()


class Normalized(nn.Module):
    """``model(norm(x))``: the module that is exported when normalisation is on."""

    def __init__(self, norm: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.norm(x))


def make_norm(kind: str, shape: tuple[int, ...], decay: float, clip: float) -> RunningNorm | None:
    """``[model] normalize``: ``"running"`` builds a RunningNorm, ``"none"`` nothing."""
    if kind == "none":
        return None
    if kind == "running":
        return RunningNorm(tuple(shape), decay=decay, clip=clip)
    raise ValueError(f"unknown normalisation {kind!r}")


def make_norm_for(config: Any) -> RunningNorm | None:
    """The normaliser a daemon config asks for (``[model] normalize*``)."""
    m = config.model
    return make_norm(m.normalize, tuple(m.input_shape), m.normalize_decay, m.normalize_clip)


def wrap_export(module: nn.Module, norm: RunningNorm | None) -> nn.Module:
    """What a learner hands to the exporter: the model, behind a frozen copy of the normaliser."""
    out = Normalized(norm.frozen(), module) if norm is not None else module
    return out.eval()
