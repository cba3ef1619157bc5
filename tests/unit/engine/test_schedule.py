"""Schedules as data: string forms, generators, validator, dry-run simulator, readable grid."""

from __future__ import annotations

import itertools
import math

import pytest

from ferretd.engine.clock import OnlineProgram
from ferretd.engine.schedule import (
    GENERATORS,
    Action,
    Schedule,
    ScheduleError,
    async_1f1b,
    check,
    gpipe,
    one_f_one_b_flush,
    pipedream_2bw,
    validate,
)
from ferretd.engine.simulate import simulate


def test_action_string_round_trip():
    a = Action(0, 1, "F", 3)
    assert str(a) == "w0s1F3"
    assert Action.parse("w2s0U11") == Action(2, 0, "U", 11)
    with pytest.raises(ValueError):
        Action.parse("w0s1X3")


def test_schedule_text_round_trip():
    sched = async_1f1b(3, 2, 6, accumulation=2)
    again = Schedule.from_text(sched.name, 3, 2, sched.to_text())
    assert again.lanes == sched.lanes


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_produce_valid_schedules(name):
    for p, n in itertools.product(range(1, 5), range(1, 4)):
        args = (p, n, 8) if name in ("async_1f1b", "pipedream_2bw") else (p, n, 8, 4)
        assert validate(GENERATORS[name](*args)) == []


def test_validator_names_the_problems():
    sched = Schedule.from_text("bad", 2, 1, "w0s0: w0s0B0 w0s0F0\nw0s1: w0s1F0 w0s1B0")
    errors = validate(sched)
    assert any("before its forward" in e for e in errors)
    assert any("never applied by a U" in e for e in errors)
    with pytest.raises(ScheduleError, match="w0s0B0"):
        check(sched)


def test_deadlock_is_found_and_printed_as_a_grid():
    # Stage 1 insists on microbatch 1 first, but stage 0 only forwards it after B0 came back.
    text = "w0s0: w0s0F0 w0s0B0 w0s0U0 w0s0F1 w0s0B1 w0s0U1\nw0s1: w0s1F1 w0s1F0 w0s1B0 w0s1U0 w0s1B1 w0s1U1"
    sched = Schedule.from_text("crossed", 2, 1, text)
    assert validate(sched) == []
    report = simulate(sched)
    assert report.deadlock and not report.ok
    assert "stuck" in report.grid and "w0s1" in report.grid
    assert "w0s1F1 waits for" in report.stuck[(0, 1)]


@pytest.mark.parametrize("a", [1, 2, 3])
@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_async_staleness_and_live_versions_match_the_formulas(p, a):
    report = simulate(async_1f1b(p, 1, 4 * p * a, accumulation=a))
    assert report.ok
    assert report.max_staleness == [math.ceil((p - 1 - j) / a) for j in range(p)]
    assert report.max_live_versions == [1 + math.ceil((p - 1 - j) / a) for j in range(p)]


def test_omission_keeps_no_extra_version():
    p = 4
    omit = {(0, j) for j in range(p)}
    report = simulate(async_1f1b(p, 1, 12), omit=omit)
    assert report.ok
    assert report.max_live_versions == [1] * p
    assert report.skipped_backwards > 0
    # the last stage never sees a newer version between its F and B with one worker
    assert report.updates[p - 1] == 12


def test_pipedream_2bw_keeps_two_versions():
    report = simulate(pipedream_2bw(4, 1, 16))
    assert max(report.max_live_versions) == 2


@pytest.mark.parametrize("gen", [gpipe, one_f_one_b_flush])
def test_flush_schedules_have_no_staleness(gen):
    report = simulate(gen(4, 1, 12, 4))
    assert report.ok and report.max_staleness == [0, 0, 0, 0] and report.updates == [3, 3, 3, 3]


def test_more_workers_mean_more_staleness():
    one = simulate(async_1f1b(3, 1, 12))
    two = simulate(async_1f1b(3, 2, 12))
    assert two.max_staleness[0] > one.max_staleness[0]


def test_no_deadlock_anywhere():
    """Every P<=4, N<=4, accumulation, omission pattern and recompute setting, static and online."""
    grid = itertools.product(range(1, 5), range(1, 5), (1, 2, 3), range(3), (False, True))
    for p, n, a, omit_kind, recompute in grid:
        omit = set()
        if omit_kind == 1:
            omit = {(w, 0) for w in range(n)}
        elif omit_kind == 2:
            omit = {(w, j) for w in range(n) for j in range(p) if (w + j) % 2 == 0}
        workers = range(n) if recompute else ()
        m = 3 * n
        sched = async_1f1b(p, n, m, accumulation=a)
        report = simulate(sched, omit=omit, recompute_workers=workers)
        assert report.ok, f"P={p} N={n} a={a} omit={sorted(omit)}\n{report.grid}"
        program = OnlineProgram(p, {(w, j): a for w in range(n) for j in range(p)})
        online = simulate(program, owner={k: k % n for k in range(m)}, omit=omit, recompute_workers=workers)
        assert online.ok, f"online P={p} N={n} a={a}\n{online.grid}"
        for gen in (gpipe, one_f_one_b_flush):
            assert simulate(gen(p, n, m, a + 1), omit=omit, recompute_workers=workers).ok
        if a >= p - 1:
            assert simulate(pipedream_2bw(p, n, m, a), omit=omit).ok


@pytest.mark.parametrize("a", [1, 2])
def test_online_program_matches_the_formulas_when_the_stream_is_fast(a):
    p = 4
    program = OnlineProgram(p, {(0, j): a for j in range(p)})
    report = simulate(program, owner=dict.fromkeys(range(8 * p), 0))
    assert report.max_staleness == [math.ceil((p - 1 - j) / a) for j in range(p)]
    assert report.max_live_versions == [1 + math.ceil((p - 1 - j) / a) for j in range(p)]


def test_online_program_with_slow_arrivals_has_no_staleness():
    program = OnlineProgram(3, {(0, j): 1 for j in range(3)})
    report = simulate(program, owner=dict.fromkeys(range(6), 0), arrivals={k: 100.0 * k for k in range(6)})
    assert report.ok and report.max_staleness == [0, 0, 0]
