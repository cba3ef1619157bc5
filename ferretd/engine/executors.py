"""How the engine's actions are run: one frozen :class:`ExecutorSpec` and the one factory for it.

Role: every knob of an executor (which kind, the virtual clock's costs and arrival interval, the
thread lanes' test jitter and intra-op threads, what the action log keeps) travels in one value,
and :func:`build_executor` is the only place that turns it into a running executor. Callers
(the learner, tests, benchmarks) name a kind (``"realtime"``) or pass a spec
(``ExecutorSpec.virtual(cost={(1, "B"): 3.0}, t_d=0.5)``); the spec's string form
(``virtual(t_d=0.5, cost={1B: 3})``) is what logs and reports print, and :meth:`ExecutorSpec.parse`
reads it back (every knob but ``jitter``, which is code).

Kinds (registered in :data:`EXECUTORS`; the executor contract tests run every one):

* ``virtual``: deterministic virtual clock (runtime.VirtualExecutor); sample ``i`` arrives at
  ``i * t_d`` and an action costs ``cost[(stage, kind)]`` seconds (defaults F 1, B 2, U 0).
* ``realtime``: one thread per lane (runtime.RealtimeExecutor).
* ``process``: thread lanes whose F and B run in one worker process per lane
  (process.ProcessExecutor); CPU stages without OCL losses only, else the thread lanes are
  used and a warning logged.

Lane threads (``threads=None``): ``max(1, cores // CPU lanes)``, never more than the calling
thread's own torch setting.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias, cast

import structlog
import torch

from ferretd.engine.clock import LaneProgram, cost_function
from ferretd.engine.core import PipelineCore
from ferretd.engine.runtime import RealtimeExecutor, VirtualExecutor
from ferretd.engine.schedule import Action

log = structlog.get_logger(__name__)

ExecutorKind: TypeAlias = Literal["realtime", "virtual", "process"]
Executor: TypeAlias = VirtualExecutor | RealtimeExecutor  # ProcessExecutor is a RealtimeExecutor
CostTable: TypeAlias = tuple[tuple[tuple[int, str], float], ...]
DEFAULT_LOG_LIMIT: Final = 256  # action-log entries kept (debugging; replay tests keep all with None)
_KNOB = re.compile(r"\w+(?:=\{[^}]*\}|=[^,]*)?")  # one "name" or "name=value" of the string form


@dataclass(frozen=True)
class ExecutorSpec:
    """Which executor runs the engine, with every knob it takes."""

    kind: ExecutorKind = "realtime"
    cost: CostTable = ()  # virtual: seconds per (stage, action kind), sorted pairs
    t_d: float = 0.0  # virtual: sample i arrives at i * t_d
    threads: int | None = None  # lanes' torch intra-op threads (None: module docstring)
    jitter: Callable[[Action], None] | None = field(default=None, compare=False)  # lanes: before every action
    record_inputs: bool = False  # keep every microbatch's inputs (replay tests)
    log_limit: int | None = DEFAULT_LOG_LIMIT  # action-log entries kept (None: all)

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ValueError(f"executor must be one of {sorted(EXECUTORS)}, got {self.kind!r}")
        if self.t_d < 0 or (self.threads is not None and self.threads < 1):
            raise ValueError(f"t_d must be >= 0 and threads >= 1, got {self.t_d} and {self.threads}")

    @classmethod
    def of(cls, value: ExecutorSpec | str) -> ExecutorSpec:
        return value if isinstance(value, ExecutorSpec) else cls.parse(value)

    @classmethod
    def virtual(
        cls,
        cost: Mapping[tuple[int, str], float] | None = None,
        t_d: float = 0.0,
        *,
        record_inputs: bool = False,
        log_limit: int | None = DEFAULT_LOG_LIMIT,
    ) -> ExecutorSpec:
        """The virtual clock with a ``{(stage, kind): seconds}`` cost table."""
        table = tuple(sorted((k, float(v)) for k, v in (cost or {}).items()))
        return cls("virtual", table, t_d, record_inputs=record_inputs, log_limit=log_limit)

    @property
    def cost_table(self) -> dict[tuple[int, str], float]:
        return dict(self.cost)

    def __str__(self) -> str:
        knobs: list[str] = []
        if self.t_d:
            knobs.append(f"t_d={self.t_d:g}")
        if self.cost:
            knobs.append("cost={" + ", ".join(f"{s}{k}: {c:g}" for (s, k), c in self.cost) + "}")
        if self.threads is not None:
            knobs.append(f"threads={self.threads}")
        if self.jitter is not None:
            knobs.append("jitter")
        if self.record_inputs:
            knobs.append("record_inputs")
        if self.log_limit != DEFAULT_LOG_LIMIT:
            knobs.append(f"log_limit={self.log_limit}")
        return f"{self.kind}({', '.join(knobs)})" if knobs else self.kind

    @classmethod
    def parse(cls, text: str) -> ExecutorSpec:
        """The spec a string form names (``str(spec)``), e.g. ``"virtual(t_d=0.5, cost={1B: 3})"``."""
        kind, paren, rest = text.strip().partition("(")
        if kind not in EXECUTORS or (paren and not rest.endswith(")")):
            raise ValueError(f"not an executor: {text!r} (kinds: {sorted(EXECUTORS)})")
        cost: dict[tuple[int, str], float] = {}
        t_d, record_inputs = 0.0, False
        threads: int | None = None
        log_limit: int | None = DEFAULT_LOG_LIMIT
        for knob in _KNOB.findall(rest[:-1]):
            name, _, value = knob.partition("=")
            if name == "cost":
                for item in filter(None, (i.strip() for i in value.strip("{}").split(","))):
                    where, seconds = (part.strip() for part in item.split(":"))
                    cost[(int(where[:-1]), where[-1])] = float(seconds)
            elif name == "t_d":
                t_d = float(value)
            elif name == "threads":
                threads = int(value)
            elif name == "log_limit":
                log_limit = None if value == "None" else int(value)
            elif name == "record_inputs":
                record_inputs = True
            else:
                raise ValueError(f"unknown executor knob {name!r} in {text!r} (jitter has no string form)")
        table = tuple(sorted(cost.items()))
        return cls(cast(ExecutorKind, kind), table, t_d, threads, None, record_inputs, log_limit)


Builder: TypeAlias = Callable[[ExecutorSpec, PipelineCore, LaneProgram, Callable[[int], None] | None], Executor]


def build_executor(
    spec: ExecutorSpec, core: PipelineCore, program: LaneProgram, on_worker_lost: Callable[[int], None] | None = None
) -> Executor:
    """The executor ``spec`` describes, running ``program`` over ``core`` (the one construction path)."""
    return EXECUTORS[spec.kind](spec, core, program, on_worker_lost)


def lane_threads(spec: ExecutorSpec, core: PipelineCore, program: LaneProgram) -> int:
    if spec.threads is not None:
        return spec.threads
    cpu_lanes = sum(1 for (_, s) in program.lanes if core.stages[s].runner.device.type == "cpu")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(torch.get_num_threads(), cores // max(1, cpu_lanes)))


def _virtual(spec: ExecutorSpec, core: PipelineCore, program: LaneProgram, _lost: object) -> Executor:
    recompute = {w for (w, _) in program.lanes if core.plan.workers[w].recompute}  # a recompute B pays its F again
    return VirtualExecutor(core, program, cost_function(spec.cost_table, recompute_workers=recompute))


def _realtime(spec: ExecutorSpec, core: PipelineCore, program: LaneProgram, _lost: object) -> Executor:
    return RealtimeExecutor(core, program, jitter=spec.jitter, threads=lane_threads(spec, core, program))


def _process(
    spec: ExecutorSpec, core: PipelineCore, program: LaneProgram, on_worker_lost: Callable[[int], None] | None
) -> Executor:
    from ferretd.engine.process import ProcessExecutor

    threads = lane_threads(spec, core, program)
    try:
        return ProcessExecutor(core, program, threads=threads, jitter=spec.jitter, on_worker_lost=on_worker_lost)
    except ValueError as exc:
        log.warning("process_executor_unavailable", reason=str(exc))
    return _realtime(spec, core, program, None)


EXECUTORS: Final[dict[str, Builder]] = {"virtual": _virtual, "realtime": _realtime, "process": _process}
