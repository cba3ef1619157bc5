"""Immutable weight versions of one stage, reference-counted pins, and the deltas between them.

Role: the memory of weight stashing (Ferret notes, section 2). Stage ``j`` starts at version 0;
every update applied by the stage's single writer publishes version ``c + 1`` out of place, so
a version's tensors never change after publication. A forward *pins* the current version (the
microbatch holds a reference until its update is applied) and the backward / recompute runs on
exactly those tensors.

Decisions:

* A version stays alive while it is current or pinned; an unpinned, superseded version is
  dropped at once. Workers share the current version (one model, section 2 "All workers update
  the same model"): N workers add only pinned old versions, never a second current copy.
* Deltas ``deltas[k] = theta^{k+1} - theta^k`` are computed at publication, but only when
  ``keep_deltas`` is set (a compensator is configured) and some pinned version ``<= k`` exists;
  they are dropped as soon as the oldest pinned version is newer than ``k``. Intermediate
  versions are therefore not kept alive just to compute deltas later.
* Staleness of a gradient is ``tau = c - v``: current version number when the update is applied
  minus the version number its forward pinned.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class Version:
    """One published, immutable set of a stage's parameter tensors."""

    number: int
    tensors: tuple[Tensor, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)


class VersionStore:
    """Versions of one stage: pin / unpin / publish, deltas for compensation, and statistics."""

    def __init__(self, tensors: tuple[Tensor, ...], *, keep_deltas: bool = False, first: int = 0) -> None:
        self.lock = threading.RLock()
        self.keep_deltas = keep_deltas
        self._current = Version(first, tuple(t.detach().clone() for t in tensors))
        self._versions: dict[int, Version] = {first: self._current}
        self._pins: Counter[int] = Counter()
        self._deltas: dict[int, tuple[Tensor, ...]] = {}
        self.max_live = 1

    # ------------------------------------------------------------------ reading

    @property
    def current(self) -> Version:
        return self._current

    def get(self, number: int) -> Version:
        with self.lock:
            return self._versions[number]

    def live_versions(self) -> int:
        with self.lock:
            return len(self._versions)

    def live_numbers(self) -> list[int]:
        with self.lock:
            return sorted(self._versions)

    def bytes_held(self) -> int:
        """Bytes in live versions plus kept deltas (what weight stashing costs right now)."""
        with self.lock:
            held = sum(v.nbytes for v in self._versions.values())
            held += sum(t.numel() * t.element_size() for d in self._deltas.values() for t in d)
            return held

    def deltas_since(self, number: int) -> list[tuple[Tensor, ...]]:
        """``[theta^{v+1}-theta^v, ..., theta^c-theta^{c-1}]`` for pinned version ``v = number``."""
        with self.lock:
            return [self._deltas[k] for k in range(number, self._current.number)]

    # ------------------------------------------------------------------ pins

    def pin(self) -> Version:
        """Reference the current version for an in-flight microbatch."""
        with self.lock:
            version = self._current
            self._pins[version.number] += 1
            return version

    def pin_if_current(self, number: int) -> Version | None:
        """Pin version ``number`` only if it is still current (backprop omission's check)."""
        with self.lock:
            if self._current.number != number:
                return None
            return self.pin()

    def unpin(self, version: Version) -> None:
        with self.lock:
            n = version.number
            self._pins[n] -= 1
            if self._pins[n] <= 0:
                del self._pins[n]
                if n != self._current.number:
                    self._versions.pop(n, None)
            self._gc_deltas()

    # ------------------------------------------------------------------ writing

    def publish(self, tensors: tuple[Tensor, ...]) -> Version:
        """Make ``tensors`` the next version; only the stage's single writer calls this."""
        with self.lock:
            old = self._current
            new = Version(old.number + 1, tuple(t.detach() for t in tensors))
            if self.keep_deltas and self._pins and min(self._pins) <= old.number:
                self._deltas[old.number] = tuple(n - o for n, o in zip(new.tensors, old.tensors, strict=True))
            self._versions[new.number] = new
            self._current = new
            if old.number not in self._pins:
                del self._versions[old.number]
            self.max_live = max(self.max_live, len(self._versions))
            return new

    def reset(self, tensors: tuple[Tensor, ...]) -> None:
        """Replace the current weights (state load); only valid with nothing pinned."""
        with self.lock:
            if self._pins:
                raise RuntimeError("cannot reset weights while versions are pinned")
            number = self._current.number
            self._current = Version(number, tuple(t.detach().clone() for t in tensors))
            self._versions = {number: self._current}
            self._deltas.clear()

    def _gc_deltas(self) -> None:
        oldest = min(self._pins) if self._pins else self._current.number
        for k in [k for k in self._deltas if k < oldest]:
            del self._deltas[k]


def sgd_step(
    params: tuple[Tensor, ...],
    grads: list[Tensor],
    buffers: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
) -> tuple[Tensor, ...]:
    """Out-of-place copy of ``torch.optim.SGD``'s single-tensor step (bitwise the same result).

    ``buffers`` (the momentum state, owned by the stage's single writer) is updated in place.
    """
    out = []
    with torch.no_grad():
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            d = g.add(p, alpha=weight_decay) if weight_decay != 0 else g
            if momentum != 0:
                buf = buffers[i]
                if buf is None:
                    buf = d.detach().clone()
                    buffers[i] = buf
                else:
                    buf.mul_(momentum).add_(d, alpha=1.0)
                d = buf
            out.append(p.add(d, alpha=-lr))
    return tuple(out)
