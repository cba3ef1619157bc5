"""The two executors (virtual clock and real time) and the single-threaded log replay.

Role: run a :class:`~ferretd.engine.clock.LaneProgram` over a :class:`~ferretd.engine.core.PipelineCore`.
Both executors call the same ``core.execute(action)``; only the driver differs.

* :class:`VirtualExecutor`: one thread, microbatches arrive at given virtual times, each action
  costs its profiled time (``cost(action)``, e.g. from ``{(stage, kind): seconds}``); deterministic.
* :class:`RealtimeExecutor`: one thread per lane (worker x stage); a lane waits on its own
  condition (one lock for all) until its program yields a ready action, runs it outside the
  lock, marks it done and wakes only the lanes it can unblock (same worker, stage j-1 / j+1).
  Lean hand-off (issue 12): marking an action done and taking the lane's next one happen in one
  critical section (one lock round trip per action, not two), a lane with a ready next action
  never waits, and ``drain`` is told only while someone drains (``notify_all`` per action was
  a GIL hand-off each time).
  Lanes of one stage share the stage's device. Each lane sets its own torch intra-op thread
  count (``threads``): the setting is per thread, and a fresh thread otherwise starts an OpenMP
  team as wide as the machine (measured: two lanes then ran four busy threads on two cores).
  ``jitter`` (tests) is called before every action to shake the interleaving.
  On CUDA each lane runs its actions on its own stream of its stage's device (issue 12), so lanes
  of different stages and workers overlap on the GPU; a lane synchronises its stream before it
  marks an action done, so whatever the action produced (activations, gradients, a published
  version) is complete before another lane's stream reads it, and no tensor is freed back to the
  caching allocator while another stream still uses it. (Untested here: no GPU on the dev box.)

Both leave the executed order in ``core.log``; :func:`replay` re-executes a log on a fresh core
single-threaded and reports any entry whose versions differ.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog
import torch
from torch import Tensor

from ferretd.engine.clock import Key, LaneProgram, StaticProgram, VirtualClock, cost_function, deps, key
from ferretd.engine.core import LogEntry, PipelineCore
from ferretd.engine.schedule import Action, Lane, Schedule, ScheduleError, render_grid

log = structlog.get_logger(__name__)


class VirtualExecutor:
    """Deterministic discrete-event executor running the real math."""

    kind = "virtual"

    def __init__(self, core: PipelineCore, program: LaneProgram, cost: Callable[[Action], float]) -> None:
        self.core = core
        self.program = program
        self.clock = VirtualClock(program, cost, _discarding(core.execute), keep_events=False)

    def submit(self, microbatch: int, worker: int, at: float = 0.0) -> None:
        at = max(at, self.clock.now)
        self.clock.arrive(microbatch, worker, at)
        self.clock.run(until=at)

    def drain(self, timeout: float | None = None) -> bool:
        with self.program.flushing():
            self.clock.run()
        return not self.program.pending()

    def utilisation(self) -> dict[str, float]:
        now = max([self.clock.now, *self.clock.lane_free.values()])
        return {f"w{w}s{s}": (b / now if now else 0.0) for (w, s), b in self.clock.busy.items()}

    def close(self) -> None:
        return None


class RealtimeExecutor:
    """One thread per lane; one lock, one condition per lane (woken only by its neighbours)."""

    kind = "realtime"

    def __init__(
        self,
        core: PipelineCore,
        program: LaneProgram,
        *,
        jitter: Callable[[Action], None] | None = None,
        threads: int | None = None,
    ) -> None:
        self.core = core
        self.program = program
        self.jitter = jitter
        self.threads = threads
        lock = threading.Lock()  # guards all executor and program state
        self.cond = threading.Condition(lock)  # drain waits here
        self._wake = {lane: threading.Condition(lock) for lane in program.lanes}
        self.done: set[Key] = set()
        self.busy: dict[Lane, float] = dict.fromkeys(program.lanes, 0.0)
        self.running = 0
        self._draining = 0
        self.error: BaseException | None = None
        self._stop = False
        self._started = time.perf_counter()
        self._threads = [
            threading.Thread(target=self._lane, args=(lane,), name=f"ferret-w{lane[0]}s{lane[1]}", daemon=True)
            for lane in program.lanes
        ]
        for t in self._threads:
            t.start()

    def _ready(self, action: Action) -> bool:
        return all(k in self.done for k in deps(action, self.program.num_stages))

    def submit(self, microbatch: int, worker: int, at: float = 0.0) -> None:
        with self.cond:
            self._raise()
            self.done.add(("A", 0, microbatch))
            self.program.arrive(microbatch, worker)
            self._notify((worker, 0))

    def _notify(self, *lanes: Lane) -> None:
        """Wake the given lanes (call with the lock held); ``drain`` is told while it waits."""
        for lane in lanes:
            cv = self._wake.get(lane)
            if cv is not None:
                cv.notify()
        if self._draining:
            self.cond.notify_all()

    def _notify_all(self) -> None:
        self._notify(*self._wake)

    def _raise(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"pipeline lane failed: {self.error!r}") from self.error

    def _idle(self) -> bool:
        return self.error is not None or (self.running == 0 and not self.program.pending())

    def drain(self, timeout: float | None = None) -> bool:
        with self.cond, self.program.flushing():
            self._notify_all()
            self._draining += 1
            try:
                ok = self.cond.wait_for(self._idle, timeout)
            finally:
                self._draining -= 1
            self._raise()
            return ok

    def _lane(self, lane: Lane) -> None:
        """One lane's loop: take the next ready action, run it, mark it done (the hooks below are
        what an executor changes: how an action runs, when a lane closes, what a failure means)."""
        if self.threads is not None:
            # intra-op threads are a per-thread setting: a new thread would otherwise use every core
            torch.set_num_threads(self.threads)
        wake = self._wake[lane]
        run = self._lane_runner(lane)
        finished: Action | None = None
        dt = 0.0
        while True:
            with self.cond:
                if finished is not None:  # one critical section: mark done, then take the next
                    self._finish(lane, finished, dt)
                while True:
                    if self._stop or self._lane_closed(lane):
                        return
                    action = self.program.next_action(lane, self._ready)
                    if action is not None:
                        self.program.take(action)
                        self.running += 1
                        break
                    wake.wait()
            if self.jitter is not None:
                self.jitter(action)
            t0 = time.perf_counter()
            try:
                run(action)
            except BaseException as exc:  # a lane must never die silently
                self._lane_failed(lane, action, exc)
                return
            dt = time.perf_counter() - t0
            finished = action

    def _lane_runner(self, lane: Lane) -> Callable[[Action], Any]:
        """How this lane runs an action: ``core.execute`` (on the stage's own stream on CUDA)."""
        core = self.core
        execute: Callable[[Action], Any] = lambda action: core.execute(action)  # noqa: E731 - looked up per
        # action, so a bench or test may wrap core.execute after the lanes started
        device = core.stages[lane[1]].runner.device
        if device.type == "cuda":  # pragma: no cover - no GPU in CI
            execute = _on_own_stream(execute, torch.cuda.Stream(device))  # type: ignore[no-untyped-call]
        return execute

    def _lane_closed(self, lane: Lane) -> bool:
        """True when this lane must stop although the executor runs on (lock held)."""
        return False

    def _lane_failed(self, lane: Lane, action: Action, exc: BaseException) -> None:
        """An action raised: stop everything and surface the error on ``drain``."""
        self._fail(lane, action, exc)

    def _fail(self, lane: Lane, action: Action, exc: BaseException) -> None:
        log.error("lane_failed", lane=f"w{lane[0]}s{lane[1]}", action=str(action), error=repr(exc))
        with self.cond:
            self.error = exc
            self._stop = True
            self.running -= 1
            self._notify_all()
            self.cond.notify_all()

    def _finish(self, lane: Lane, action: Action, dt: float) -> None:
        """Record a finished action and wake the lanes it may unblock (lock held)."""
        self.busy[lane] += dt
        self.running -= 1
        if action.kind == "B" and action.stage == 0:
            m = action.microbatch
            self.done.difference_update({(k, s, m) for k in ("A", "F", "B") for s in range(self.program.num_stages)})
        elif action.kind != "U":  # nothing waits on an update
            self.done.add(key(action))
        w, s = lane
        self._notify((w, s - 1), (w, s + 1))

    def utilisation(self) -> dict[str, float]:
        wall = time.perf_counter() - self._started
        return {f"w{w}s{s}": (b / wall if wall else 0.0) for (w, s), b in self.busy.items()}

    def close(self) -> None:
        with self.cond:
            self._stop = True
            self._notify_all()
        for t in self._threads:
            t.join(timeout=10)


def _discarding(execute: Callable[[Action], LogEntry]) -> Callable[[Action], None]:
    """``execute`` as the virtual clock takes it (the clock keeps no log entry; the core does)."""

    def run(action: Action) -> None:
        execute(action)

    return run


def _on_own_stream(execute: Callable[[Action], LogEntry], stream: torch.cuda.Stream) -> Callable[[Action], LogEntry]:
    """``execute`` on ``stream``, synchronised before it returns (see the module docstring)."""

    def run(action: Action) -> LogEntry:  # pragma: no cover - no GPU in CI
        with torch.cuda.stream(stream):
            entry = execute(action)
        stream.synchronize()
        return entry

    return run


def replay(
    entries: Iterable[LogEntry],
    core: PipelineCore,
    inputs: dict[int, tuple[int, Tensor, Tensor]] | None = None,
) -> list[str]:
    """Re-execute a recorded log single-threaded; list every entry whose versions differ.

    ``inputs`` (``core.inputs`` of the recorded run, ``record_inputs=True``) registers each
    microbatch on ``core`` before its first forward.
    """
    mismatches = []
    for recorded in entries:
        a = recorded.action
        if inputs is not None and a.kind == "F" and a.stage == 0:
            w, x, y = inputs[a.microbatch]
            core.add_microbatch(a.microbatch, w, x, y, [])
        got = core.execute(recorded.action)
        if (got.pinned, got.current, got.skipped) != (recorded.pinned, recorded.current, recorded.skipped):
            mismatches.append(f"{recorded.action}: recorded {recorded}, replayed {got}")
    return mismatches


def run_schedule(
    core: PipelineCore,
    schedule: Schedule,
    cost: Mapping[tuple[int, str], float] | None = None,
    arrivals: Mapping[int, float] | None = None,
) -> VirtualClock:
    """Execute a static schedule on ``core`` under the virtual clock (microbatches registered).

    Raises :class:`ScheduleError` with the lanes x time grid when the schedule deadlocks.
    """
    program = StaticProgram(schedule)
    clock = VirtualClock(program, cost_function(cost), _discarding(core.execute))
    clock.arrive_all(schedule.owner, arrivals)
    clock.run()
    if program.pending():
        grid = render_grid(clock.events, schedule.num_stages, schedule.num_workers, clock.stuck())
        raise ScheduleError(f"schedule {schedule.name} deadlocked at t={clock.now:g}:\n{grid}")
    return clock
