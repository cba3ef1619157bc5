"""What a lane runs next (lane programs) and the deterministic virtual clock that drives them.

Role: the *when* of the engine, separate from the *how* (stage.py / core.py). Both executors
ask a :class:`LaneProgram` for a lane's next action given which dependencies are done:

* :class:`StaticProgram` follows a :class:`~ferretd.engine.schedule.Schedule` to the letter.
* :class:`OnlineProgram` is the Ferret / PipeDream async 1F1B rule for an open-ended stream
  (what the learner runs): a lane runs its oldest backward when ready, else its next forward
  when ready and fewer than ``P - j`` microbatches are in flight at stage j, and it issues a
  ``U`` after every ``a``-th backward. Decision: a partial accumulation window is applied only
  on flush (or plan change), like a partial microbatch; greedy "backward first" keeps the delay
  from arrival to update short when the stream is slow, and the in-flight cap bounds staleness
  by ``P-1-j`` (``ceil((P-1-j)/a)`` with accumulation) for one worker.

Dependencies (``deps``): ``F(j,m)`` needs ``F(j-1,m)`` (stage 0: the microbatch's arrival);
``B(j,m)`` needs ``F(j,m)`` and ``B(j+1,m)``; ``U`` follows its lane's backwards in lane order.

:class:`VirtualClock` is single-threaded: microbatches arrive at given times, an action starts
when its lane is free and its dependencies are done, occupies the lane for its cost, and its
math runs at its start time; ties are broken by lane order (stage, then worker), so a run is
fully deterministic. ``devices`` (None: one processor per lane) makes the lanes share that many
identical devices: an action also needs a free device, so a plan with more lanes than devices
runs no more than ``devices`` actions at once (the equal-hardware comparison of bench_paper).

:func:`cost_function` is the virtual cost of an action: a per-(stage, kind) table, and a
recomputing worker's backward also pays its stage's forward again.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from ferretd.engine.schedule import Action, Lane, Schedule

Key = tuple[str, int, int]  # (kind, stage, microbatch); kind "A" = arrival at stage 0
Ready = Callable[[Action], bool]


def deps(action: Action, num_stages: int) -> list[Key]:
    s, m = action.stage, action.microbatch
    if action.kind == "F":
        return [("A", 0, m)] if s == 0 else [("F", s - 1, m)]
    if action.kind == "B":
        return [("F", s, m)] if s == num_stages - 1 else [("F", s, m), ("B", s + 1, m)]
    return []


def key(action: Action) -> Key:
    return (action.kind, action.stage, action.microbatch)


class LaneProgram(ABC):
    """Chooses each lane's next action; callers hold one lock around every method."""

    num_stages: int
    lanes: list[Lane]

    @abstractmethod
    def next_action(self, lane: Lane, ready: Ready) -> Action | None: ...

    @abstractmethod
    def take(self, action: Action) -> None:
        """The lane committed to ``action``."""

    @abstractmethod
    def pending(self) -> bool:
        """Whether any lane still has work it must do (deadlock / drain detection)."""

    def arrive(self, microbatch: int, worker: int) -> None:  # noqa: B027 - optional hook
        """A new microbatch for ``worker`` (online programs only)."""

    def set_flushing(self, on: bool) -> None:  # noqa: B027 - optional hook
        """While on, a lane whose accumulation window is partial and that has nothing else to do
        issues its ``U`` (drain, re-plan, shutdown). A program without partial windows (a static
        schedule spells out every ``U``) has nothing to flush."""

    @contextmanager
    def flushing(self) -> Iterator[None]:
        """Flush partial accumulation windows for the duration of the ``with`` block."""
        self.set_flushing(True)
        try:
            yield
        finally:
            self.set_flushing(False)

    @abstractmethod
    def remove_worker(self, worker: int) -> None:
        """Forget every lane of ``worker`` (its process executor worker was lost)."""

    def describe_wait(self, lane: Lane) -> str:
        return ""


