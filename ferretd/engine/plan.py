"""Pipeline plans as plain data: partition, devices, workers and the four memory knobs.

A plan is what the planner produces and the engine applies (architecture rule 5): it has a JSON
form that round-trips exactly and a readable one-screen description. Knobs follow section 2 of
the Ferret notes: per worker ``active`` (T4) and ``recompute`` (T1); per worker and stage the
gradient ``accumulation`` a (T2) and backprop ``omit`` (T3).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class WorkerPlan:
    """Knobs of one asynchronous 1F1B worker over all P stages."""

    active: bool = True
    recompute: bool = False
    accumulation: tuple[int, ...] = (1,)
    omit: tuple[bool, ...] = (False,)


@dataclass(frozen=True)
class Plan:
    """A (partition, configuration) pair, with what the planner predicted for it."""

    num_blocks: int
    partition: tuple[int, ...] = ()
    devices: tuple[str, ...] = ("cpu",)
    workers: tuple[WorkerPlan, ...] = (WorkerPlan(),)
    predicted_memory_bytes: int | None = None
    predicted_rate: float | None = None
    budget_bytes: int | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cuts = list(self.partition)
        if cuts != sorted(set(cuts)) or any(not 0 < c < self.num_blocks for c in cuts):
            raise ValueError(
                f"partition {cuts} must be strictly increasing cut points inside 1..{self.num_blocks - 1}"
            )
        p = self.num_stages
        if len(self.devices) != p:
            raise ValueError(f"plan has {p} stages but {len(self.devices)} devices")
        if not self.workers:
            raise ValueError("plan needs at least one worker")
        if not any(w.active for w in self.workers):
            raise ValueError("plan needs at least one active worker")
        for n, w in enumerate(self.workers):
            if len(w.accumulation) != p or len(w.omit) != p:
                raise ValueError(f"worker {n}: accumulation and omit need one entry per stage ({p})")
            if any(a < 1 for a in w.accumulation):
                raise ValueError(f"worker {n}: accumulation must be >= 1")

    # ----------------------------------------------------------------- shape

    @property
    def num_stages(self) -> int:
        return len(self.partition) + 1

    @property
    def active_workers(self) -> list[int]:
        return [n for n, w in enumerate(self.workers) if w.active]

    def stage_blocks(self) -> list[tuple[int, int]]:
        """Half-open block ranges ``[start, end)`` of every stage."""
        bounds = [0, *self.partition, self.num_blocks]
        return [(bounds[j], bounds[j + 1]) for j in range(self.num_stages)]

    def max_versions(self, worker: int, stage: int) -> int:
        """Weight versions stage ``stage`` keeps for ``worker``: 1 + ceil((P-j-1)/a), 1 if omitted."""
        w = self.workers[worker]
        if w.omit[stage]:
            return 1
        return 1 + math.ceil((self.num_stages - stage - 1) / w.accumulation[stage])

    # ----------------------------------------------------------------- constructors

    @classmethod
    def uniform(
        cls,
        num_blocks: int,
        partition: tuple[int, ...] = (),
        workers: int = 1,
        *,
        recompute: bool = False,
        accumulation: int = 1,
        omit_stages: tuple[int, ...] = (),
        devices: tuple[str, ...] | None = None,
    ) -> Plan:
        """Every worker with the same knobs; the form ``[pipeline]`` config describes."""
        p = len(partition) + 1
        worker = WorkerPlan(
            active=True,
            recompute=recompute,
            accumulation=(accumulation,) * p,
            omit=tuple(j in omit_stages for j in range(p)),
        )
        return cls(
            num_blocks=num_blocks,
            partition=tuple(partition),
            devices=tuple(devices) if devices else ("cpu",) * p,
            workers=(worker,) * workers,
        )

    @staticmethod
    def even_partition(num_blocks: int, stages: int) -> tuple[int, ...]:
        """Cut points splitting ``num_blocks`` into ``stages`` nearly equal runs."""
        if not 1 <= stages <= num_blocks:
            raise ValueError(f"cannot cut {num_blocks} blocks into {stages} stages")
        return tuple(round(num_blocks * j / stages) for j in range(1, stages))

    def with_devices(self, devices: tuple[str, ...]) -> Plan:
        return replace(self, devices=tuple(devices))

    # ----------------------------------------------------------------- data forms

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["partition"] = list(self.partition)
        data["devices"] = list(self.devices)
        data["workers"] = [
            {**asdict(w), "accumulation": list(w.accumulation), "omit": list(w.omit)} for w in self.workers
        ]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        workers = tuple(
            WorkerPlan(
                active=bool(w["active"]),
                recompute=bool(w["recompute"]),
                accumulation=tuple(int(a) for a in w["accumulation"]),
                omit=tuple(bool(o) for o in w["omit"]),
            )
            for w in data["workers"]
        )
        return cls(
            num_blocks=int(data["num_blocks"]),
            partition=tuple(int(c) for c in data["partition"]),
            devices=tuple(data["devices"]),
            workers=workers,
            predicted_memory_bytes=data.get("predicted_memory_bytes"),
            predicted_rate=data.get("predicted_rate"),
            budget_bytes=data.get("budget_bytes"),
            notes=data.get("notes", ""),
            extra=dict(data.get("extra") or {}),
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    def describe(self) -> str:
        """A short human-readable form, e.g. for ``ferretd --plan-only`` and logs."""
        lines = [
            f"plan: {self.num_stages} stage(s) over {self.num_blocks} blocks, "
            f"{len(self.active_workers)}/{len(self.workers)} worker(s) active"
        ]
        for j, (start, end) in enumerate(self.stage_blocks()):
            lines.append(f"  stage {j}: blocks {start}..{end - 1} on {self.devices[j]}")
        for n, w in enumerate(self.workers):
            knobs = "on " if w.active else "off"
            lines.append(
                f"  worker {n}: {knobs} recompute={'yes' if w.recompute else 'no'} "
                f"a={list(w.accumulation)} omit={[int(o) for o in w.omit]}"
            )
        if self.predicted_memory_bytes is not None:
            lines.append(f"  predicted memory: {self.predicted_memory_bytes / 2**20:.2f} MiB")
        if self.predicted_rate is not None:
            lines.append(f"  predicted adaptation rate: {self.predicted_rate:.4f}")
        if self.budget_bytes is not None:
            lines.append(f"  budget: {self.budget_bytes / 2**20:.2f} MiB")
        return "\n".join(lines)
