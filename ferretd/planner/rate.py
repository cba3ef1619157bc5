"""Adaptation-rate model: predicted R of a (partition, configuration) from a Profile.

Role: the objective of the search (section 1 of the Ferret notes), as a plain function of the
profile and the plan (no torch). R is normalised per arriving sample, so it lies in [0, V]:

    R = (1/T) sum_t exp(-c r_t) V share_t
      ~ V * mean_n [ accepted_n * sum_k share_k * (1/a_{n,k}) * p_k^n * exp(-c r_k^n) ]

The sum over stages k generalises "share of parameters D^t updated": stage k holds the share
``share_k = |w_k| / |w|`` and is updated at its own time, so each stage has its own delay.
Derivation, per active worker n (``N`` active workers, microbatch ``b``, sample interval ``t_d``):

1. Stage op times. ``F_j``, ``B_j`` are the profiled forward/backward times of stage j;
   recompute adds a forward before the backward: ``B'_j = B_j + recompute_n * F_j``. In 1F1B
   steady state every stage does one F and one B per microbatch, so the worker's service
   interval is its bottleneck ``s_n = max_j (F_j + B'_j)``. Decision: each (worker, stage) is
   its own executor (the engine's virtual-clock assumption); no contention between workers.
2. Arrivals and drops. Microbatches arrive every ``tau = b t_d`` and go round-robin, so worker n
   sees one every ``I = N tau``. Utilisation ``rho_n = s_n / I``. A saturated worker
   (rho > 1) can only accept the fraction ``accepted_n = 1/rho_n``; the rest are dropped
   (r = inf, contributing 0).
3. Delay to the update of stage k, for a sample that is trained:
   * filling its microbatch: ``(b-1)/2 * t_d`` on average;
   * queueing at the worker: ``min(rho, 1) * s_n / 2`` (half a service interval when busy);
   * pipeline latency: unloaded it is ``sum_j F_j + sum_{j>=k} B'_j``; in saturated 1F1B about
     P microbatches are in flight, each taking ``s_n``, so the stage-0 update lands ``~P s_n``
     after entry. We interpolate: ``lat_k = pure_k + min(rho,1) * max(0, P s_n - pure_0)``;
   * accumulation: the gradient waits on average ``(a_{n,k}-1)/2`` further microbatches of
     this worker, one every ``max(s_n, I)``. The engine *averages* the window, so a sample's
     gradient moves the weights by ``1/a`` of a step: its value is weighted ``1/a_{n,k}``
     (``window_average``; the notes' R has no such factor, measurement asked for it).
4. Omission (T3). If worker n omits at stage j, a sample whose stage-j version changed between
   its forward and backward at j is not back-propagated at j nor upstream. Updates at j during
   that window ``W_j = sum_{i>=j} F_i + sum_{i>j} B'_i + min(rho,1) (P-j-1) s_n`` arrive from all
   workers at rate ``sum_m 1 / (max(s_m, I) a_{m,j})``; with ``U`` their expected number, the
   sample is fresh with probability ``max(0, 1 - U)`` (deterministic pipelines: an update either
   falls in the window or not). Stage k is updated with ``p_k = prod_{j>=k, o_{n,j}} fresh_j``.
5. Delay and decay per sample (microbatches, issue 12). ``c = decay_per_arrival / (b t_d)``:
   delay is measured in *microbatch intervals*, the time one microbatch of the stream takes to
   arrive (at b = 1 one arrival, as before: decay 0.1 means ten arrivals are worth ``e^-1``).
   Measured in arrival intervals, a microbatch-32 learner's own compute latency alone was >100
   arrivals at 4x overload, so every plan's R was ~0-0.02 and the ranking was driven by
   latency noise: the planner chose a worse plan with more budget. And the value is averaged
   per sample, not taken at the microbatch's mean delay: sample i of a microbatch waits
   ``(b-1-i) t_d`` for the rest of it, so the fill term is the exact per-sample mean
   ``(1/b) sum_i exp(-c i t_d)`` (>= ``exp(-c (b-1)/2 t_d)``, Jensen), multiplying the
   microbatch's ``exp(-c r_k)`` for the rest of the delay.
6. Real-time lanes on CPU cores (``action_overhead_s`` > 0 or finite ``cpu_cores``; the
   virtual clock leaves both off). Every F, B and U action costs the engine ``o`` seconds of
   Python bookkeeping beyond the block's compute, and that part holds the GIL, so it does not
   overlap across lanes: ``F_j += o``, ``B_j += 2 o`` (B and U). All active workers' lanes share
   ``C`` cores, so a worker's service interval is at least
   ``N * (compute_n / C + 3 P o)``, where ``compute_n`` is its compute per microbatch. This is
   what makes four stages of a tiny MLP slower than one lane on a 2-core box, as measured.
   Process lanes (``overhead_holds_gil=False``, issue 12): F and B compute in worker processes,
   so most of the overhead ``o`` (a pipe round trip, measured per executor) is latency added to
   each action. Not all of it: the daemon's process still runs every action's bookkeeping, the
   pipe I/O and the relay of activations under its GIL, measured as ``parent_cpu_s`` per action
   (about 0.3 ms on the dev box, as much as a thread lane's), so the shared bound is
   ``N * (compute_n / C + 3 P parent_cpu_s)``. Without that term the planner chose P2 N3 process
   lanes for the tiny MLP (six processes on two cores; measured slower than one lane).
7. The daemon's own work per arrival (``arrival_cpu_s``: receive, decode, queue, and the
   prediction that scores every arrival, dropped ones in batches) runs whatever the plan and
   takes ``arrival_cpu_s / t_d`` of a core and of the GIL: under a 4x overload it is what is
   left of the box for the lanes, ``C' = C - arrival_cpu_s / t_d`` cores and a GIL share
   ``g = 1 - arrival_cpu_s / t_d`` (both floored at ``MIN_SHARE``), giving
   ``N * (compute_n / C' + 3 P gil_o / g)``.
8. One lane is not the engine (``sequential_one_lane``, issue 12): a plan of one stage and one
   active worker (and no OCL method) runs the daemon's plain sequential learner, which has no
   actions, no hand-off between lanes and no compensation (staleness 0), so it pays none of the
   engine's per-action overhead (measured: 1.15-1.22x a raw autograd step against 1.74x for an
   engine lane). Charging it the engine's overhead made the planner prefer two thread lanes on
   the conv net at 4x overload, which trained 586 samples/s where one lane trained 1061.

This is a ranking model for the planner, not a simulator: the bench checks that its order of
configurations agrees with online accuracy measured in the engine's virtual clock (Spearman).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ferretd.engine.plan import Plan
from ferretd.planner.profile import Profile

MIN_SHARE = 0.1
"""Floor of the cores and GIL share left to the lanes when arrivals alone would take them all."""


@dataclass(frozen=True)
class RateParams:
    """Stream and value parameters of the adaptation rate."""

    arrival_interval_s: float
    decay_per_arrival: float = 0.1
    value: float = 1.0
    window_average: bool = True
    action_overhead_s: float = 0.0
    cpu_cores: float = math.inf
    overhead_holds_gil: bool = True
    parent_cpu_s: float | None = None  # per action under the daemon's GIL; None: o or 0 (overhead_holds_gil)
    arrival_cpu_s: float = 0.0  # the daemon's own CPU per arriving sample (item 7)
    sequential_one_lane: bool = False  # a P1 N1 plan runs the sequential learner: no engine overhead (item 8)

    def __post_init__(self) -> None:
        if not self.arrival_interval_s > 0:
            raise ValueError(f"arrival_interval_s must be > 0, got {self.arrival_interval_s}")
        if self.decay_per_arrival < 0:
            raise ValueError(f"decay_per_arrival must be >= 0, got {self.decay_per_arrival}")
        if self.arrival_cpu_s < 0 or (self.parent_cpu_s is not None and self.parent_cpu_s < 0):
            raise ValueError("arrival_cpu_s and parent_cpu_s must be >= 0")


@dataclass(frozen=True)
class RateBreakdown:
    """Predicted adaptation rate and the quantities it came from."""

    rate: float
    drop_fraction: float
    mean_delay_s: float
    service_interval_s: tuple[float, ...]


def _stage_times(profile: Profile, plan: Plan) -> tuple[list[float], list[float]]:
    f = [profile.stage_forward_s(s, e) for s, e in plan.stage_blocks()]
    b = [profile.stage_backward_s(s, e) for s, e in plan.stage_blocks()]
    return f, b


def predict_rate(profile: Profile, plan: Plan, params: RateParams) -> RateBreakdown:
    """Predicted R of ``plan`` per arriving sample (see the module docstring)."""
    if profile.num_blocks != plan.num_blocks:
        raise ValueError(f"profile has {profile.num_blocks} blocks but the plan {plan.num_blocks}")
    p = plan.num_stages
    fwd_compute, bwd_compute = _stage_times(profile, plan)
    active = plan.active_workers
    one_lane = params.sequential_one_lane and p == 1 and len(active) == 1
    overhead = 0.0 if one_lane else params.action_overhead_s
    fwd = [f + overhead for f in fwd_compute]
    bwd = [b + 2 * overhead for b in bwd_compute]
    wsizes = [profile.stage_param_bytes(s, e) for s, e in plan.stage_blocks()]
    total_w = sum(wsizes) or 1
    shares = [w / total_w for w in wsizes]
    n_active = len(active)
    t_d = params.arrival_interval_s
    interval = n_active * profile.microbatch * t_d
    b = profile.microbatch
    c = params.decay_per_arrival / (b * t_d)  # item 5: decay per microbatch interval
    fill_value = _fill_value(c * t_d, b)
    gil_overhead = 0.0 if one_lane else params.parent_cpu_s
    if gil_overhead is None:
        gil_overhead = overhead if params.overhead_holds_gil else 0.0
    arrival_load = params.arrival_cpu_s / t_d  # item 7: cores (and GIL) the daemon's own arrival work takes
    cores = max(MIN_SHARE, params.cpu_cores - arrival_load)
    gil_share = max(MIN_SHARE, 1.0 - arrival_load)

    bwd_eff: dict[int, list[float]] = {}
    service: dict[int, float] = {}
    for n in active:
        r = plan.workers[n].recompute
        bwd_eff[n] = [bwd[j] + (fwd[j] if r else 0.0) for j in range(p)]
        service[n] = max(fwd[j] + bwd_eff[n][j] for j in range(p))
        if math.isfinite(params.cpu_cores) or params.action_overhead_s:
            compute = sum(fwd_compute) + sum(bwd_compute) + (sum(fwd_compute) if r else 0.0)
            shared = n_active * (compute / cores + 3 * p * gil_overhead / gil_share)
            service[n] = max(service[n], shared)
    # updates per second at each stage, from all workers
    upd_rate = [
        sum(1.0 / (max(service[m], interval) * plan.workers[m].accumulation[j]) for m in active) for j in range(p)
    ]

    fill = (b - 1) / 2 * t_d  # mean fill wait, reported in the delay only
    total = 0.0
    delays: list[float] = []
    dropped = 0.0
    for n in active:
        w = plan.workers[n]
        s_n = service[n]
        rho = s_n / interval
        busy = min(rho, 1.0)
        accepted = min(1.0, 1.0 / rho) if rho > 0 else 1.0
        dropped += 1.0 - accepted
        queue = busy * s_n / 2
        fsum = sum(fwd)
        pure = [fsum + sum(bwd_eff[n][k:]) for k in range(p)]
        extra = busy * max(0.0, p * s_n - pure[0])
        fresh = []
        for j in range(p):
            window = sum(fwd[j:]) + sum(bwd_eff[n][j + 1 :]) + busy * (p - j - 1) * s_n
            fresh.append(max(0.0, 1.0 - window * upd_rate[j]) if w.omit[j] else 1.0)
        value = 0.0
        for k in range(p):
            acc_wait = (w.accumulation[k] - 1) / 2 * max(s_n, interval)
            delay = fill + queue + pure[k] + extra + acc_wait
            p_update = math.prod(fresh[k:])
            weight = 1.0 / w.accumulation[k] if params.window_average else 1.0
            value += shares[k] * weight * p_update * fill_value * math.exp(-c * (delay - fill))
            delays.append(delay)
        total += accepted * value
    return RateBreakdown(
        rate=params.value * total / n_active,
        drop_fraction=dropped / n_active,
        mean_delay_s=sum(delays) / len(delays),
        service_interval_s=tuple(service[n] for n in active),
    )


def _fill_value(step: float, microbatch: int) -> float:
    """Mean of ``exp(-step * i)`` over ``i = 0 .. b-1`` (the samples' own waits for the microbatch)."""
    if microbatch <= 1 or step <= 0:
        return 1.0
    return -math.expm1(-step * microbatch) / (microbatch * -math.expm1(-step))
