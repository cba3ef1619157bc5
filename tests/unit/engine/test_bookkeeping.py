"""The engine and the dry run share one bookkeeping: random schedules through both agree on pins,
skipped backwards, published versions, settled samples and staleness."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ferretd.config import TrainingConfig
from ferretd.engine.bookkeeping import STALE_AT_LAST_STAGE, Bookkeeping, Settlement
from ferretd.engine.clock import LaneProgram, OnlineProgram, StaticProgram, VirtualClock, cost_function
from ferretd.engine.core import PipelineCore
from ferretd.engine.learner import LearnOutcome
from ferretd.engine.plan import Plan, WorkerPlan
from ferretd.engine.schedule import GENERATORS, Action
from ferretd.engine.simulate import simulate
from ferretd.models import mlp

TR = TrainingConfig(lr=0.05, momentum=0.9, microbatch=2)


@st.composite
def scenarios(draw):
    """A plan (per-lane omission and accumulation), a schedule or the online program, costs, arrivals."""
    p = draw(st.integers(1, 3))
    n = draw(st.integers(1, 2))
    m = draw(st.integers(1, 7))
    kind = draw(st.sampled_from(["online", *GENERATORS]))
    acc = [tuple(draw(st.lists(st.integers(1, 3), min_size=p, max_size=p))) for _ in range(n)]
    omit = [tuple(draw(st.lists(st.booleans(), min_size=p, max_size=p))) for _ in range(n)]
    workers = tuple(WorkerPlan(True, False, acc[w], omit[w]) for w in range(n))
    plan = Plan(num_blocks=3, partition=Plan.even_partition(3, p), devices=("cpu",) * p, workers=workers)
    costs = {(s, k): draw(st.sampled_from([0.5, 1.0, 2.0, 3.0])) for s in range(p) for k in "FB"}
    arrivals = {i: float(draw(st.integers(0, 6))) for i in range(m)}
    owner = {i: i % n for i in range(m)}
    group = draw(st.integers(1, 3))
    return plan, kind, m, costs, arrivals, owner, group


def _program(plan: Plan, kind: str, m: int, group: int) -> LaneProgram:
    p, n = plan.num_stages, len(plan.workers)
    if kind == "online":
        return OnlineProgram(p, {(w, s): plan.workers[w].accumulation[s] for w in range(n) for s in range(p)})
    if kind == "async_1f1b":
        return StaticProgram(GENERATORS[kind](p, n, m, list(plan.workers[0].accumulation)))
    if kind == "pipedream_2bw":
        return StaticProgram(GENERATORS[kind](p, n, m))
    return StaticProgram(GENERATORS[kind](p, n, m, group))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_engine_and_dry_run_keep_the_same_books(scenario):
    plan, kind, m, costs, arrivals, owner, group = scenario
    p = plan.num_stages
    torch.manual_seed(0)
    core = PipelineCore(mlp((4,), 3, (5, 5)), plan, TR)
    gen = torch.Generator().manual_seed(1)
    outcomes: list[tuple[int, LearnOutcome]] = []
    for i in range(m):
        x, y = torch.randn(2, 4, generator=gen), torch.randint(0, 3, (2,), generator=gen)
        core.add_microbatch(i, owner[i], x, y, [lambda o, i=i: outcomes.append((i, o))])
    program = _program(plan, kind, m, group)
    clock = VirtualClock(program, cost_function(costs), core.execute)
    clock.arrive_all(owner, arrivals)
    with program.flushing():
        clock.run()
        assert not program.pending()

    omitted = {(w, s) for w in range(len(plan.workers)) for s in range(p) if plan.workers[w].omit[s]}
    report = simulate(
        _program(plan, kind, m, group), cost_function(costs), arrivals=arrivals, owner=owner, omit=omitted
    )
    assert report.ok
    assert [e.action for e in core.log] == [a for a, _, _ in report.events]
    book, stats = core.book, core.stats()
    assert book.skipped == report.skipped_backwards
    assert [s["version"] for s in stats] == [s["updates"] for s in stats] == report.updates
    assert [s["max_staleness"] for s in stats] == report.max_staleness
    assert [s["mean_staleness"] for s in stats] == report.mean_staleness
    assert [s["max_live_versions"] for s in stats] == report.max_live_versions
    assert [book.pinned(s) for s in range(p)] == report.pins == [{}] * p  # every pin released
    assert [Settlement(i, o.trained, o.reason) for i, o in outcomes] == report.settled
    assert sorted(i for i, _ in outcomes) == list(range(m)), "every sample settled exactly once"
    assert core.micro == {} and book.records == {}
    event(f"skipped backwards: {min(book.skipped, 2)}, dropped: {min(sum(not o.trained for _, o in outcomes), 1)}")


def test_a_backward_skipped_at_the_last_stage_is_dropped_once_and_releases_nothing_twice():
    book = Bookkeeping(2, omitted={(0, 1)})
    book.admit(0, 0)
    f0, f1, b1, b0 = Action(0, 0, "F", 0), Action(0, 1, "F", 0), Action(0, 1, "B", 0), Action(0, 0, "B", 0)
    assert book.forward(f0) == 0 and book.forward_done(f0)
    assert book.forward(f1) == 0 and book.forward_done(f1)
    book.current[1] = 1  # another worker's update landed at the omitted stage
    skipped = book.backward(b1)
    assert not skipped.compute and skipped.settled == (Settlement(0, False, STALE_AT_LAST_STAGE),)
    upstream = book.backward(b0)
    assert not upstream.compute and upstream.release and upstream.settled == () and upstream.finished == (0,)
    assert book.skipped == 1 and book.pinned(0) == {} and book.pinned(1) == {}


def test_a_sample_settles_when_its_lowest_stage_applies_and_a_refused_update_reports_the_reason():
    book = Bookkeeping(1)
    book.admit(0, 0)
    f, b, u = Action(0, 0, "F", 0), Action(0, 0, "B", 0), Action(0, 0, "U", 0)
    book.forward(f)
    book.forward_done(f)
    assert book.backward(b).compute
    book.backward_done(b, 0)
    entries, flagged = book.begin_update(u)
    result = book.end_update(u, entries, flagged, publish=False, refused="diverged_exploding")
    assert result.published is None and result.settled == (Settlement(0, False, "diverged_exploding"),)
    assert book.current == [0] and book.pinned(0) == {} and book.staleness_n == [1]
