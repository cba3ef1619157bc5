"""The lane program protocol: flushing a partial accumulation window and losing a worker are part
of every program, so executors and the dry run never reach into a concrete one."""

from __future__ import annotations

import pytest

from ferretd.engine.clock import LaneProgram, OnlineProgram, StaticProgram
from ferretd.engine.schedule import Action, async_1f1b


def _always(_action: Action) -> bool:
    return True


def test_a_partial_window_is_applied_only_while_flushing():
    program = OnlineProgram(1, {(0, 0): 2})
    program.arrive(0, 0)
    for kind in "FB":
        action = program.next_action((0, 0), _always)
        assert action == Action(0, 0, kind, 0)
        program.take(action)
    assert program.next_action((0, 0), _always) is None and not program.pending(), "a = 2 waits for a second B"
    with program.flushing():
        assert program.pending()
        update = program.next_action((0, 0), _always)
        assert update == Action(0, 0, "U", 0)
        program.take(update)
        assert not program.pending()
    program.arrive(1, 0)
    for _ in "FB":
        program.take(program.next_action((0, 0), _always))
    assert program.next_action((0, 0), _always) is None, "flushing ends with the with-block"


@pytest.mark.parametrize(
    "program",
    [OnlineProgram(2, {(w, s): 1 for w in range(2) for s in range(2)}), StaticProgram(async_1f1b(2, 2, 4))],
    ids=["online", "static"],
)
def test_every_program_forgets_a_lost_worker(program: LaneProgram):
    program.arrive(0, 0)
    program.arrive(1, 1)
    with program.flushing():  # a static schedule has nothing to flush: the hook is harmless
        program.remove_worker(1)
    assert [lane for lane in program.lanes if lane[0] == 1] == []
    assert program.pending(), "worker 0 still has work"
    program.remove_worker(0)
    assert program.lanes == [] and not program.pending()
