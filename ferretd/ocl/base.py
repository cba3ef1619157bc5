"""The interface continual-learning methods implement, and their registry.

The pipeline engine calls a method at two points (issue 3, item 7):

* ``augment(x, y)`` when a stream microbatch is formed, before it enters stage 0: returns the
  microbatch to train on (e.g. the new samples plus replayed ones). It runs in the caller's
  thread in arrival order, so runs stay deterministic and replayable.
* ``observe(x, y)`` right after, with the new stream samples only (e.g. reservoir insertion).
* ``extra_loss(logits, y, x)`` at the last stage, added to the cross-entropy (None = nothing);
  ``x`` is the microbatch's stage-0 input (what LwF's old model must see).
* ``extra_grad(names, tensors)`` after each stage's backward, with the stage's parameter names
  (full-model names) and the pinned version's tensors: a gradient to add to the loss gradient
  (a parameter regulariser such as MAS, whose terms no single stage's loss can see), or None.
  It goes through compensation and accumulation with the rest of the gradient.
* ``bind(view)`` once the learner is built (and again after a re-plan): a :class:`ModelView` of
  the learner's current weights with a functional forward, for methods that need the model
  itself (MIR's virtual update, LwF's old model, MAS's importance). Called from the caller's thread.

Thread rules: ``augment``/``observe``/``bind`` run in the caller's thread; ``extra_loss`` and
``extra_grad`` run in lane threads, possibly concurrently, so they only read state that the
caller's thread replaces by swapping a reference, never in place.

Methods register themselves by ``name`` (like compensators); ``make_ocl(name, **hyper)`` builds
one, ignoring hyper-parameters a method does not take. ``memory_bytes()`` is every byte the method
holds beyond the model (buffers, old weights, importances): the planner and status trust it.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import structlog
from torch import Tensor

if TYPE_CHECKING:
    from ferretd.ocl.view import ModelView

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

    def extra_loss(self, logits: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor | None:
        return None

    def extra_grad(self, names: Sequence[str], tensors: Sequence[Tensor]) -> list[Tensor | None] | None:
        return None

    def bind(self, view: ModelView) -> None:
        return None

    @property
    def uses_extra_loss(self) -> bool:
        """Whether the method overrides ``extra_loss`` (else the engine need not call it)."""
        return type(self).extra_loss is not OclMethod.extra_loss

    @property
    def uses_extra_grad(self) -> bool:
        return type(self).extra_grad is not OclMethod.extra_grad

    def memory_bytes(self) -> int:
        return 0

    def memory_bound(self, param_bytes: int) -> int:
        """The most ``memory_bytes()`` can reach for a model of ``param_bytes`` (for a planner)."""
        return 0

    def stats(self) -> dict[str, Any]:
        return {"method": self.name}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def foreign(self, state: dict[str, Any]) -> bool:
        """True when ``state`` was saved by another method (``[ocl] method`` changed between runs):
        it is logged and not loaded, the method starts fresh, the model weights still resume.
        Every method's ``state_dict`` carries ``"method"``; ``load_state_dict`` checks this first."""
        saved = state.get("method", self.name)
        if saved == self.name:
            return False
        structlog.get_logger("ferretd").warning("ocl_state_ignored", saved=str(saved)[:40], method=self.name)
        return True


def load_builtin_methods() -> dict[str, type[OclMethod]]:
    """Import every module of ``ferretd/ocl`` so their methods register; the registry."""
    import importlib
    import pkgutil

    import ferretd.ocl as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "base":
            importlib.import_module(f"ferretd.ocl.{info.name}")
    return OCL_METHODS


def make_ocl(name: str, **hyper: Any) -> OclMethod:
    """Instantiate a registered method (``vanilla``, ``er``, ``mir``, ``lwf``, ``mas``)."""
    load_builtin_methods()
    try:
        cls = OCL_METHODS[name]
    except KeyError:
        raise ValueError(f"unknown OCL method {name!r}; known: {sorted(OCL_METHODS)}") from None
    return cls.from_hyper(**hyper)
