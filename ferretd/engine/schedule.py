"""Pipeline schedules as plain data: actions, generators, a validator and a readable grid.

An action is one unit of work of a *lane* (worker n, stage j): ``F`` forward on the version the
forward pins, ``B`` backward (parameter gradients at the pinned version, handed to the stage's
single writer) or ``U`` update (the single writer applies the accumulated, compensated gradients
of every ``B`` since the lane's previous ``U``). String form ``w0s1F3``: worker 0, stage 1,
forward of microbatch 3. Microbatch ids are global; microbatch ``k`` of a generated schedule
belongs to worker ``k mod N`` (the engine forms microbatches per worker from samples
``i -> i mod N_active``; with microbatch size 1 the two rules agree).

A :class:`Schedule` lists every lane's actions in order. Generators:

* :func:`async_1f1b` - Ferret / PipeDream: no flush, stage j keeps at most ``P-j`` microbatches in
  flight, ``U`` after every ``a``-th backward (and after the last, partial window).
* :func:`pipedream_2bw` - async 1F1B with accumulation ``a >= P-1`` (default ``P``): at most two
  versions per stage.
* :func:`gpipe` - per group of G microbatches: all forwards, all backwards, one ``U`` (flush).
* :func:`one_f_one_b_flush` - DAPPLE: per group 1F1B warm-up / steady / cool-down, ``U`` (flush).

``validate`` checks the structural rules; :mod:`ferretd.engine.simulate` runs a dry run (deadlock,
staleness, live versions) and :func:`render_grid` prints lanes x time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

KINDS = ("F", "B", "U")
_ACTION_RE = re.compile(r"^w(\d+)s(\d+)([FBU])(\d+)$")

Lane = tuple[int, int]


@dataclass(frozen=True, order=True, slots=True)
class Action:
    worker: int
    stage: int
    kind: str
    microbatch: int

    def __str__(self) -> str:
        return f"w{self.worker}s{self.stage}{self.kind}{self.microbatch}"

    @property
    def lane(self) -> Lane:
        return (self.worker, self.stage)

    @classmethod
    def parse(cls, text: str) -> Action:
        m = _ACTION_RE.match(text.strip())
        if not m:
            raise ValueError(f"not an action: {text!r} (expected e.g. 'w0s1F3')")
        return cls(int(m[1]), int(m[2]), m[3], int(m[4]))


class ScheduleError(ValueError):
    """A schedule broke a structural rule or deadlocked; the message carries a grid."""


@dataclass(frozen=True)
class Schedule:
    """Per-lane ordered actions; ``owner[m]`` is the worker of microbatch ``m``."""

    name: str
    num_stages: int
    num_workers: int
    lanes: dict[Lane, tuple[Action, ...]] = field(default_factory=dict)

    @property
    def owner(self) -> dict[int, int]:
        return {a.microbatch: a.worker for acts in self.lanes.values() for a in acts if a.kind == "F"}

    def actions(self) -> list[Action]:
        return [a for lane in sorted(self.lanes) for a in self.lanes[lane]]

    def to_text(self) -> str:
        """One line per lane: ``w0s1: w0s1F0 w0s1B0 w0s1U0 ...``."""
        return "\n".join(
            f"w{w}s{s}: " + " ".join(str(a) for a in self.lanes[(w, s)]) for (w, s) in sorted(self.lanes)
        )

    @classmethod
    def from_text(cls, name: str, num_stages: int, num_workers: int, text: str) -> Schedule:
        lanes: dict[Lane, tuple[Action, ...]] = {}
        for line in text.strip().splitlines():
            head, _, body = line.partition(":")
            m = re.match(r"^w(\d+)s(\d+)$", head.strip())
            if not m:
                raise ValueError(f"bad lane header {head!r}")
            lanes[(int(m[1]), int(m[2]))] = tuple(Action.parse(t) for t in body.split())
        return cls(name, num_stages, num_workers, lanes)


# --------------------------------------------------------------------------- generators


def _owned(num_workers: int, microbatches: int) -> dict[int, list[int]]:
    return {w: [k for k in range(microbatches) if k % num_workers == w] for w in range(num_workers)}


def _with_updates(w: int, s: int, order: Iterable[tuple[str, int]], accumulation: int) -> list[Action]:
    """Insert a ``U`` after every ``accumulation``-th backward and after the last backward."""
    out: list[Action] = []
    pending = 0
    last_b = -1
    for kind, m in order:
        out.append(Action(w, s, kind, m))
        if kind == "B":
            pending += 1
            last_b = m
            if pending == accumulation:
                out.append(Action(w, s, "U", m))
                pending = 0
    if pending:
        out.append(Action(w, s, "U", last_b))
    return out


def _one_f_one_b(mbs: Sequence[int], in_flight: int) -> list[tuple[str, int]]:
    warm = min(in_flight, len(mbs))
    order = [("F", m) for m in mbs[:warm]]
    for i, m in enumerate(mbs):
        order.append(("B", m))
        if warm + i < len(mbs):
            order.append(("F", mbs[warm + i]))
    return order


def _accum(accumulation: int | Sequence[int], num_stages: int) -> list[int]:
    if isinstance(accumulation, int):
        return [accumulation] * num_stages
    if len(accumulation) != num_stages:
        raise ValueError(f"accumulation needs one entry per stage ({num_stages})")
    return list(accumulation)


def async_1f1b(
    num_stages: int, num_workers: int, microbatches: int, accumulation: int | Sequence[int] = 1
) -> Schedule:
    """Ferret / PipeDream asynchronous 1F1B without flush (one pipeline per worker)."""
    acc = _accum(accumulation, num_stages)
    lanes: dict[Lane, tuple[Action, ...]] = {}
    for w, mbs in _owned(num_workers, microbatches).items():
        for s in range(num_stages):
            lanes[(w, s)] = tuple(_with_updates(w, s, _one_f_one_b(mbs, num_stages - s), acc[s]))
    return Schedule("async_1f1b", num_stages, num_workers, lanes)


def pipedream_2bw(num_stages: int, num_workers: int, microbatches: int, accumulation: int | None = None) -> Schedule:
    """PipeDream-2BW: async 1F1B with accumulation ``a >= P-1`` so a stage keeps two versions."""
    a = num_stages if accumulation is None else accumulation
    if a < num_stages - 1:
        raise ValueError(f"2BW needs accumulation >= P-1 = {num_stages - 1}, got {a}")
    sched = async_1f1b(num_stages, num_workers, microbatches, a)
    return Schedule("pipedream_2bw", sched.num_stages, sched.num_workers, sched.lanes)


def _flush(name: str, num_stages: int, num_workers: int, microbatches: int, group: int, one_f_one_b: bool) -> Schedule:
    if group < 1:
        raise ValueError("group size must be >= 1")
    lanes: dict[Lane, tuple[Action, ...]] = {}
    for w, mbs in _owned(num_workers, microbatches).items():
        for s in range(num_stages):
            acts: list[Action] = []
            for g in range(0, len(mbs), group):
                chunk = mbs[g : g + group]
                if one_f_one_b:
                    order = _one_f_one_b(chunk, num_stages - s)
                else:
                    order = [("F", m) for m in chunk] + [("B", m) for m in chunk]
                acts += _with_updates(w, s, order, len(chunk))
            lanes[(w, s)] = tuple(acts)
    return Schedule(name, num_stages, num_workers, lanes)


def gpipe(num_stages: int, num_workers: int, microbatches: int, group: int) -> Schedule:
    """GPipe: all forwards of a group, then all backwards, then one update per stage (flush)."""
    return _flush("gpipe", num_stages, num_workers, microbatches, group, one_f_one_b=False)


def one_f_one_b_flush(num_stages: int, num_workers: int, microbatches: int, group: int) -> Schedule:
    """DAPPLE-style 1F1B inside each group of ``group`` microbatches, then a flush."""
    return _flush("1f1b_flush", num_stages, num_workers, microbatches, group, one_f_one_b=True)


GENERATORS = {
    "async_1f1b": async_1f1b,
    "pipedream_2bw": pipedream_2bw,
    "gpipe": gpipe,
    "1f1b_flush": one_f_one_b_flush,
}


# --------------------------------------------------------------------------- validation


def validate(schedule: Schedule) -> list[str]:
    """Structural problems of ``schedule`` (empty list when valid)."""
    errors: list[str] = []
    owner: dict[int, int] = {}
    p = schedule.num_stages
    for (w, s), acts in schedule.lanes.items():
        if not (0 <= s < p and 0 <= w < schedule.num_workers):
            errors.append(f"lane w{w}s{s} outside {schedule.num_workers} workers x {p} stages")
        seen: dict[tuple[str, int], int] = {}
        pending_b = 0
        for i, a in enumerate(acts):
            if a.lane != (w, s) or a.kind not in KINDS:
                errors.append(f"{a} listed in lane w{w}s{s}")
                continue
            if a.kind != "U" and (a.kind, a.microbatch) in seen:
                errors.append(f"{a} appears twice in lane w{w}s{s}")
            seen.setdefault((a.kind, a.microbatch), i)
            if a.kind == "F" and owner.setdefault(a.microbatch, w) != w:
                errors.append(f"microbatch {a.microbatch} is forwarded by workers {owner[a.microbatch]} and {w}")
            if a.kind == "B":
                if ("F", a.microbatch) not in seen:
                    errors.append(f"{a} comes before its forward in lane w{w}s{s}")
                pending_b += 1
            if a.kind == "U":
                if pending_b == 0:
                    errors.append(f"{a} updates with no backward since the previous update")
                pending_b = 0
        if pending_b:
            errors.append(f"lane w{w}s{s} ends with {pending_b} backward(s) never applied by a U")
        fs = {m for (k, m) in seen if k == "F"}
        bs = {m for (k, m) in seen if k == "B"}
        for m in sorted(fs ^ bs):
            errors.append(f"lane w{w}s{s}: microbatch {m} has {'F' if m in fs else 'B'} only")
    for m, w in sorted(owner.items()):
        for s in range(p):
            lane = schedule.lanes.get((w, s), ())
            if Action(w, s, "F", m) not in lane:
                errors.append(f"microbatch {m} of worker {w} never runs on stage {s}")
    return errors


def check(schedule: Schedule) -> None:
    """Raise :class:`ScheduleError` with the problems and the lanes' text when invalid."""
    errors = validate(schedule)
    if errors:
        raise ScheduleError(
            f"schedule {schedule.name} is invalid:\n  " + "\n  ".join(errors[:20]) + "\n" + schedule.to_text()
        )


