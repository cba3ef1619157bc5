"""The engine's rules without tensors: version pins, backprop omission, windows and settling.

Role: the one state machine that both the engine (core.py, which adds the tensors) and the dry
run (simulate.py) drive, so the rules below are written once. Every method is one atomic step
under the book's own lock; core.py calls the version decisions while it holds the stage's
store lock, so the tensor store and the book move together (lock order: store, then book).

Rules (Ferret notes, sections 2-4):

* ``F`` pins the stage's current version for the forward. On an omitted lane (T3) the pin is
  dropped when the forward is done (:meth:`Bookkeeping.forward_done`): the lane keeps no
  version alive, only the forwarded version's number.
* ``B`` on an omitted lane computes only if the stage's current version is still the forwarded
  one (then it pins it until ``U``); otherwise the backward is skipped there and every upstream
  ``B`` of that microbatch is skipped too (counted once, at the stage the skip started).
* ``U`` takes every gradient gathered in the lane's window since its last ``U``; staleness of a
  gradient that is stepped is ``current - pinned``; the window's pins are released and, when the
  update is published, the stage's version number moves on by one. An empty window publishes
  nothing. A microbatch flagged diverged (divergence guard) is left out of the step.
* Settling: a microbatch is reported (once) when the update of the lowest stage its backward
  reached is applied, trained unless it diverged; a microbatch skipped at the last stage is
  reported dropped at once. It is forgotten when its stage-0 backward has run or been skipped.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from enum import Enum

from ferretd.engine.schedule import Action, Lane

STALE_AT_LAST_STAGE = "omitted: stale at the last stage"


class Fate(Enum):
    """Where a microbatch stands in being reported to its samples' callers."""

    IN_FLIGHT = "in_flight"  # no stage decided yet which update settles it
    AWAITING = "awaiting"  # waits for the update of ``settle_at``
    DONE = "done"  # reported trained (or diverged)
    DROPPED = "dropped"  # reported dropped

    @property
    def reported(self) -> bool:
        return self in (Fate.DONE, Fate.DROPPED)


@dataclass(frozen=True, slots=True)
class Settlement:
    """One microbatch reported: ``trained`` or not, and why not."""

    microbatch: int
    trained: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class WindowEntry:
    microbatch: int
    version: int  # the version the gradient was computed at (pinned until the update)


@dataclass(frozen=True, slots=True)
class Backward:
    """What a ``B`` does: compute at ``version`` (pinned), or skip (``release``: drop its F pin)."""

    version: int
    compute: bool
    release: bool  # the forward's pin is released (a skipped B of a lane that kept its pin)
    pin: bool  # an omitted lane pins ``version`` now (it was still current)
    settled: tuple[Settlement, ...] = ()
    finished: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Update:
    """What a ``U`` did: the version it published (None: nothing) and who is settled by it."""

    published: int | None
    settled: tuple[Settlement, ...] = ()
    finished: tuple[int, ...] = ()


@dataclass
class _Record:
    worker: int
    fate: Fate = Fate.IN_FLIGHT
    settle_at: int | None = None
    lowest: int | None = None  # lowest stage whose backward computed
    applied: set[int] = field(default_factory=set)
    skipping: bool = False
    backward_done: bool = False
    diverged: str | None = None


