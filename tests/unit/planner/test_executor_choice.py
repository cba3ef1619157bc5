"""The planner weighs thread lanes against process lanes by their own measured overhead (issue 12)."""

from __future__ import annotations

import json
import platform

import torch

from ferretd.config import load_config
from ferretd.engine.plan import Plan
from ferretd.planner import plan_for_config
from ferretd.planner.headroom import Headroom
from ferretd.planner.memory import PROCESS_WORKER_BYTES
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


def _seed_overheads(state_dir, realtime: float, process: float) -> None:
    """Write the overhead caches the planner reads, instead of measuring."""
    profiles = state_dir / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    for kind, value in (("", realtime), ("process-", process)):
        key = f"overhead-{kind}py{platform.python_version()}-torch{torch.__version__}.json".replace("+", "_")
        (profiles / key).write_text(json.dumps({"action_overhead_s": value}))


def _config(tmp_path):
    return load_config(
        overrides={
            "daemon": {"state_dir": str(tmp_path)},
            "model": {"name": "convnet", "input_shape": [1, 16, 16], "channels": [8, 16]},
            "training": {"microbatch": 8},
            "pipeline": {"plan": "auto", "executor": "auto"},
            "planner": {"max_stages": 3, "max_workers": 2},
        },
        env={},
    )


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
