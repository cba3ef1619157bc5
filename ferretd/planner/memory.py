"""Memory model: predicted footprint of a (partition, configuration) from a Profile.

Role: section 4 of the Ferret notes, as plain functions of :class:`~ferretd.planner.profile.Profile`
and :class:`~ferretd.engine.plan.Plan` (no torch needed). The search uses it to decide whether a
plan fits the budget; ``tools/bench/bench_planner.py`` checks it against measurement.

Model, for stage j with parameter bytes |w_j|, P stages, active workers n:

* **Weight versions are shared by all workers** (section 2: all workers update the same model;
  the engine keeps per-stage immutable versions, refcounted by the in-flight microbatches that
  pinned them). The current version is one copy for everyone. Worker n's in-flight microbatches
  at stage j pin at most ``ceil((P-j-1)/a_{n,j})`` *older* versions (its own 1F1B window holds
  P-j-1 other backwards, and an update happens every ``a`` of them). In the worst case the
  versions pinned by different workers are distinct (the other workers' updates interleave), so

      versions_j = 1 + sum_{n active, not o_{n,j}} ceil((P-j-1) / a_{n,j})

  With one worker this is the notes' ``1 + ceil((P-j-1)/a)``; an omitting worker (T3) keeps no
  stash at j and pins nothing there. This is an upper bound: when workers are not saturated,
  fewer versions are alive.
* Gradients: one |w_j| buffer per active worker (the accumulation buffer for a > 1, the transient
  ``autograd.grad`` result for a = 1).
* Optimizer state: ``optimizer_factor * |w_j|`` once (SGD momentum: 1, plain SGD: 0).
* Compensation state: ``compensation_factor * |w_j|`` once (fitted-lambda Iter-Fisher: 2,
  gap-aware: 1 for the update-size EMA, others 0).
* Activations per worker and stage, with ``inflight = P - j`` microbatches and ``A_j`` the
  saved bytes of one microbatch through the stage (boundary tensors shared within a stage counted
  once): ``inflight * A_j`` without recompute; ``inflight * |input_j| + A_j`` with recompute (the
  stage inputs of every in-flight microbatch plus one re-materialised graph).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ferretd.engine.plan import Plan
from ferretd.planner.profile import Profile


@dataclass(frozen=True)
class MemoryParams:
    """Per-stage state the model keeps besides weights, as multiples of |w_j|."""

    optimizer_factor: float = 0.0
    compensation_factor: float = 0.0
    grad_buffer_per_worker: bool = True

    @classmethod
    def for_training(cls, momentum: float = 0.0, compensation: str = "none", fitted: bool = True) -> MemoryParams:
        comp = {"iter_fisher": 2.0 if fitted else 0.0, "gap_aware": 1.0}.get(compensation, 0.0)
        return cls(optimizer_factor=1.0 if momentum > 0 else 0.0, compensation_factor=comp)


@dataclass(frozen=True)
class MemoryBreakdown:
    """Predicted bytes by kind and per stage."""

    total_bytes: int
    version_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    compensation_bytes: int
    activation_bytes: int
    stage_bytes: tuple[int, ...]
    versions: tuple[int, ...]


def stage_versions(plan: Plan, stage: int) -> int:
    """Live weight versions at ``stage`` (shared across workers), see the module docstring."""
    back = plan.num_stages - stage - 1
    old = sum(math.ceil(back / w.accumulation[stage]) for w in plan.workers if w.active and not w.omit[stage])
    return 1 + old


def worker_activation_bytes(profile: Profile, plan: Plan, worker: int, stage: int) -> int:
    """Activation bytes held by one worker at one stage."""
    start, end = plan.stage_blocks()[stage]
    w = plan.workers[worker]
    if not w.active:
        return 0
    inflight = plan.num_stages - stage
    acts = profile.stage_activation_bytes(start, end)
    if w.recompute:
        return inflight * profile.stage_input_bytes(start) + acts
    return inflight * acts


def predict_memory(profile: Profile, plan: Plan, params: MemoryParams | None = None) -> MemoryBreakdown:
    """Predicted footprint of ``plan`` (see the module docstring for the formula)."""
    params = params or MemoryParams()
    if profile.num_blocks != plan.num_blocks:
        raise ValueError(f"profile has {profile.num_blocks} blocks but the plan {plan.num_blocks}")
    active = len(plan.active_workers)
    per_stage: list[int] = []
    versions: list[int] = []
    totals = dict(version=0, grad=0, opt=0, comp=0, act=0)
    for j, (start, end) in enumerate(plan.stage_blocks()):
        wj = profile.stage_param_bytes(start, end)
        v = stage_versions(plan, j)
        parts = dict(
            version=v * wj,
            grad=(active if params.grad_buffer_per_worker else 1) * wj,
            opt=int(params.optimizer_factor * wj),
            comp=int(params.compensation_factor * wj),
            act=sum(worker_activation_bytes(profile, plan, n, j) for n in range(len(plan.workers))),
        )
        for k, val in parts.items():
            totals[k] += val
        per_stage.append(sum(parts.values()))
        versions.append(v)
    return MemoryBreakdown(
        total_bytes=sum(per_stage),
        version_bytes=totals["version"],
        grad_bytes=totals["grad"],
        optimizer_bytes=totals["opt"],
        compensation_bytes=totals["comp"],
        activation_bytes=totals["act"],
        stage_bytes=tuple(per_stage),
        versions=tuple(versions),
    )
