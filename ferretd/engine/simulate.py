"""Dry run of a schedule without tensors: deadlock, per-stage staleness and live versions.

Role: lets tests, the planner and humans check a schedule (static, or the learner's online
program) before running it. The bookkeeping mirrors the engine's rules exactly (core.py):

* ``F`` pins the stage's current version; ``U`` applies every gradient gathered since the lane's
  last ``U``, with staleness ``current - pinned`` each, publishes one new version (none when the
  window holds no gradient) and unpins.
* Backprop omission (T3) on lane (n, j): the forward keeps no pin; at ``B`` the stage computes
  only if its current version is still the forwarded one (then it pins it until ``U``), else the
  backward is skipped there and every upstream ``B`` of that microbatch is skipped too.

A deadlock (work left that can never become ready) is reported with the grid of
:func:`~ferretd.engine.schedule.render_grid`.

With ``stage_bytes`` (bytes of one copy of each stage's weights) the dry run also reports the
peak over time of the weight-sized memory the engine holds at once, summed over stages: live
versions, their deltas when ``keep_deltas``, and the gradients waiting in accumulation windows.
Each component peaks at its own moment; the planner uses this joint peak as its expectation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from ferretd.engine.clock import LaneProgram, StaticProgram, VirtualClock, cost_function
from ferretd.engine.schedule import Action, Lane, Schedule, render_grid


@dataclass
class SimReport:
    ok: bool
    deadlock: bool
    makespan: float
    max_staleness: list[int]
    mean_staleness: list[float]
    max_live_versions: list[int]
    updates: list[int]
    skipped_backwards: int
    peak_held_bytes: int = 0
    events: list[tuple[Action, float, float]] = field(default_factory=list)
    grid: str = ""
    stuck: dict[Lane, str] = field(default_factory=dict)

    def summary(self) -> str:
        head = "deadlock" if self.deadlock else "ok"
        return (
            f"{head}: makespan {self.makespan:g}, max staleness {self.max_staleness}, "
            f"max live versions {self.max_live_versions}, updates {self.updates}, "
            f"skipped backwards {self.skipped_backwards}"
        )


class _Book:
    """Version bookkeeping of the engine, without tensors."""

    def __init__(
        self,
        num_stages: int,
        omit: Collection[Lane],
        stage_bytes: Sequence[int] | None = None,
        keep_deltas: bool = False,
    ) -> None:
        self.p = num_stages
        self.stage_bytes = list(stage_bytes) if stage_bytes is not None else None
        self.keep_deltas = keep_deltas
        self.peak_held = 0
        self.omit = set(omit)
        self.current = [0] * num_stages
        self.pins: list[Counter[int]] = [Counter() for _ in range(num_stages)]
        self.forwarded: dict[tuple[int, int], int] = {}
        self.window: dict[Lane, list[int]] = {}
        self.skip: set[int] = set()
        self.staleness: list[list[int]] = [[] for _ in range(num_stages)]
        self.max_live = [1] * num_stages
        self.updates = [0] * num_stages
        self.skipped = 0

    def _live_count(self, s: int) -> int:
        return len({v for v, c in self.pins[s].items() if c > 0} | {self.current[s]})

    def _live(self, s: int) -> None:
        self.max_live[s] = max(self.max_live[s], self._live_count(s))

    def _held(self) -> None:
        if self.stage_bytes is None:
            return
        grads = [0] * self.p
        for (_worker, s), window in self.window.items():
            grads[s] += len(window)
        total = 0
        for s, w in enumerate(self.stage_bytes):
            live = self._live_count(s)
            total += w * (live + (live - 1 if self.keep_deltas else 0) + grads[s])
        self.peak_held = max(self.peak_held, total)

    def execute(self, a: Action) -> None:
        self._execute(a)
        self._held()

    def _execute(self, a: Action) -> None:
        s, m = a.stage, a.microbatch
        if a.kind == "F":
            v = self.current[s]
            self.forwarded[(m, s)] = v
            if a.lane not in self.omit:
                self.pins[s][v] += 1
            self._live(s)
        elif a.kind == "B":
            v = self.forwarded.pop((m, s))
            omitted = a.lane in self.omit
            if m in self.skip or (omitted and self.current[s] != v):
                if not omitted:
                    self.pins[s][v] -= 1
                if m not in self.skip:
                    self.skipped += 1
                self.skip.add(m)
                if s == 0:
                    self.skip.discard(m)
                return
            if omitted:
                self.pins[s][v] += 1
            self.window.setdefault(a.lane, []).append(v)
        else:
            pinned = self.window.pop(a.lane, [])
            if not pinned:
                return
            for v in pinned:
                self.staleness[s].append(self.current[s] - v)
            for v in pinned:
                self.pins[s][v] -= 1
            self.current[s] += 1
            self.updates[s] += 1
            self._live(s)


def simulate(
    schedule: Schedule | LaneProgram,
    cost: Mapping[tuple[int, str], float] | Callable[[Action], float] | None = None,
    *,
    arrivals: Mapping[int, float] | None = None,
    owner: Mapping[int, int] | None = None,
    omit: Collection[Lane] = (),
    recompute_workers: Collection[int] = (),
    stage_bytes: Sequence[int] | None = None,
    keep_deltas: bool = False,
) -> SimReport:
    """Dry-run ``schedule`` (or an online program fed ``owner``'s microbatches at ``arrivals``)."""
    program = StaticProgram(schedule) if isinstance(schedule, Schedule) else schedule
    if owner is None:
        if not isinstance(schedule, Schedule):
            raise ValueError("an online program needs owner = {microbatch: worker}")
        owner = schedule.owner
    cost_fn = cost if callable(cost) else cost_function(cost, recompute_workers)
    book = _Book(program.num_stages, omit, stage_bytes, keep_deltas)
    clock = VirtualClock(program, cost_fn, book.execute)
    clock.arrive_all(owner, arrivals)
    flushing = hasattr(program, "flushing")
    if flushing:
        program.flushing = True  # type: ignore[attr-defined]
    clock.run()
    deadlock = program.pending()
    stuck = clock.stuck() if deadlock else {}
    n_workers = 1 + max((ln[0] for ln in program.lanes), default=0)
    grid = render_grid(clock.events, program.num_stages, n_workers, stuck)
    makespan = max((end for _, _, end in clock.events), default=0.0)
    st = book.staleness
    return SimReport(
        ok=not deadlock,
        deadlock=deadlock,
        makespan=makespan,
        max_staleness=[max(x, default=0) for x in st],
        mean_staleness=[sum(x) / len(x) if x else 0.0 for x in st],
        max_live_versions=book.max_live,
        updates=book.updates,
        skipped_backwards=book.skipped,
        peak_held_bytes=book.peak_held,
        events=clock.events,
        grid=grid,
        stuck=stuck,
    )
