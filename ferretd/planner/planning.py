"""``plan_for_config``: build the model, profile it (cached), read headroom, search.

Role: the one call the daemon's ``--plan-only`` and live re-planning make. It composes the pure
pieces (profile -> headroom -> search) and is the only planner module that builds a model.

Decisions: profiles are cached under ``<state_dir>/profiles``. The profile device is ``cuda:0``
when CUDA is available, else ``cpu``. ``[planner] arrival_interval_s = 0`` means "unknown": we
then plan for saturation, taking t_d so that ``max_workers`` workers are just enough
(t_d = (t_f + t_b) / (microbatch * max_workers)); the daemon may pass the measured interval.
With the real-time executor the rate model also gets the engine's measured per-action overhead
(and, for process lanes, the share of it the daemon's process spends under its GIL), the number
of CPU cores the lanes share (``planner/overhead.py``) and an estimate of the daemon's own CPU
per arrival (ingest and scoring, :func:`arrival_cpu_estimate`); the virtual clock gets none.
Memory parameters come from ``[training] momentum`` and ``[compensation] method`` (fitted lambda
when ``fit = "closed_form"`` or ``eta_lambda > 0``).
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from ferretd.config import Config
from ferretd.engine.plan import Plan
from ferretd.planner.headroom import Headroom, read_headroom
from ferretd.planner.memory import PROCESS_WORKER_BYTES, MemoryParams
from ferretd.planner.overhead import cached_action_costs
from ferretd.planner.profile import Profile, Profiler
from ferretd.planner.rate import RateParams
from ferretd.planner.search import BudgetTooSmall, PlanSearch

log = structlog.get_logger(__name__)


def memory_params_for_config(
    config: Config, executor: str | None = None, profile: Profile | None = None
) -> MemoryParams:
    """Memory-model parameters of ``config``; with ``profile``, the OCL method's bound is counted."""
    from ferretd.engine.pipeline import DEFAULT_LOG_LIMIT

    comp = config.compensation
    fitted = comp.fit == "closed_form" or comp.eta_lambda > 0
    params = MemoryParams.for_training(
        config.training.momentum,
        comp.method,
        fitted,
        optimizer=getattr(config.training, "optimizer", "sgd"),
        log_entries=DEFAULT_LOG_LIMIT,
        concurrent_lanes=config.pipeline.executor != "virtual",
        worker_process_bytes=PROCESS_WORKER_BYTES if (executor or config.pipeline.executor) == "process" else 0,
    )
    if config.snapshot.export == "ema":  # the weight average the learner serves: one more copy
        params = replace(params, fixed_copies=params.fixed_copies + 1)
    if profile is not None and config.ocl.method != "vanilla":
        params = replace(params, ocl_bytes=ocl_bound_bytes(config, profile.total_param_bytes))
    return params


def ocl_bound_bytes(config: Config, param_bytes: int) -> int:
    """``memory_bound`` of the configured OCL method, built as the pipeline learner builds it."""
    import dataclasses

    from ferretd.ocl.base import make_ocl

    hyper = {**dataclasses.asdict(config.ocl), "seed": config.training.seed, "lr": config.training.lr}
    return make_ocl(config.ocl.method, **hyper).memory_bound(param_bytes)


def profile_cache_dir(config: Config) -> Path | None:
    """``<state_dir>/profiles``; None (measure, keep nothing) for a config whose directories were
    never resolved, so a bare ``Config()`` never writes into the working directory."""
    return Path(config.daemon.state_dir) / "profiles" if config.daemon.state_dir else None


def rate_params_for_config(
    config: Config, profile: Profile, arrival_interval_s: float | None = None, executor: str | None = None
) -> RateParams:
    t_d = arrival_interval_s if arrival_interval_s is not None else config.planner.arrival_interval_s
    if not t_d or t_d <= 0:
        t_d = profile.total_time_s / (profile.microbatch * config.planner.max_workers)
    executor = executor or config.pipeline.executor
    if executor == "auto":
        executor = "realtime"
    realtime: dict[str, Any] = {}
    if executor in ("realtime", "process"):
        # Real lanes: charge the executor's per-action overhead, and CPU lanes share the cores.
        overhead = config.planner.action_overhead_s
        if overhead < 0 or executor == "process":
            costs = cached_action_costs(profile_cache_dir(config), executor)
            overhead = costs.action_overhead_s
            if executor == "process":  # the parent's share of it runs under the daemon's GIL
                realtime["parent_cpu_s"] = costs.parent_cpu_s
        realtime["action_overhead_s"] = overhead
        realtime["overhead_holds_gil"] = executor == "realtime"
        realtime["sequential_one_lane"] = config.ocl.method == "vanilla"  # the daemon's rule (learners.py)
        if not profile.device.startswith("cuda"):
            realtime["cpu_cores"] = float(len(os.sched_getaffinity(0)))
            if overhead > 0:  # an overhead set to 0 plans as if engine and daemon cost no CPU beyond compute
                realtime["arrival_cpu_s"] = arrival_cpu_estimate(profile, config.metrics.drop_scoring_share, t_d)
    return RateParams(arrival_interval_s=t_d, decay_per_arrival=config.planner.rate_decay, **realtime)


