"""What a pipeline core keeps per stage, and the model-level views over its stages.

Role: :class:`StageState` is one stage's runner, version store, single-writer lock, optimiser
state and weight average; :class:`StageViews` (mixed into :class:`~ferretd.engine.core.PipelineCore`)
reads and installs the whole model from them by full-model parameter name: current weights,
optimiser state and averaged weights (each stage read under its writer lock), predictions on the
current versions, a state load, and the per-stage statistics the learner reports.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ferretd.engine.bookkeeping import Bookkeeping
from ferretd.engine.optim import OptimStates, WeightAverage
from ferretd.engine.stage import StageContext, StageRunner
from ferretd.engine.versions import VersionStore


@dataclass
class StageState:
    runner: StageRunner
    store: VersionStore
    optim: OptimStates
    average: WeightAverage | None = None
    writer_lock: threading.Lock = field(default_factory=threading.Lock)
    omitted_ctx: set[StageContext] = field(default_factory=set)

    @property
    def momentum(self) -> list[Tensor | None]:
        """SGD momentum (or Adam's first moment) per parameter."""
        return [p.first for p in self.optim.params]


class StageViews:
    """Model-level reads and writes over ``stages`` (see the module docstring)."""

    stages: list[StageState]
    param_names: list[list[str]]
    ema_decay: float | None
    book: Bookkeeping

    def current_tensors(self) -> list[tuple[Tensor, ...]]:
        return [st.store.current.tensors for st in self.stages]

    def predict(self, x: Tensor) -> Tensor:
        versions = self.current_tensors()
        for st, tensors in zip(self.stages, versions, strict=True):
            x = st.runner.predict(tensors, x)
        return x

    def full_state(self) -> dict[str, Tensor]:
        """Current weights under the full model's parameter names (on the CPU)."""
        return self.snapshot()[0]

    def momentum_state(self) -> dict[str, Tensor]:
        return self.snapshot()[1]

    def snapshot(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Weights and momentum of every stage's current version, each stage read under its writer lock."""
        weights, optim = self.learning_state()[:2]
        momentum = {n: e["first"] for n, e in optim.items() if "first" in e}
        return weights, momentum

    def learning_state(self) -> tuple[dict[str, Tensor], dict[str, dict[str, Any]], dict[str, Tensor] | None]:
        """Weights, optimiser state and averaged weights (None when off) by full parameter name."""
        weights: dict[str, Tensor] = {}
        optim: dict[str, dict[str, Any]] = {}
        average: dict[str, Tensor] | None = {} if self.ema_decay else None
        for names, st in zip(self.param_names, self.stages, strict=True):
            with st.writer_lock:
                tensors = st.store.current.tensors
                weights.update({n: t.detach().cpu().clone() for n, t in zip(names, tensors, strict=True)})
                optim.update(st.optim.to_dict(names))
                if average is not None and st.average is not None:
                    pairs = zip(names, st.average.tensors, strict=True)
                    average.update({n: t.detach().cpu().clone() for n, t in pairs})
        return weights, optim, average

    def averaged_count(self) -> int:
        return min((st.average.count for st in self.stages if st.average is not None), default=0)

    def load_state(
        self,
        weights: dict[str, Tensor],
        momentum: dict[str, Tensor],
        optim: dict[str, dict[str, Any]] | None = None,
        average: dict[str, Tensor] | None = None,
        average_count: int = 0,
    ) -> None:
        """Install weights and optimiser state (``optim``, else SGD ``momentum``) by full name."""
        saved = optim if optim is not None else {n: {"first": t} for n, t in momentum.items()}
        for names, st in zip(self.param_names, self.stages, strict=True):
            dev = st.runner.device
            st.store.reset(tuple(weights[n].to(dev) for n in names))
            st.optim = OptimStates.from_dict(names, saved, dev)
            if st.average is not None:
                have = average is not None and all(n in average for n in names)
                src = [average[n].to(dev) for n in names] if have and average is not None else st.store.current.tensors
                st.average.reset(src, average_count if have else 0)

    def stats(self) -> list[dict[str, Any]]:
        return [
            {
                "stage": j,
                "device": str(st.runner.device),
                "version": st.store.current.number,
                "updates": self.book.updates[j],
                "max_staleness": self.book.staleness_max[j],
                "mean_staleness": self.book.mean_staleness(j),
                "live_versions": st.store.live_versions(),
                "max_live_versions": st.store.max_live,
                "version_bytes": st.store.bytes_held(),
                "optimizer_bytes": st.optim.nbytes(),
            }
            for j, st in enumerate(self.stages)
        ]
