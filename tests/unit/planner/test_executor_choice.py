"""The planner weighs thread lanes against process lanes by their own measured overhead (issue 12)."""

from __future__ import annotations

import json
import platform

import pytest
import torch

from ferretd.config import load_config
from ferretd.engine.plan import Plan
from ferretd.planner import plan_for_config
from ferretd.planner.headroom import Headroom
from ferretd.planner.memory import PROCESS_WORKER_BYTES
from ferretd.planner.planning import (
    INGEST_CPU_S,
    arrival_cpu_estimate,
    profile_for_config,
    rate_params_for_config,
)
from ferretd.planner.profile import Profiler
from ferretd.planner.rate import RateParams, predict_rate

from .test_rate_microbatch import conv_profile


def test_process_lanes_do_not_serialise_their_overhead() -> None:
    profile = conv_profile(16)
    t_d = profile.total_time_s / profile.microbatch / 3  # 3x overload
    plan = Plan.uniform(4, (), 2)
    threads = RateParams(arrival_interval_s=t_d, action_overhead_s=300e-6, cpu_cores=2.0)
    procs = RateParams(arrival_interval_s=t_d, action_overhead_s=300e-6, cpu_cores=2.0, overhead_holds_gil=False)
    assert predict_rate(profile, plan, procs).rate > predict_rate(profile, plan, threads).rate
    one = Plan.uniform(4)
    assert predict_rate(profile, one, procs).rate == predict_rate(profile, one, threads).rate


def test_process_lanes_serialise_the_parents_cpu_per_action() -> None:
    """The daemon's process runs each process-lane action's bookkeeping under its GIL (measured
    ~0.3 ms, as much as a thread lane's): with that share as large as the thread lanes' whole
    overhead, process lanes predict no better than threads; more stages then cost more."""
    profile = conv_profile(16)
    t_d = profile.total_time_s / profile.microbatch / 3
    plan = Plan.uniform(4, (), 2)
    threads = RateParams(arrival_interval_s=t_d, action_overhead_s=3e-3, cpu_cores=2.0)
    free = RateParams(arrival_interval_s=t_d, action_overhead_s=3e-3, cpu_cores=2.0, overhead_holds_gil=False)
    charged = RateParams(
        arrival_interval_s=t_d, action_overhead_s=3e-3, cpu_cores=2.0, overhead_holds_gil=False, parent_cpu_s=3e-3
    )
    assert predict_rate(profile, plan, charged).rate < predict_rate(profile, plan, free).rate
    assert predict_rate(profile, plan, charged).rate == predict_rate(profile, plan, threads).rate
    two_stages = Plan.uniform(4, (2,), 2)
    assert predict_rate(profile, two_stages, charged).rate < predict_rate(profile, plan, charged).rate


def test_arrival_work_takes_cores_from_the_lanes() -> None:
    """Ingest and scoring of every arrival run whatever the plan, on the cores and under the GIL
    the lanes share: the more of them arrivals take, the less a second worker gains."""
    profile = conv_profile(16)
    t_d = profile.total_time_s / profile.microbatch / 3
    one, two = Plan.uniform(4), Plan.uniform(4, (), 2)

    def gain(arrival_cpu_s: float) -> float:
        params = RateParams(
            arrival_interval_s=t_d, action_overhead_s=1e-4, cpu_cores=2.0, overhead_holds_gil=False,
            parent_cpu_s=1e-4, arrival_cpu_s=arrival_cpu_s,
        )  # fmt: skip
        return predict_rate(profile, two, params).rate / predict_rate(profile, one, params).rate

    assert gain(0.0) > gain(0.5 * t_d) > 1.0
    assert gain(0.95 * t_d) < gain(0.5 * t_d)
    with pytest.raises(ValueError):
        RateParams(arrival_interval_s=t_d, arrival_cpu_s=-1.0)


def test_planner_passes_the_measured_parent_cpu_and_the_arrival_work(tmp_path) -> None:
    config = _config(tmp_path)
    profile = profile_for_config(config, Profiler(cache_dir=tmp_path / "profiles", warmup=1, repeats=2))
    _seed_overheads(tmp_path, realtime=2e-4, process=5e-4, parent_cpu=3e-4)
    procs = rate_params_for_config(config, profile, 1e-3, "process")
    assert (procs.action_overhead_s, procs.parent_cpu_s) == (5e-4, 3e-4)
    threads = rate_params_for_config(config, profile, 1e-3, "realtime")
    assert threads.parent_cpu_s is None and threads.overhead_holds_gil  # thread lanes: all of it, as before
    assert procs.arrival_cpu_s == threads.arrival_cpu_s == arrival_cpu_estimate(profile) > INGEST_CPU_S
    scoring = arrival_cpu_estimate(profile) - INGEST_CPU_S  # under overload, scoring takes at most its share
    assert arrival_cpu_estimate(profile, 0.2, scoring) == pytest.approx(INGEST_CPU_S + 0.2 * scoring)
    assert arrival_cpu_estimate(profile, 1.0, scoring) == pytest.approx(INGEST_CPU_S + scoring)
    _seed_overheads(tmp_path, realtime=2e-4, process=5e-4)  # a cache from before parent_cpu_s: all of it
    assert rate_params_for_config(config, profile, 1e-3, "process").parent_cpu_s == 5e-4


