"""Functional optimisers, the divergence guard and weight averaging shared by both learners.

Role: the one update rule of the sequential learner and of the pipeline core's single writer
(``core._update``). Every function is out of place: it returns the new weights *and* the new
optimiser state, and the caller commits both only when the :class:`DivergenceGuard` accepts the
update, so a discarded update leaves weights and state exactly as they were.

Optimisers (``[training] optimizer``):

* ``sgd`` (default, the method's): bitwise ``torch.optim.SGD`` (weight decay, momentum).
* ``adam``: Adam with bias correction (L2 weight decay added to the gradient, as torch's Adam).
* ``adagrad``: per-coordinate ``lr / (sqrt(sum g^2) + eps)``; no momentum.

Optimiser state is kept per parameter (``first``: SGD momentum or Adam's first moment;
``second``: Adam's second moment or AdaGrad's sum of squares; ``steps``: Adam's bias-correction
count) and stored by full-model parameter name, so it survives re-plans and learner swaps.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ferretd.config import TrainingConfig


@dataclass
class ParamState:
    """Optimiser state of one parameter tensor."""

    first: Tensor | None = None
    second: Tensor | None = None
    steps: int = 0


@dataclass
class OptimStates:
    """Optimiser state of a list of parameters (one stage, or the whole sequential model)."""

    params: list[ParamState] = field(default_factory=list)

    @classmethod
    def empty(cls, n: int) -> OptimStates:
        return cls([ParamState() for _ in range(n)])

    def to_dict(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, st in zip(names, self.params, strict=True):
            entry: dict[str, Any] = {"steps": st.steps}
            if st.first is not None:
                entry["first"] = st.first.detach().cpu().clone()
            if st.second is not None:
                entry["second"] = st.second.detach().cpu().clone()
            out[name] = entry
        return out

    @classmethod
    def from_dict(cls, names: Sequence[str], saved: dict[str, dict[str, Any]], device: torch.device) -> OptimStates:
        params = []
        for name in names:
            entry = saved.get(name, {})
            first, second = entry.get("first"), entry.get("second")
            params.append(
                ParamState(
                    first.to(device).clone() if first is not None else None,
                    second.to(device).clone() if second is not None else None,
                    int(entry.get("steps", 0)),
                )
            )
        return cls(params)

    def count_step(self) -> None:
        """Commit a plain SGD update in place, as ``optimizer_step``'s default branch would return it:
        every step count + 1 and no moments (stale ones from another optimiser are dropped)."""
        for st in self.params:
            st.first = st.second = None
            st.steps += 1

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for p in self.params for t in (p.first, p.second) if t is not None)


def is_plain_sgd(training: TrainingConfig) -> bool:
    """SGD without weight decay or momentum (the default): new weights ``p - lr * g``, no state."""
    return training.optimizer == "sgd" and training.weight_decay == 0 and training.momentum == 0


def optimizer_step(
    params: Sequence[Tensor], grads: Sequence[Tensor], state: OptimStates, training: TrainingConfig
) -> tuple[tuple[Tensor, ...], OptimStates]:
    """New weights and new state for one update; ``params`` and ``state`` are left untouched."""
    kind = training.optimizer
    lr, wd = training.lr, training.weight_decay
    if is_plain_sgd(training):  # the default: one fused call, same kernel
        with torch.no_grad():
            stepped = torch._foreach_add(list(params), list(grads), alpha=-lr)
        return tuple(stepped), OptimStates([ParamState(None, None, st.steps + 1) for st in state.params])
    new_params: list[Tensor] = []
    new_state: list[ParamState] = []
    with torch.no_grad():
        for p, g, st in zip(params, grads, state.params, strict=True):
            d = g.add(p, alpha=wd) if wd != 0 else g
            if kind == "sgd":
                first = st.first
                if training.momentum != 0:
                    first = d.detach().clone() if first is None else first.mul(training.momentum).add(d, alpha=1.0)
                    d = first
                new_params.append(p.add(d, alpha=-lr))
                new_state.append(ParamState(first, None, st.steps + 1))
            elif kind == "adam":
                b1, b2, eps = training.beta1, training.beta2, training.eps
                steps = st.steps + 1
                m = d.mul(1 - b1) if st.first is None else st.first.mul(b1).add(d, alpha=1 - b1)
                v = d.mul(d).mul(1 - b2) if st.second is None else st.second.mul(b2).addcmul(d, d, value=1 - b2)
                denom = v.div(1 - b2**steps).sqrt().add(eps)
                new_params.append(p.addcdiv(m, denom, value=-lr / (1 - b1**steps)))
                new_state.append(ParamState(m, v, steps))
            elif kind == "adagrad":
                s = d.mul(d) if st.second is None else st.second.addcmul(d, d, value=1.0)
                new_params.append(p.addcdiv(d, s.sqrt().add(training.eps), value=-lr))
                new_state.append(ParamState(None, s, st.steps + 1))
            else:
                raise ValueError(f"unknown optimizer {kind!r}")
    return tuple(new_params), OptimStates(new_state)


# --------------------------------------------------------------------------- divergence guard


DIVERGED_NONFINITE = "diverged_nonfinite"
DIVERGED_EXPLODING = "diverged_exploding"


def _squared_norms(tensors: list[Tensor]) -> list[float]:
    """Squared 2-norms of ``tensors`` (float64) from one fused norm call and one device sync.

    Each float32 norm is widened to a Python float (exact) and squared there: the same double
    product as ``double().pow(2)`` on the device, two dispatches fewer.
    """
    norms = torch._foreach_norm(tensors)
    try:
        values: list[float] = torch.stack(norms).tolist()
    except RuntimeError:  # stages on several devices: gather first
        device = norms[0].device
        values = torch.stack([n.to(device) for n in norms]).tolist()
    return [v * v for v in values]


class DivergenceGuard:
    """Decides whether an update may be applied (``[training] guard_*``).

    An update is refused as ``diverged_nonfinite`` when its loss, gradients or new weights hold a
    NaN or infinity, and as ``diverged_exploding`` when its loss exceeds ``guard_loss_factor``
    times the running loss EMA and ``LOSS_FLOOR`` (cross-entropy 1000: logits 1000 apart), or
    when it would move the weights by more than ``guard_step_ratio`` times their norm
    (``||new - old|| > r * max(||old||, 1)``; a huge learning rate or gradient). 0 turns either
    exploding check off. Accepted losses feed the EMA. ``refused`` takes a lock (the stages'
    writers of the pipeline count concurrently); ``check_loss`` runs under the caller's lock.
    """

    LOSS_FLOOR = 1000.0  # a hard but healthy sample can reach a loss of ~30 (measured on digits); 1000 cannot
    EMA_RATE = 0.05

    def __init__(self, loss_factor: float = 100.0, step_ratio: float = 1.0) -> None:
        self.loss_factor = loss_factor
        self.step_ratio = step_ratio
        self.loss_ema: float | None = None
        self.counts: dict[str, int] = {DIVERGED_NONFINITE: 0, DIVERGED_EXPLODING: 0}
        self.last_reason: str | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, training: TrainingConfig) -> DivergenceGuard:
        return cls(training.guard_loss_factor, training.guard_step_ratio)

    def check_loss(self, loss: float) -> str | None:
        """The loss of one microbatch: None if fine (and folded into the EMA), else the reason."""
        if not math.isfinite(loss):
            return DIVERGED_NONFINITE
        ema = self.loss_ema
        if self.loss_factor > 0 and ema is not None and loss > max(self.loss_factor * ema, self.LOSS_FLOOR):
            return DIVERGED_EXPLODING
        self.loss_ema = loss if ema is None else (1 - self.EMA_RATE) * ema + self.EMA_RATE * loss
        return None

    def check_update(self, old: Sequence[Tensor], new: Sequence[Tensor]) -> str | None:
        """New weights of one update: None if they may be published, else the reason.

        With the step check on, the norms are those of ``new - old`` first (one fused norm call,
        one device sync). A finite step no longer than ``guard_step_ratio`` is accepted at once:
        ``max(||old||, 1) >= 1``, so it cannot exceed the limit whatever the weights' norm (the
        same decision as comparing, without the second norm call; the default step of a healthy
        model is far below 1). Only a longer step takes the old weights' norms. The old weights
        were accepted (finite), so a NaN or an infinity in the new weights shows in the step's
        norm, and only then are the new weights' own norms taken, to tell a non-finite weight
        from a finite step too large to measure.
        """
        if not new:
            return None
        norm_sq = math.inf
        with torch.no_grad():
            if self.step_ratio > 0:
                step_sq = sum(_squared_norms(list(torch._foreach_sub(list(new), list(old)))))
                if math.isfinite(step_sq):
                    limit = self.step_ratio**2
                    if step_sq <= limit:
                        return None
                    norm_sq = sum(_squared_norms(list(old)))
                    return DIVERGED_EXPLODING if step_sq > limit * max(norm_sq, 1.0) else None
                norm_sq = sum(_squared_norms(list(old)))
            if not math.isfinite(sum(_squared_norms(list(new)))):  # a NaN or infinity in the new weights
                return DIVERGED_NONFINITE
        if self.step_ratio > 0 and math.isfinite(norm_sq):  # finite weights, a step beyond float range
            return DIVERGED_EXPLODING
        return None  # no step check, or non-finite old weights: no norm to compare a step with

    def refused(self, reason: str) -> None:
        with self._lock:
            self.counts[reason] = self.counts.get(reason, 0) + 1
            self.last_reason = reason

    def stats(self) -> dict[str, Any]:
        return {"refused": dict(self.counts), "loss_ema": self.loss_ema, "last_reason": self.last_reason}

    def state(self) -> dict[str, Any]:
        return {"loss_ema": self.loss_ema, "counts": dict(self.counts)}

    def load(self, state: dict[str, Any]) -> None:
        self.loss_ema = state.get("loss_ema")
        self.counts.update({k: int(v) for k, v in state.get("counts", {}).items()})


# --------------------------------------------------------------------------- weight averaging


class WeightAverage:
    """Polyak/EMA of weights: ``avg = d_t * avg + (1 - d_t) * new`` after every accepted update.

    ``d_t = min(decay, (1 + t) / (10 + t))`` so the average follows the weights closely during the
    first updates instead of remembering the random initialisation (t = updates averaged so far).
    """

    def __init__(self, decay: float, tensors: Sequence[Tensor]) -> None:
        self.decay = decay
        self.count = 0
        self.tensors = [t.detach().clone() for t in tensors]

    def update(self, new: Sequence[Tensor]) -> None:
        d = min(self.decay, (1 + self.count) / (10 + self.count))
        with torch.no_grad():  # avg + (1 - d) (new - avg): one fused in-place call (20 vs 75 us, MLP)
            torch._foreach_lerp_(self.tensors, [t.detach() for t in new], 1 - d)
        self.count += 1

    def reset(self, tensors: Sequence[Tensor], count: int = 0) -> None:
        self.tensors = [t.detach().clone() for t in tensors]
        self.count = count
