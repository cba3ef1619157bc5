"""The compensator interface the engine's single writer per stage calls before every update.

Call contract (one call per applied update, staleness 0 included, in update order per stage):

* ``grads[i]`` was computed at the pinned version ``v`` of the stage's parameter ``i``;
* ``pinned[i]`` is that version's tensor, ``current[i]`` the version ``c`` it is applied to;
* ``deltas[k][i] = theta^{v+k+1}_i - theta^{v+k}_i`` for ``k = 0 .. tau-1``, ``tau = c - v``
  (``len(deltas) == staleness``; ``sum(deltas) == current - pinned``).

A compensator returns new tensors and never mutates its inputs. Staleness 0 must return the
gradients unchanged. State that must survive a restart goes through ``state_dict``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor

COMPENSATORS: dict[str, type[Compensator]] = {}


class Compensator(ABC):
    """Turns a stale gradient into the gradient to apply at the current version."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            COMPENSATORS[cls.name] = cls

    @abstractmethod
    def compensate(
        self,
        stage: int,
        grads: Sequence[Tensor],
        pinned: Sequence[Tensor],
        current: Sequence[Tensor],
        deltas: Sequence[Sequence[Tensor]],
    ) -> list[Tensor]:
        """Gradients to apply at ``current`` for ``grads`` observed at ``pinned``."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def stats(self) -> dict[int, dict[str, Any]]:
        """Per-stage numbers for ``ferretctl status`` (lambda, staleness, fallbacks...)."""
        return {}


def make_compensator(name: str, **hyper: Any) -> Compensator:
    """Instantiate a registered compensator; unknown keyword arguments are ignored per method."""
    _load_builtin_methods()
    try:
        cls = COMPENSATORS[name]
    except KeyError:
        raise ValueError(f"unknown compensation method {name!r}; known: {sorted(COMPENSATORS)}") from None
    return cls.from_hyper(**hyper) if hasattr(cls, "from_hyper") else cls()


def _load_builtin_methods() -> None:
    import importlib
    import pkgutil

    import ferretd.compensation as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in {"base"}:
            importlib.import_module(f"ferretd.compensation.{info.name}")
