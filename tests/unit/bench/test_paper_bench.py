"""bench_paper's helpers on a tiny synthetic stream: baselines drop and train as documented, the
engine runs are deterministic with admission control, flush memory and timing are ordered, and
agm follows the paper's formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tools.bench.paper.plans import Planner, flop_profile
from tools.bench.paper.report import summarise
from tools.bench.paper.runners import run_buffered, run_engine
from tools.streams import Stream


@pytest.fixture(scope="module")
def stream() -> Stream:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=48)
    x = (rng.normal(size=(48, 8)) + y[:, None]).astype(np.float32)
    return Stream("toy", x[:40], y[:40], x[40:], y[40:], (8,), 3)


@pytest.fixture(scope="module")
def profile(stream: Stream):
    return flop_profile(stream.input_shape, stream.classes)


def test_oracle_trains_all_and_skip_drops_under_overload(stream, profile):
    pl = Planner(profile, profile.total_time_s / 4)
    t_d = pl.t_d
    oracle = run_buffered(stream, pl.sequential("Oracle"), "oracle", t_d, 0)
    skip = run_buffered(stream, pl.sequential("1-Skip"), "skip", t_d, 0)
    assert oracle.trained == 40 and oracle.dropped == 0
    assert skip.trained == 10  # busy for 4 arrivals after every accepted one
    last = run_buffered(stream, pl.sequential("Last-N", 16, 4), "last", t_d, 0, buffer=16)
    assert 0 < last.trained < 40 and len(last.hits) == 40


def test_flush_pipelines_memory_and_makespan(profile):
    pl = Planner(profile, profile.total_time_s)
    gpipe, dapple = pl.flush("GPipe", one_f_one_b=False), pl.flush("DAPPLE", one_f_one_b=True)
    assert dapple.memory_bytes <= gpipe.memory_bytes
    assert list(gpipe.step_s) == sorted(gpipe.step_s) and len(gpipe.step_s) == gpipe.group
    # one microbatch through the pipeline costs exactly the sequential forward+backward
    assert gpipe.step_s[0] == pytest.approx(pl.t_seq)


def test_engine_runs_are_deterministic_and_drop_when_overloaded(stream, profile):
    pl = Planner(profile, profile.total_time_s / 4)
    minimal = pl.ferret(pl.search.minimum_bytes, "min")
    a = run_engine(stream, minimal, profile, pl.t_d, 0)
    b = run_engine(stream, minimal, profile, pl.t_d, 0)
    assert np.array_equal(a.hits, b.hits) and a.test_accuracy == b.test_accuracy
    if minimal.plan is not None and minimal.plan.num_stages == 1 and len(minimal.plan.active_workers) == 1:
        assert a.dropped > 0


def test_agm_is_the_papers_formula():
    rows = [
        {"stream": "s", "load": 1, "seed": 0, "method": m, "group": "stream", "plan": "x",
         "memory_bytes": mem, "online_accuracy": acc, "test_accuracy": acc, "dropped": 0}
        for m, mem, acc in (("1-Skip", 100, 0.5), ("DAPPLE", 200, 0.6), ("A", 400, 0.9))
    ]  # fmt: skip
    s = summarise(rows)[("s", 1, "A")]
    assert s["agm_1-Skip"][0] == pytest.approx(math.log(math.exp(0.9 - 0.5) / 4))
    assert s["agm_DAPPLE"][0] == pytest.approx(math.log(math.exp(0.9 - 0.6) / 2))