class StaticProgram(LaneProgram):
    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.num_stages = schedule.num_stages
        self.lanes = sorted(schedule.lanes, key=lambda ln: (ln[1], ln[0]))
        self._next = dict.fromkeys(self.lanes, 0)

    def next_action(self, lane: Lane, ready: Ready) -> Action | None:
        acts = self.schedule.lanes[lane]
        i = self._next[lane]
        if i < len(acts) and ready(acts[i]):
            return acts[i]
        return None

    def take(self, action: Action) -> None:
        self._next[action.lane] += 1

    def remove_worker(self, worker: int) -> None:
        self.lanes = [ln for ln in self.lanes if ln[0] != worker]

    def pending(self) -> bool:
        return any(self._next[ln] < len(self.schedule.lanes[ln]) for ln in self.lanes)

    def describe_wait(self, lane: Lane) -> str:
        acts = self.schedule.lanes[lane]
        i = self._next[lane]
        return f"{acts[i]} waits for {deps(acts[i], self.num_stages)}" if i < len(acts) else ""


@dataclass
class _LaneState:
    accumulation: int
    cap: int
    f_queue: deque[int] = field(default_factory=deque)
    b_queue: deque[int] = field(default_factory=deque)
    window: int = 0
    last_b: int = -1
    pending_u: bool = False


class OnlineProgram(LaneProgram):
    """Async 1F1B (no flush) over an open-ended stream of microbatches."""

    def __init__(self, num_stages: int, accumulation: Mapping[Lane, int]) -> None:
        self.num_stages = num_stages
        self.lanes = sorted(accumulation, key=lambda ln: (ln[1], ln[0]))
        self._state = {ln: _LaneState(accumulation[ln], num_stages - ln[1]) for ln in self.lanes}
        self._flushing = False

    def set_flushing(self, on: bool) -> None:
        self._flushing = on

    def arrive(self, microbatch: int, worker: int) -> None:
        for s in range(self.num_stages):
            self._state[(worker, s)].f_queue.append(microbatch)

    def next_action(self, lane: Lane, ready: Ready) -> Action | None:
        w, s = lane
        st = self._state[lane]
        if st.pending_u:
            return Action(w, s, "U", st.last_b)
        if st.b_queue:
            b = Action(w, s, "B", st.b_queue[0])
            if ready(b):
                return b
        if st.f_queue and len(st.b_queue) < st.cap:
            f = Action(w, s, "F", st.f_queue[0])
            if ready(f):
                return f
        if self._flushing and st.window and not st.b_queue and not st.f_queue:
            return Action(w, s, "U", st.last_b)
        return None

    def take(self, action: Action) -> None:
        st = self._state[action.lane]
        if action.kind == "F":
            st.b_queue.append(st.f_queue.popleft())
        elif action.kind == "B":
            st.b_queue.popleft()
            st.window += 1
            st.last_b = action.microbatch
            st.pending_u = st.window >= st.accumulation
        else:
            st.window = 0
            st.pending_u = False

    def pending(self) -> bool:
        return any(
            st.f_queue or st.b_queue or st.pending_u or (self._flushing and st.window) for st in self._state.values()
        )

    def in_flight(self) -> int:
        return sum(len(st.b_queue) for st in self._state.values())

    def remove_worker(self, worker: int) -> None:
        self.lanes = [ln for ln in self.lanes if ln[0] != worker]
        for ln in [ln for ln in self._state if ln[0] == worker]:
            del self._state[ln]

    def describe_wait(self, lane: Lane) -> str:
        st = self._state[lane]
        if not (st.f_queue or st.b_queue or st.pending_u or (self._flushing and st.window)):
            return ""
        return f"F queue {list(st.f_queue)[:4]}, B queue {list(st.b_queue)[:4]}, window {st.window}"


