"""bench_paper's fairness mechanics on tiny inputs: lanes share D devices on the virtual clock, the
engine's virtual cost charges recompute, an accumulation window can sum, baselines get D devices,
Ferret's plans fit in D lanes, and the headline ratio reads the right Ferret plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ferretd.config import TrainingConfig
from ferretd.engine.clock import StaticProgram, VirtualClock, cost_function
from ferretd.engine.executors import ExecutorSpec
from ferretd.engine.pipeline import PipelineLearner
from ferretd.engine.plan import Plan
from ferretd.engine.schedule import Action, gpipe
from tools.bench.paper.plans import MICROBATCH, Planner, flop_profile, lanes
from tools.bench.paper.report import reach
from tools.bench.paper.runners import run_buffered
from tools.streams import Stream


@pytest.fixture(scope="module")
def profile():
    return flop_profile()


def _makespan(devices: int | None) -> tuple[float, float]:
    sched = gpipe(4, 2, 8, 4)  # 4 stages x 2 workers: 8 lanes
    clock = VirtualClock(StaticProgram(sched), cost_function(), lambda a: None, devices=devices)
    clock.arrive_all(sched.owner)
    clock.run()
    return max(clock.lane_free.values()), sum(clock.busy.values())


def test_lanes_share_devices_on_the_virtual_clock():
    one_each, work = _makespan(None)
    assert _makespan(8)[0] == one_each
    assert _makespan(1)[0] == pytest.approx(work)  # one device: every action in a row
    assert one_each < _makespan(2)[0] < _makespan(1)[0]


def test_engine_virtual_cost_charges_recompute():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    plan = Plan.uniform(1, (), 1, recompute=True)
    table = {(0, "F"): 1.0, (0, "B"): 2.0}
    learner = PipelineLearner(model, plan, TrainingConfig(), executor=ExecutorSpec.virtual(table, log_limit=0))
    try:
        assert learner.executor.clock.cost(Action(0, 0, "B", 0)) == 3.0
        assert learner.executor.clock.cost(Action(0, 0, "F", 0)) == 1.0
    finally:
        learner.close()


@pytest.mark.parametrize("reduce, factor", [("mean", 1.0), ("sum", 2.0)])
def test_accumulation_window_sums_when_asked(reduce, factor):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False))
    w0 = model[0].weight.detach().clone()
    x = np.ones(4, dtype=np.float32)
    learner = PipelineLearner(model, Plan.uniform(1, (), 1, accumulation=2), TrainingConfig(lr=0.1), executor="virtual")
    learner.core.window_reduce = reduce
    learner.learn_one(x, 0)
    learner.learn_one(x, 0)  # same sample twice: the window's mean equals one gradient
    learner.flush()
    step = learner.core.full_state()["0.weight"] - w0
    learner.close()
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False))
    torch.nn.functional.cross_entropy(ref(torch.as_tensor(x)[None]), torch.tensor([0])).backward()
    assert torch.allclose(step, -0.1 * factor * ref[0].weight.grad, atol=1e-6)


def test_baselines_get_the_devices_and_ferret_plans_fit_them(profile):
    for d in (1, 2, 4):
        pl = Planner(profile, profile.total_time_s / 4, d)
        seq = pl.sequential("Random-N", 8, 4)
        assert seq.parallel == min(4, d)
        assert seq.step_s[-1] == pytest.approx(-(-4 // d) * pl.t_mb)
        assert all(lanes(c.plan) <= d for c in pl.search.ranked)
        assert lanes(pl.ferret(None, "F", "F").plan) <= d  # type: ignore[arg-type]
    assert Planner(profile, profile.total_time_s, 8).flush("GPipe", False).parallel == 8  # 4 stages x 2 replicas


def test_skip_drops_and_oracle_trains_all_on_one_device(profile):
    rng = np.random.default_rng(0)
    n = 8 * MICROBATCH
    y = rng.integers(0, 10, size=n + 16)
    x = rng.normal(size=(n + 16, 1, 28, 28)).astype(np.float32)
    st = Stream("toy", x[:n], y[:n], x[n:], y[n:], (1, 28, 28), 10)
    pl = Planner(profile, profile.total_time_s / 4, 1)
    skip = run_buffered(st, pl.sequential("1-Skip"), "skip", pl.t_d, 0, 0.1, 8, measure=True)
    oracle = run_buffered(st, pl.sequential("Oracle"), "oracle", pl.t_d, 0, 0.1, 8, measure=False)
    assert oracle.dropped == 0 and skip.trained == 2 * MICROBATCH  # busy for 4 arrivals after each step
    assert skip.allocator_peak_bytes is not None and skip.allocator_peak_bytes > 0


def test_headline_ratio_reads_the_smallest_ferret_plan_that_reaches():
    def row(family, oacc, mem, group="sweep"):
        return {"group": group, "family": family, "ocl": "vanilla", "oacc": [oacc], "memory_bytes": mem,
                "measured_bytes": mem}  # fmt: skip

    summ = {
        ("s", 1, 1, "GPipe"): row("GPipe", 0.5, 800, "pipeline"),
        ("s", 1, 1, "1-Skip"): row("1-Skip", 0.9, 100, "stream"),
        ("s", 1, 1, "Ferret (min)"): row("Ferret", 0.4, 100),
        ("s", 1, 1, "Ferret a"): row("Ferret", 0.6, 200),
        ("s", 1, 1, "Ferret b"): row("Ferret", 0.7, 400),
    }
    h = reach(summ, "s", 1, 1, "Ferret")
    assert h["GPipe"]["ratio"] == 4.0 and h["GPipe"]["ratio_ferret"] == "Ferret a"
    assert "ratio" not in h["1-Skip"]