def test_auto_weighs_the_parents_cpu_of_process_lanes(tmp_path) -> None:
    """Process lanes with a cheap pipe round trip win over GIL-bound threads, unless the daemon's
    process spends more CPU per action on them than a thread lane costs: then threads win."""
    config = _config(tmp_path)
    profiler = Profiler(cache_dir=tmp_path / "profiles", warmup=1, repeats=2)
    head = Headroom(budget_bytes=1 << 30, raw_bytes=1 << 30, bound_by="cap", safety_factor=1.0, sources={})
    _seed_overheads(tmp_path, realtime=2e-3, process=1e-6, parent_cpu=1e-6)
    assert plan_for_config(config, headroom=head, profiler=profiler, num_gpus=0).extra["executor"] == "process"
    _seed_overheads(tmp_path, realtime=2e-3, process=1e-6, parent_cpu=4e-3)
    assert plan_for_config(config, headroom=head, profiler=profiler, num_gpus=0).extra["executor"] == "realtime"


def _seed_overheads(state_dir, realtime: float, process: float, parent_cpu: float | None = None) -> None:
    """Write the overhead caches the planner reads, instead of measuring."""
    profiles = state_dir / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    for kind, value in (("", realtime), ("process-", process)):
        key = f"overhead-{kind}py{platform.python_version()}-torch{torch.__version__}.json".replace("+", "_")
        extra = {"parent_cpu_s": parent_cpu} if parent_cpu is not None and kind else {}
        (profiles / key).write_text(json.dumps({"action_overhead_s": value, **extra}))


def _overrides(tmp_path) -> dict:
    return {
        "daemon": {"state_dir": str(tmp_path)},
        "model": {"name": "convnet", "input_shape": [1, 16, 16], "channels": [8, 16]},
        "training": {"microbatch": 8},
        "pipeline": {"plan": "auto", "executor": "auto"},
        "planner": {"max_stages": 3, "max_workers": 2},
    }


def _config(tmp_path):
    return load_config(overrides=_overrides(tmp_path), env={})


def test_auto_picks_the_executor_with_the_better_predicted_rate(tmp_path) -> None:
    config = _config(tmp_path)
    profiler = Profiler(cache_dir=tmp_path / "profiles", warmup=1, repeats=2)
    head = Headroom(budget_bytes=1 << 30, raw_bytes=1 << 30, bound_by="cap", safety_factor=1.0, sources={})
    _seed_overheads(tmp_path, realtime=2e-3, process=1e-6)  # threads hopelessly GIL-bound
    fast = plan_for_config(config, headroom=head, profiler=profiler, num_gpus=0)
    assert fast.extra["executor"] == "process"
    _seed_overheads(tmp_path, realtime=1e-6, process=1.0)  # a pipe round trip of a second
    slow = plan_for_config(config, headroom=head, profiler=profiler, num_gpus=0)
    assert slow.extra["executor"] == "realtime"
    # worker processes cost their own memory: a budget below one of them keeps the threads
    _seed_overheads(tmp_path, realtime=2e-3, process=1e-6)
    tight = Headroom(budget_bytes=32 << 20, raw_bytes=32 << 20, bound_by="cap", safety_factor=1.0, sources={})
    assert PROCESS_WORKER_BYTES > 32 << 20
    assert plan_for_config(config, headroom=tight, profiler=profiler, num_gpus=0).extra["executor"] == "realtime"


def test_one_lane_runs_the_sequential_learner_without_engine_overhead() -> None:
    """A P1 N1 plan runs the plain sequential learner (no actions, no lanes): it is charged no engine
    overhead, so a second GIL-bound thread lane must beat the real one lane, not a handicapped one."""
    profile = conv_profile(16)
    t_d = profile.total_time_s / profile.microbatch / 4  # 4x overload
    one, two = Plan.uniform(4), Plan.uniform(4, (), 2)
    engine = RateParams(arrival_interval_s=t_d, action_overhead_s=profile.total_time_s / 8, cpu_cores=2.0)
    sequential = RateParams(
        arrival_interval_s=t_d, action_overhead_s=profile.total_time_s / 8, cpu_cores=2.0, sequential_one_lane=True
    )
    free = RateParams(arrival_interval_s=t_d, action_overhead_s=0.0, cpu_cores=2.0)
    assert predict_rate(profile, one, sequential).rate == predict_rate(profile, one, free).rate
    assert predict_rate(profile, one, sequential).rate > predict_rate(profile, one, engine).rate
    assert predict_rate(profile, two, sequential).rate == predict_rate(profile, two, engine).rate  # lanes pay it
    assert predict_rate(profile, two, engine).rate > predict_rate(profile, one, engine).rate  # the old choice
    assert predict_rate(profile, one, sequential).rate > predict_rate(profile, two, sequential).rate  # the right one


def test_the_planner_marks_one_lane_sequential_unless_an_ocl_method_runs(tmp_path) -> None:
    config = _config(tmp_path)
    profile = profile_for_config(config, Profiler(cache_dir=tmp_path / "profiles", warmup=1, repeats=2))
    _seed_overheads(tmp_path, realtime=2e-4, process=5e-4, parent_cpu=3e-4)
    assert rate_params_for_config(config, profile, 1e-3, "realtime").sequential_one_lane
    er = load_config(overrides={**_overrides(tmp_path), "ocl": {"method": "er"}}, env={})
    assert not rate_params_for_config(er, profile, 1e-3, "realtime").sequential_one_lane