class Bookkeeping:
    """Pins, windows, staleness and settling of every stage and in-flight microbatch."""

    def __init__(self, num_stages: int, omitted: Collection[Lane] = ()) -> None:
        self.num_stages = num_stages
        self.omitted = frozenset(omitted)
        self.current = [0] * num_stages
        self.pins: list[Counter[int]] = [Counter() for _ in range(num_stages)]
        self.max_live = [1] * num_stages
        self.updates = [0] * num_stages
        self.staleness_max = [0] * num_stages
        self.staleness_sum = [0] * num_stages
        self.staleness_n = [0] * num_stages
        self.skipped = 0
        self.records: dict[int, _Record] = {}
        self._forwarded: dict[tuple[int, int], tuple[int, bool]] = {}  # (m, stage) -> (version, pinned)
        self._windows: dict[Lane, list[WindowEntry]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ reading

    def live_count(self, stage: int) -> int:
        with self._lock:
            return self._live(stage)

    def window_lengths(self) -> dict[Lane, int]:
        with self._lock:
            return {lane: len(w) for lane, w in self._windows.items()}

    def window_tail(self, lane: Lane) -> int | None:
        """The microbatch of the lane's last gradient waiting for an update (None: empty window)."""
        with self._lock:
            window = self._windows.get(lane)
            return window[-1].microbatch if window else None

    def pinned(self, stage: int) -> dict[int, int]:
        with self._lock:
            return {v: c for v, c in self.pins[stage].items() if c > 0}

    def mean_staleness(self, stage: int) -> float:
        n = self.staleness_n[stage]
        return self.staleness_sum[stage] / n if n else 0.0

    def diverged(self, microbatch: int) -> str | None:
        with self._lock:
            rec = self.records.get(microbatch)
            return rec.diverged if rec is not None else None

    # ------------------------------------------------------------------ microbatches

    def admit(self, microbatch: int, worker: int) -> None:
        with self._lock:
            self.records[microbatch] = _Record(worker)

    def mark_diverged(self, microbatch: int, reason: str) -> None:
        with self._lock:
            rec = self.records.get(microbatch)
            if rec is not None and rec.diverged is None:
                rec.diverged = reason

    def drop(self, microbatches: Iterable[int]) -> list[int]:
        """Forget ``microbatches`` now (their worker is gone), releasing their forward pins; the
        ones not yet reported."""
        unreported: list[int] = []
        with self._lock:
            for m in microbatches:
                for s in range(self.num_stages):
                    held = self._forwarded.pop((m, s), None)
                    if held is not None and held[1]:
                        self._unpin(s, held[0])
                rec = self.records.pop(m, None)
                if rec is None or not rec.fate.reported:
                    unreported.append(m)
        return unreported

    def abandon(self) -> list[int]:
        """Forget everything in flight (shutdown without flush): the microbatches never reported."""
        with self._lock:
            left = [m for m, rec in self.records.items() if not rec.fate.reported]
            self.records.clear()
            self._windows.clear()
            self._forwarded.clear()
            return left

    # ------------------------------------------------------------------ actions

    def forward(self, action: Action) -> int:
        """``F``: pin and return the stage's current version."""
        s = action.stage
        with self._lock:
            v = self.current[s]
            self.pins[s][v] += 1
            self._forwarded[(action.microbatch, s)] = (v, True)
            self._note_live(s)
            return v

    def forward_done(self, action: Action) -> bool:
        """The forward's compute is over; on an omitted lane release its pin. Returns whether the
        forwarded version is still current (an omitted lane's graph is worth keeping)."""
        s, m = action.stage, action.microbatch
        with self._lock:
            v, pinned = self._forwarded[(m, s)]
            if action.lane in self.omitted and pinned:
                self._unpin(s, v)
                self._forwarded[(m, s)] = (v, False)
            return self.current[s] == v

    def backward(self, action: Action) -> Backward:
        s, m = action.stage, action.microbatch
        with self._lock:
            v, pinned = self._forwarded.pop((m, s))
            rec = self.records[m]
            omitted = action.lane in self.omitted
            if rec.skipping or (omitted and self.current[s] != v):
                if pinned:
                    self._unpin(s, v)
                if not rec.skipping:
                    self.skipped += 1
                rec.skipping = True
                if rec.fate is Fate.IN_FLIGHT and rec.lowest is None:
                    rec.fate = Fate.DROPPED
                    settled = [Settlement(m, False, STALE_AT_LAST_STAGE)]
                else:
                    if rec.fate is Fate.IN_FLIGHT:
                        rec.fate, rec.settle_at = Fate.AWAITING, rec.lowest
                    settled = []
                if s == 0:
                    rec.backward_done = True
                more, finished = self._settle(m, rec)
                return Backward(v, False, pinned, False, (*settled, *more), finished)
            pin = not pinned
            if pin:
                self.pins[s][v] += 1
            return Backward(v, True, False, pin)

    def backward_done(self, action: Action, version: int) -> None:
        """The backward computed its gradient at ``version``: it joins the lane's window."""
        s, m = action.stage, action.microbatch
        with self._lock:
            self._windows.setdefault(action.lane, []).append(WindowEntry(m, version))
            rec = self.records[m]
            rec.lowest = s
            if s == 0:
                rec.fate, rec.settle_at, rec.backward_done = Fate.AWAITING, 0, True

    def begin_update(self, action: Action) -> tuple[list[WindowEntry], set[int]]:
        """``U``: take the lane's window; which of its microbatches are flagged diverged."""
        with self._lock:
            entries = self._windows.pop(action.lane, [])
            flagged = {e.microbatch for e in entries if (rec := self.records.get(e.microbatch)) and rec.diverged}
            return entries, flagged

    def end_update(
        self,
        action: Action,
        entries: list[WindowEntry],
        flagged: set[int],
        *,
        publish: bool,
        refused: str | None = None,
    ) -> Update:
        """Record the step's staleness, release the window's pins, publish (or not) and settle."""
        s = action.stage
        with self._lock:
            for e in entries:
                if e.microbatch not in flagged:
                    tau = self.current[s] - e.version
                    self.staleness_max[s] = max(self.staleness_max[s], tau)
                    self.staleness_sum[s] += tau
                    self.staleness_n[s] += 1
            for e in entries:
                self._unpin(s, e.version)
            published = None
            if publish:
                self.current[s] += 1
                self.updates[s] += 1
                published = self.current[s]
                self._note_live(s)
            settled: list[Settlement] = []
            finished: list[int] = []
            for e in entries:
                rec = self.records.get(e.microbatch)
                if rec is None:
                    continue
                if refused is not None and rec.diverged is None:
                    rec.diverged = refused
                rec.applied.add(s)
                more, gone = self._settle(e.microbatch, rec)
                settled += more
                finished += gone
            return Update(published, tuple(settled), tuple(finished))

    def apply_update(self, action: Action) -> Update:
        """``U`` without tensors: step every unflagged gradient and publish when there is one."""
        entries, flagged = self.begin_update(action)
        return self.end_update(action, entries, flagged, publish=len(entries) > len(flagged))

    # ------------------------------------------------------------------ internals (lock held)

    def _settle(self, m: int, rec: _Record) -> tuple[tuple[Settlement, ...], tuple[int, ...]]:
        settled: tuple[Settlement, ...] = ()
        if rec.fate is Fate.AWAITING and rec.settle_at in rec.applied:
            settled = (Settlement(m, rec.diverged is None, rec.diverged or ""),)
            rec.fate = Fate.DONE
        if rec.backward_done and rec.fate.reported:
            self.records.pop(m, None)
            return settled, (m,)
        return settled, ()

    def _unpin(self, s: int, v: int) -> None:
        self.pins[s][v] -= 1
        if self.pins[s][v] <= 0:
            del self.pins[s][v]

    def _live(self, s: int) -> int:
        return len(set(self.pins[s]) | {self.current[s]})

    def _note_live(self, s: int) -> None:
        self.max_live[s] = max(self.max_live[s], self._live(s))