INGEST_CPU_S = 50e-6
"""The daemon's CPU per arriving sample before the model sees it (ZeroMQ receive, decode, queue):
the ingest thread measured 48-104 us per arrival under a 4x overload on the busy 2-core box."""

SCORE_BATCH = 8
"""Dropped arrivals are scored in batches (up to 256 per forward): per sample, a forward of the
profiled microbatch counts as if it held at least this many samples (commit f78fb3d measured
batched scoring at 2 us/sample on the MLP and 111 us/sample on the conv net)."""


def arrival_cpu_estimate(profile: Profile, scoring_share: float = 1.0, arrival_interval_s: float = math.inf) -> float:
    """CPU seconds the daemon spends on each arrival whatever the plan: ingest, then the prediction
    that scores it (rate model item 7), at most ``[metrics] drop_scoring_share`` of an arrival
    interval (under overload the loop scores a sample of the dropped arrivals within that share)."""
    forward = profile.stage_forward_s(0, profile.num_blocks)
    return INGEST_CPU_S + min(forward / max(profile.microbatch, SCORE_BATCH), scoring_share * arrival_interval_s)


def executors_for_config(config: Config, profile: Profile) -> list[str]:
    """The executors the planner compares: ``[pipeline] executor = "auto"`` weighs thread lanes
    against process lanes (CPU only) by predicted R with each one's measured overhead."""
    if config.pipeline.executor != "auto":
        return [config.pipeline.executor]
    return ["realtime"] if profile.device.startswith("cuda") else ["realtime", "process"]


def profile_for_config(config: Config, profiler: Profiler | None = None) -> Profile:
    import torch

    from ferretd.models import build_model

    torch.set_num_threads(config.daemon.torch_threads)
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    model = build_model(config.model, seed=config.training.seed)
    profiler = profiler or Profiler(cache_dir=profile_cache_dir(config))
    return profiler.profile(model, tuple(config.model.input_shape), config.training.microbatch, device)


def plan_for_config(
    config: Config,
    *,
    headroom: Headroom | None = None,
    profiler: Profiler | None = None,
    arrival_interval_s: float | None = None,
    num_gpus: int | None = None,
) -> Plan:
    """Profile (cached), read headroom (unless given) and return the best plan that fits."""
    profile = profile_for_config(config, profiler)
    if headroom is None:
        headroom = read_headroom(config.planner.memory_cap_bytes, config.planner.safety_factor)
    if num_gpus is None:
        import torch

        num_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    best: tuple[Plan, PlanSearch, str] | None = None
    too_small: BudgetTooSmall | None = None
    for executor in executors_for_config(config, profile):
        searcher = PlanSearch(
            profile,
            rate_params_for_config(config, profile, arrival_interval_s, executor),
            memory_params_for_config(config, executor, profile),
            max_workers=config.planner.max_workers,
            max_stages=min(config.planner.max_stages, profile.num_blocks),
            num_gpus=num_gpus,
        )
        try:
            candidate = searcher.best(headroom.budget_bytes)
        except BudgetTooSmall as exc:  # e.g. worker processes do not fit: another executor may
            too_small = exc
            continue
        if best is None or (candidate.predicted_rate or 0.0) > (best[0].predicted_rate or 0.0):
            best = (candidate, searcher, executor)
    if best is None:
        assert too_small is not None
        raise too_small
    plan, searcher, executor = best
    extra = {
        **plan.extra,
        "headroom": headroom.to_dict(),
        "profile_key": profile.key,
        "arrival_interval_s": searcher.rate_params.arrival_interval_s,
        "executor": executor,
    }
    return replace(plan, extra=extra, notes=f"planner: {headroom.describe()}")