class VirtualClock:
    """Single-threaded discrete-event driver: deterministic order, real math via ``execute``."""

    def __init__(
        self,
        program: LaneProgram,
        cost: Callable[[Action], float],
        execute: Callable[[Action], None],
        *,
        keep_events: bool = True,
        devices: int | None = None,
    ) -> None:
        if devices is not None and devices < 1:
            raise ValueError(f"devices must be >= 1 or None, got {devices}")
        self.program = program
        self.devices = devices
        self._running: list[float] = []  # end times of the actions occupying a device
        self.cost = cost
        self.execute = execute
        self.now = 0.0
        self.lane_free: dict[Lane, float] = dict.fromkeys(program.lanes, 0.0)
        self.busy: dict[Lane, float] = dict.fromkeys(program.lanes, 0.0)
        self.done: dict[Key, float] = {}
        self.events: list[tuple[Action, float, float]] = []
        self.keep_events = keep_events
        self._arrivals: list[tuple[float, int, int]] = []

    def arrive(self, microbatch: int, worker: int, at: float) -> None:
        heapq.heappush(self._arrivals, (at, microbatch, worker))

    def arrive_all(self, owner: Mapping[int, int], times: Mapping[int, float] | None = None) -> None:
        for m in sorted(owner):
            self.arrive(m, owner[m], (times or {}).get(m, 0.0))

    def _ready(self, action: Action) -> bool:
        now = self.now
        return all(self.done.get(k, float("inf")) <= now for k in deps(action, self.program.num_stages))

    def _forget(self, microbatch: int) -> None:
        for s in range(self.program.num_stages):
            for kind in ("A", "F", "B"):
                self.done.pop((kind, s, microbatch), None)

    def run(self, until: float | None = None) -> None:
        """Process every event with time ``<= until`` and move the clock to ``until`` (None: to the end)."""
        while True:
            while self._arrivals and self._arrivals[0][0] <= self.now:
                at, m, w = heapq.heappop(self._arrivals)
                self.done[("A", 0, m)] = at
                self.program.arrive(m, w)
            progressed = True
            while progressed:
                progressed = False
                for lane in self.program.lanes:
                    if self.lane_free[lane] > self.now or not self._device_free():
                        continue
                    action = self.program.next_action(lane, self._ready)
                    if action is None:
                        continue
                    self.program.take(action)
                    self.execute(action)
                    cost = float(self.cost(action))
                    end = self.now + cost
                    self.lane_free[lane] = end
                    self.busy[lane] += cost
                    if self.devices is not None and cost > 0:
                        self._running.append(end)
                    if action.kind == "B" and action.stage == 0:
                        self._forget(action.microbatch)
                    elif action.kind != "U":  # nothing waits on an update
                        self.done[key(action)] = end
                    if self.keep_events:
                        self.events.append((action, self.now, end))
                    progressed = True
            later = [t for t in self.lane_free.values() if t > self.now]
            if self._arrivals:
                later.append(self._arrivals[0][0])
            if not later or (until is not None and min(later) > until):
                if until is not None:
                    self.now = max(self.now, until)  # every event up to ``until`` has happened
                return
            self.now = min(later)

    def _device_free(self) -> bool:
        if self.devices is None:
            return True
        self._running = [t for t in self._running if t > self.now]
        return len(self._running) < self.devices

    def stuck(self) -> dict[Lane, str]:
        return {ln: self.program.describe_wait(ln) for ln in self.program.lanes if self.program.describe_wait(ln)}


def cost_function(
    table: Mapping[tuple[int, str], float] | None = None,
    recompute_workers: Iterable[int] = (),
    default: Mapping[str, float] | None = None,
) -> Callable[[Action], float]:
    """``{(stage, kind): seconds}`` -> per-action cost; recompute adds a forward to each B."""
    base = {"F": 1.0, "B": 2.0, "U": 0.0, **(default or {})}
    table = dict(table or {})
    recompute = set(recompute_workers)

    def cost(a: Action) -> float:
        c = table.get((a.stage, a.kind), base[a.kind])
        if a.kind == "B" and a.worker in recompute:
            c += table.get((a.stage, "F"), base["F"])
        return c

    return cost
