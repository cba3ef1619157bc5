"""Memory model: predicted footprint of a (partition, configuration) from a Profile.

Role: section 4 of the Ferret notes, as plain functions of :class:`~ferretd.planner.profile.Profile`
and :class:`~ferretd.engine.plan.Plan` (no torch needed). The search uses it to decide whether a
plan fits the budget; ``tools/bench/bench_planner.py`` checks it against measurement.

Model, for stage j with parameter bytes |w_j|, P stages, active workers n:

* **Weight versions are shared by all workers** (section 2: all workers update the same model;
  the engine keeps per-stage immutable versions, refcounted by the in-flight microbatches that
  pinned them, from forward until the update that applies their gradient). With one worker the
  live versions are the notes' ``1 + ceil((P-j-1)/a)``. With several, the count depends on how
  their updates interleave, i.e. on the arrival phasing, so we keep two counts:

  - the **bound** (:func:`plan_versions`), used against the budget: the engine's own
    bookkeeping (``ferretd.engine.simulate``) replayed over saturated streams at several arrival
    phasings, worst case per stage. Its closed form (exact for one worker and for identical
    non-omitting workers, e.g. ``N (P-j)`` at a = 1) steers the search:
    ``1 + sum_m ceil((P-j)/a_m) - min_m [ceil((P-j)/a_m) - ceil((P-j-1)/a_m)]`` over pinning
    workers, plus one when some worker omits (it pins from backward to update) and N >= 2;
  - the **expected** count (:func:`expected_versions`): the same bookkeeping replayed with the
    learner's routing (sample i to worker i mod N), the profiled stage costs and the planned
    arrival interval. It is what the virtual clock shows; the bench compares it to measurement.

  Decision: the budget is a hard cap (systemd kills at ``MemoryMax=``) and real-time lanes drift
  in phase, so plans are checked against the bound; the expected footprint is reported beside it.
* Deltas: with a compensator the engine keeps ``theta^{k+1} - theta^k`` from the oldest pinned
  version on: ``(versions_j - 1) |w_j|`` (``keep_deltas``).
* Gradients: the engine keeps a worker's whole accumulation window (one gradient per microbatch,
  compensated one by one): ``sum_n a_{n,j} |w_j|``.
* Fixed copies: the learner's template copy of the model (``fixed_copies |w_j|``, 1 in the
  engine: stage modules live on the ``meta`` device, but ``PipelineLearner.template`` holds full
  weights, which the old bookkeeping probe did not see; 2 when the served model is the weight
  average, ``[snapshot] export = "ema"``, which keeps one more copy), optimizer state
  ``optimizer_factor |w_j|`` (SGD momentum: 1), compensator state
  ``compensation_factor |w_j|`` (fitted-lambda Iter-Fisher: 3 = EMA, g_prev^2, th_prev;
  gap-aware: 1).
* Activations per worker and stage, with ``inflight = P - j`` microbatches and ``A_j`` the
  saved bytes of one microbatch through the stage (boundary tensors shared within a stage counted
  once): ``inflight * A_j`` without recompute; ``inflight * |input_j|`` with recompute (the stage
  inputs of every in-flight microbatch), plus one re-materialised graph ``A_j`` per stage where
  some worker recomputes (it lives only during that backward; the virtual clock runs one action
  at a time, real-time lanes of one stage rarely overlap their backwards). Without recompute
  a stage's saved input is the previous stage's saved output (the engine passes it on detached,
  same storage), so it is counted upstream only.
* In transit (issue 12): per worker and stage boundary one stage output waiting for the next
  stage's forward and one input gradient waiting for the previous stage's backward
  (``2 |output_j|``); 1F1B runs a ready backward first, so more than one rarely waits.
* Transients (issue 12), measured at the allocator: an F or B action allocates temporaries inside
  the block beyond what it keeps (``Profile.stage_temp_bytes``). A U (``update_transient_bytes``,
  ``t`` the stage's largest tensor) holds the compensated copies of its window (``a |w_j|`` with a
  compensator, plus ``compensation_temp_factor |w_j|`` inside it), then in turn: averages a window
  of ``a > 1`` tensor by tensor (the running total ``|w_j|`` + ``torch.stack`` ``(a + 1) t``);
  builds the next version and optimiser state out of place while the total lives
  (``(1 + optimizer_factor) |w_j|``, + ``|w_j|`` when a > 1); runs the divergence guard's step
  norm on the new weights (``_foreach_sub(new, old)``: one more ``|w_j|``; the per-tensor version
  it replaced held ``(new - old).double().pow(2)``, 4 t, and weight decay holds one ``t``). Each lane runs one action
  at a time: with ``concurrent_lanes`` (real-time lanes, threads or processes) every lane may be
  mid-action at once, so the bound sums the lanes' largest transients; the virtual clock runs one
  action at a time (the largest one).
* Worker processes (issue 12, process executor): each lane's process holds its own torch runtime,
  graphs and buffers; its private memory (USS, the pages the cgroup charges it beyond those shared
  copy-on-write with the forkserver) measured 83-85 MiB on the dev box with the conv net, so each
  lane is charged ``worker_process_bytes`` (:data:`PROCESS_WORKER_BYTES`, 96 MiB) on top.
* Bookkeeping (issue 12): the action log, bounded at ``log_entries`` entries of at most
  :data:`LOG_ENTRY_BYTES` each (Python objects; measured with tracemalloc in the tests).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ferretd.engine.plan import Plan
from ferretd.planner.profile import Profile

if TYPE_CHECKING:
    from ferretd.engine.simulate import SimReport

SIM_SPACINGS = (0.0, 0.1, 0.35, 0.7, 2.0, 6.0)
PROCESS_WORKER_BYTES = 96 * 2**20  # private memory of one process-executor worker (measured 83-85 MiB)
LOG_ENTRY_BYTES = 320  # one LogEntry with its Action and tuple (measured below this in the tests)


@dataclass(frozen=True)
class MemoryParams:
    """Per-stage state the model keeps besides weights, as multiples of |w_j|."""

    optimizer_factor: float = 0.0
    compensation_factor: float = 0.0
    keep_deltas: bool = False
    fixed_copies: float = 1.0
    compensation_temp_factor: float = 0.0
    concurrent_lanes: bool = True
    log_entries: int = 0
    worker_process_bytes: int = 0
    ocl_bytes: int = 0  # the OCL method's own state at its bound (``OclMethod.memory_bound``), any plan

    @classmethod
    def for_training(
        cls,
        momentum: float = 0.0,
        compensation: str = "none",
        fitted: bool = True,
        *,
        optimizer: str = "sgd",
        log_entries: int = 0,
        concurrent_lanes: bool = True,
        worker_process_bytes: int = 0,
    ) -> MemoryParams:
        comp = {"iter_fisher": 3.0 if fitted else 0.0, "gap_aware": 1.0}.get(compensation, 0.0)
        opt = {"adam": 2.0, "adagrad": 1.0}.get(optimizer, 1.0 if momentum > 0 else 0.0)
        return cls(
            optimizer_factor=opt,
            compensation_factor=comp,
            keep_deltas=compensation != "none",
            compensation_temp_factor=0.0 if compensation == "none" else 2.0,
            log_entries=log_entries,
            concurrent_lanes=concurrent_lanes,
            worker_process_bytes=worker_process_bytes,
        )


@dataclass(frozen=True)
class MemoryBreakdown:
    """Predicted bytes by kind and per stage."""

    total_bytes: int
    version_bytes: int
    delta_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    compensation_bytes: int
    activation_bytes: int
    stage_bytes: tuple[int, ...]
    versions: tuple[int, ...]
    transit_bytes: int = 0
    transient_bytes: int = 0
    log_bytes: int = 0  # the action log, plus the worker processes' own memory (process executor)
    ocl_bytes: int = 0  # replay buffer, teacher or importance weights of the OCL method


def closed_form_versions(ahead: int, lanes: Sequence[tuple[int, bool]]) -> int:
    """Live versions at a stage with ``ahead = P - j``; ``lanes`` = (a, omit) per active worker.

    Exact for one worker and for identical non-omitting workers; an estimate otherwise.
    """
    pinning = [a for a, omit in lanes if not omit]
    versions = 1
    if pinning:
        versions += sum(math.ceil(ahead / a) for a in pinning)
        versions -= min(math.ceil(ahead / a) - math.ceil((ahead - 1) / a) for a in pinning)
    if len(pinning) < len(lanes) and len(lanes) >= 2:
        versions += 1
    return versions


Lanes = tuple[tuple[tuple[int, ...], tuple[bool, ...]], ...]


@functools.lru_cache(maxsize=4096)
def simulated_versions(num_stages: int, lanes: Lanes) -> tuple[int, ...]:
    """Max live versions per stage as the engine's own bookkeeping (``ferretd.engine.simulate``)
    counts them; ``lanes`` = (accumulation, omit) per active worker. Saturated arrivals, unit
    stage costs (F=1, B=2), worst of a few arrival phasings."""
    n = len(lanes)
    if n == 1:
        return tuple(
            closed_form_versions(num_stages - j, [(lanes[0][0][j], lanes[0][1][j])]) for j in range(num_stages)
        )
    try:
        from ferretd.engine.clock import OnlineProgram
        from ferretd.engine.simulate import simulate
    except ImportError:  # pragma: no cover - engine absent
        return tuple(
            closed_form_versions(num_stages - j, [(acc[j], om[j]) for acc, om in lanes]) for j in range(num_stages)
        )
    cost = {(s, "F"): 1.0 for s in range(num_stages)} | {(s, "B"): 2.0 for s in range(num_stages)}
    acc = {(w, s): lanes[w][0][s] for w in range(n) for s in range(num_stages)}
    omit = {(w, s) for w in range(n) for s in range(num_stages) if lanes[w][1][s]}
    a_max = max(max(a) for a, _ in lanes)
    count = 4 * n * (a_max + num_stages) + 8
    owner = {m: m % n for m in range(count)}
    best = [1] * num_stages
    for spacing in SIM_SPACINGS:
        arrivals = {m: m * spacing * 3.0 / n for m in range(count)}
        report = simulate(OnlineProgram(num_stages, acc), cost, arrivals=arrivals, owner=owner, omit=omit)
        best = [max(x, y) for x, y in zip(best, report.max_live_versions, strict=True)]
    return tuple(best)


def plan_versions(plan: Plan, *, exact: bool = True) -> tuple[int, ...]:
    """Live weight versions per stage, worst case over arrival phasings (``exact``: counted by
    the engine's bookkeeping; else the closed form)."""
    active = [plan.workers[n] for n in plan.active_workers]
    if exact:
        return simulated_versions(plan.num_stages, tuple((w.accumulation, w.omit) for w in active))
    return tuple(
        closed_form_versions(plan.num_stages - j, [(w.accumulation[j], w.omit[j]) for w in active])
        for j in range(plan.num_stages)
    )


def stage_versions(plan: Plan, stage: int, *, exact: bool = True) -> int:
    return plan_versions(plan, exact=exact)[stage]


def expected_versions(profile: Profile, plan: Plan, arrival_interval_s: float) -> tuple[int, ...]:
    """Max live versions per stage when the engine runs ``plan`` on a stream with one sample every
    ``arrival_interval_s``: the learner's routing (sample i -> active worker i mod N, a microbatch
    enters when its last sample arrives), profiled stage costs (recompute adds a forward), replayed
    by the engine's bookkeeping. What the virtual clock will show; real time may drift towards
    :func:`plan_versions`."""
    return tuple(_expected_run(profile, plan, arrival_interval_s).max_live_versions)


def expected_memory(profile: Profile, plan: Plan, params: MemoryParams, arrival_interval_s: float) -> int:
    """Expected peak footprint: like :func:`predict_memory` with :func:`expected_versions`, but the
    weight-sized parts that come and go (live versions, their deltas, gradients waiting in
    accumulation windows) are taken at their *joint* peak over the replayed run rather than each
    at its own peak, which over-counts when the peaks fall at different times (e.g. workers'
    accumulation windows fill in turn)."""
    versions = expected_versions(profile, plan, arrival_interval_s)
    parts = predict_memory(profile, plan, params, versions=versions)
    weights = [profile.stage_param_bytes(s, e) for s, e in plan.stage_blocks()]
    held = _expected_run(profile, plan, arrival_interval_s, weights, params.keep_deltas).peak_held_bytes
    return parts.total_bytes - parts.version_bytes - parts.delta_bytes - parts.grad_bytes + held


def lane_transient_bytes(profile: Profile, plan: Plan, params: MemoryParams, worker: int, stage: int) -> int:
    """Largest temporary one action of lane (worker, stage) allocates (module docstring)."""
    start, end = plan.stage_blocks()[stage]
    return int(max(profile.stage_temp_bytes(start, end), update_transient_bytes(profile, plan, params, worker, stage)))


def update_transient_bytes(profile: Profile, plan: Plan, params: MemoryParams, worker: int, stage: int) -> int:
    """Peak temporaries of one U of lane (worker, stage) (module docstring)."""
    start, end = plan.stage_blocks()[stage]
    w, t = profile.stage_param_bytes(start, end), profile.stage_max_tensor_bytes(start, end)
    a = plan.workers[worker].accumulation[stage]
    compensated = a * w if params.keep_deltas else 0
    new = (1 + params.optimizer_factor) * w
    phases = [
        params.compensation_temp_factor * w,
        w + (a + 1) * t if a > 1 else 0,
        new + (w if a > 1 else 0),
        new + max(w, t),  # the guard's fused step difference (weight decay: one tensor at a time)
    ]
    return int(compensated + max(phases))


def transient_bytes(profile: Profile, plan: Plan, params: MemoryParams) -> int:
    """Temporaries of the actions running at once: every lane (``concurrent_lanes``) or one."""
    lanes = [
        lane_transient_bytes(profile, plan, params, n, j) for n in plan.active_workers for j in range(plan.num_stages)
    ]
    return sum(lanes) if params.concurrent_lanes else max(lanes)


def _expected_run(
    profile: Profile,
    plan: Plan,
    arrival_interval_s: float,
    stage_bytes: Sequence[int] | None = None,
    keep_deltas: bool = False,
) -> SimReport:
    from ferretd.engine.clock import OnlineProgram, cost_function
    from ferretd.engine.simulate import simulate

    active = plan.active_workers
    p, b = plan.num_stages, profile.microbatch
    cost = cost_function(
        profile.cost_table(plan.stage_blocks()),
        recompute_workers=[k for k, n in enumerate(active) if plan.workers[n].recompute],
    )
    a_max = max(max(plan.workers[n].accumulation) for n in active)
    per_worker = 4 * (p + a_max) + 4
    arrivals: dict[int, float] = {}
    owner: dict[int, int] = {}
    filled = [0] * len(active)
    for i in range(per_worker * b * len(active)):
        k = i % len(active)
        filled[k] += 1
        if filled[k] == b:
            filled[k] = 0
            m = len(arrivals)
            arrivals[m], owner[m] = i * arrival_interval_s, k
    acc = {(k, j): plan.workers[n].accumulation[j] for k, n in enumerate(active) for j in range(p)}
    omit = {(k, j) for k, n in enumerate(active) for j in range(p) if plan.workers[n].omit[j]}
    return simulate(
        OnlineProgram(p, acc), cost, arrivals=arrivals, owner=owner, omit=omit, stage_bytes=stage_bytes,
        keep_deltas=keep_deltas,
    )  # fmt: skip


def worker_activation_bytes(profile: Profile, plan: Plan, worker: int, stage: int) -> int:
    """Activation bytes held by one worker at one stage."""
    start, end = plan.stage_blocks()[stage]
    w = plan.workers[worker]
    if not w.active:
        return 0
    inflight = plan.num_stages - stage
    acts = profile.stage_activation_bytes(start, end)
    if w.recompute:  # the re-materialised graph is counted once per stage, in predict_memory
        return inflight * profile.stage_input_bytes(start)
    if start > 0 and profile.blocks[start - 1].saves_output and profile.blocks[start].saves_input:
        # the stage input is the previous stage's saved output (same storage), and every
        # microbatch in flight here is still in flight upstream: count it there only
        acts -= profile.stage_input_bytes(start)
    return inflight * acts


def predict_memory(
    profile: Profile,
    plan: Plan,
    params: MemoryParams | None = None,
    *,
    exact: bool = True,
    versions: Sequence[int] | None = None,
) -> MemoryBreakdown:
    """Predicted footprint of ``plan`` (module docstring). Versions: ``versions`` when given
    (e.g. :func:`expected_versions`), else the worst-case bound :func:`plan_versions`
    (``exact=False``: its closed form)."""
    params = params or MemoryParams()
    if profile.num_blocks != plan.num_blocks:
        raise ValueError(f"profile has {profile.num_blocks} blocks but the plan {plan.num_blocks}")
    per_stage: list[int] = []
    active = plan.active_workers
    versions = tuple(versions) if versions is not None else plan_versions(plan, exact=exact)
    totals = dict(version=0, delta=0, grad=0, fixed=0, opt=0, comp=0, act=0)
    for j, (start, end) in enumerate(plan.stage_blocks()):
        wj = profile.stage_param_bytes(start, end)
        v = versions[j]
        parts = dict(
            version=v * wj,
            delta=(v - 1) * wj if params.keep_deltas else 0,
            grad=sum(plan.workers[n].accumulation[j] for n in plan.active_workers) * wj,
            fixed=int(params.fixed_copies * wj),
            opt=int(params.optimizer_factor * wj),
            comp=int(params.compensation_factor * wj),
            act=sum(worker_activation_bytes(profile, plan, n, j) for n in range(len(plan.workers)))
            + (profile.stage_activation_bytes(start, end) if any(plan.workers[n].recompute for n in active) else 0),
        )
        for k, val in parts.items():
            totals[k] += val
        per_stage.append(sum(parts.values()))
    transit = 2 * len(active) * sum(profile.blocks[end - 1].output_bytes for _, end in plan.stage_blocks()[:-1])
    transient = transient_bytes(profile, plan, params)
    log_bytes = params.log_entries * LOG_ENTRY_BYTES
    log_bytes += params.worker_process_bytes * len(active) * plan.num_stages
    return MemoryBreakdown(
        total_bytes=sum(per_stage) + transit + transient + log_bytes + params.ocl_bytes,
        version_bytes=totals["version"],
        delta_bytes=totals["delta"],
        grad_bytes=totals["grad"],
        optimizer_bytes=totals["opt"],
        compensation_bytes=totals["comp"],
        activation_bytes=totals["act"],
        stage_bytes=tuple(per_stage),
        versions=versions,
        transit_bytes=transit,
        transient_bytes=transient,
        log_bytes=log_bytes,
        ocl_bytes=params.ocl_bytes,
    )