# --------------------------------------------------------------------------- grid


def render_grid(
    events: Sequence[tuple[Action, float, float]],
    num_stages: int,
    num_workers: int,
    stuck: dict[Lane, str] | None = None,
    max_columns: int = 60,
) -> str:
    """Lanes (rows, ``w0s1``) x time slots (columns): what each lane started in each slot.

    ``events`` are ``(action, start, end)``; slots are the distinct start times in order. A
    lane that could not go on shows ``<- stuck: ...`` at its end.
    """
    starts = sorted({start for _, start, _ in events})[:max_columns]
    col = {t: i for i, t in enumerate(starts)}
    cells: dict[Lane, list[str]] = {(w, s): ["."] * len(starts) for w in range(num_workers) for s in range(num_stages)}
    for a, start, _ in events:
        if start in col:
            row = cells.setdefault(a.lane, ["."] * len(starts))
            text = f"{a.kind}{a.microbatch}"
            i = col[start]
            row[i] = text if row[i] == "." else f"{row[i]}+{text}"
    width = max([3, *(len(c) for row in cells.values() for c in row)])
    header = "t    " + " ".join(f"{t:<{width}g}"[:width] for t in starts)
    lines = [header]
    for lane in sorted(cells, key=lambda ln: (ln[1], ln[0])):
        w, s = lane
        tail = f"  <- stuck: {stuck[lane]}" if stuck and lane in stuck else ""
        lines.append(f"w{w}s{s} " + " ".join(f"{c:<{width}}" for c in cells[lane]) + tail)
    if len({start for _, start, _ in events}) > max_columns:
        lines.append(f"... ({len(events)} actions; first {max_columns} time slots shown)")
    return "\n".join(lines)
