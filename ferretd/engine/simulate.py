"""Dry run of a schedule without tensors: deadlock, per-stage staleness and live versions.

Role: lets tests, the planner and humans check a schedule (static, or the learner's online
program) before running it. It drives the engine's own tensor-free rules
(:class:`~ferretd.engine.bookkeeping.Bookkeeping`: pins, backprop omission, accumulation windows,
settling), the same object core.py drives with tensors, so the dry run cannot drift from the
engine (a property test runs random schedules through both and compares their books).

A deadlock (work left that can never become ready) is reported with the grid of
:func:`~ferretd.engine.schedule.render_grid`.

With ``stage_bytes`` (bytes of one copy of each stage's weights) the dry run also reports the
peak over time of the weight-sized memory the engine holds at once, summed over stages: live
versions, their deltas when ``keep_deltas``, and the gradients waiting in accumulation windows.
Each component peaks at its own moment; the planner uses this joint peak as its expectation.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from ferretd.engine.bookkeeping import Bookkeeping, Settlement
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
    settled: list[Settlement] = field(default_factory=list)  # microbatches reported, in order
    pins: list[dict[int, int]] = field(default_factory=list)  # per stage: version -> pins left at the end
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


class _DryRun:
    """Drives the engine's :class:`Bookkeeping` without tensors; tracks the joint memory peak."""

    def __init__(self, book: Bookkeeping, stage_bytes: Sequence[int] | None, keep_deltas: bool) -> None:
        self.book = book
        self.stage_bytes = list(stage_bytes) if stage_bytes is not None else None
        self.keep_deltas = keep_deltas
        self.peak_held = 0
        self.settled: list[Settlement] = []

    def execute(self, a: Action) -> None:
        book = self.book
        if a.kind == "F":
            book.forward(a)
            book.forward_done(a)
        elif a.kind == "B":
            decision = book.backward(a)
            if decision.compute:
                book.backward_done(a, decision.version)
            self.settled += decision.settled
        else:
            self.settled += book.apply_update(a).settled
        self._held()

    def _held(self) -> None:
        if self.stage_bytes is None:
            return
        grads = [0] * self.book.num_stages
        for (_worker, s), n in self.book.window_lengths().items():
            grads[s] += n
        total = 0
        for s, w in enumerate(self.stage_bytes):
            live = self.book.live_count(s)
            total += w * (live + (live - 1 if self.keep_deltas else 0) + grads[s])
        self.peak_held = max(self.peak_held, total)


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
    book = Bookkeeping(program.num_stages, omit)
    for m in sorted(owner):
        book.admit(m, owner[m])
    dry = _DryRun(book, stage_bytes, keep_deltas)
    clock = VirtualClock(program, cost_fn, dry.execute)
    clock.arrive_all(owner, arrivals)
    with program.flushing():
        clock.run()
        deadlock = program.pending()
    stuck = clock.stuck() if deadlock else {}
    n_workers = 1 + max((ln[0] for ln in program.lanes), default=0)
    grid = render_grid(clock.events, program.num_stages, n_workers, stuck)
    makespan = max((end for _, _, end in clock.events), default=0.0)
    stages = range(program.num_stages)
    return SimReport(
        ok=not deadlock,
        deadlock=deadlock,
        makespan=makespan,
        max_staleness=list(book.staleness_max),
        mean_staleness=[book.mean_staleness(s) for s in stages],
        max_live_versions=list(book.max_live),
        updates=list(book.updates),
        skipped_backwards=book.skipped,
        peak_held_bytes=dry.peak_held,
        settled=dry.settled,
        pins=[book.pinned(s) for s in stages],
        events=clock.events,
        grid=grid,
        stuck=stuck,
    )
