"""The interface continual-learning methods implement, and their registry.

The pipeline engine calls a method at two points (issue 3, item 7):

* ``augment(x, y)`` when a stream microbatch is formed, before it enters stage 0: returns the
  microbatch to train on (e.g. the new samples plus replayed ones). It runs in the caller's
  thread in arrival order, so runs stay deterministic and replayable.
* ``observe(x, y)`` right after, with the new stream samples only (e.g. reservoir insertion).
* ``extra_loss(logits, y)`` at the last stage, added to the cross-entropy (None = nothing).

Methods register themselves by ``name`` (like compensators); ``make_ocl(name, **hyper)`` builds
one, ignoring hyper-parameters a method does not take.
"""

from __future__ import annotations

from abc import ABC
from typing import Any, ClassVar

from torch import Tensor

OCL_METHODS: dict[str, type[OclMethod]] = {}


class OclMethod(ABC):  # noqa: B024 - every hook has a no-op default
    """Hooks for replay / regularisation on top of the pipeline engine; defaults do nothing."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            OCL_METHODS[cls.name] = cls

    @classmethod
    def from_hyper(cls, **hyper: Any) -> OclMethod:
        return cls()

    def augment(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return x, y

    def observe(self, x: Tensor, y: Tensor) -> None:
        return None

    def extra_loss(self, logits: Tensor, y: Tensor) -> Tensor | None:
        return None

    def memory_bytes(self) -> int:
        return 0

    def stats(self) -> dict[str, Any]:
        return {"method": self.name}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def make_ocl(name: str, **hyper: Any) -> OclMethod:
    """Instantiate a registered method (``vanilla``, ``er``, ...)."""
    import importlib
    import pkgutil

    import ferretd.ocl as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "base":
            importlib.import_module(f"ferretd.ocl.{info.name}")
    try:
        cls = OCL_METHODS[name]
    except KeyError:
        raise ValueError(f"unknown OCL method {name!r}; known: {sorted(OCL_METHODS)}") from None
    return cls.from_hyper(**hyper)
