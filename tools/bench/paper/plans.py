"""Model, deterministic virtual costs, the strategies' plans and their memory, for bench_paper.

Decisions:

* **Model**: ``mlp(input, classes, (128, 128, 128))`` - four blocks (Linear+ReLU x3, head), one
  sample per microbatch (the paper's online setting). Weights are seeded per run.
* **Costs are a FLOP model, not wall time**: block l's forward costs ``(MACs_l + 1000) x 1 ns``
  (the constant stands for per-kernel overhead), backward twice that, update 0. The planner's
  :class:`~ferretd.planner.profile.Profile` keeps its *measured bytes* (parameters, saved
  activations: deterministic) but gets these times, so plans, schedules and every result are
  exactly reproducible on any machine. ``t_seq`` = forward+backward of the whole model; the
  arrival interval is ``t_d = t_seq / load``.
* **Memory is the planner's predicted footprint** (:func:`ferretd.planner.memory.predict_memory`,
  versions counted by the planner's worst-case bound), the same formula for every strategy:
  sequential baselines are the P=1, N=1 plan plus their sample buffer (input bytes + label);
  synchronous flush pipelines are the P-stage plan with one weight version per stage and
  ``G x A_j`` (GPipe) or ``min(G, P-j) x A_j`` (DAPPLE 1F1B) activations. Engine runs also
  report the engine's own peak version bytes (``sum_j max_live_j x |w_j|``) beside it.
* **Baseline pipelines** use the P-stage partition with the smallest slowest stage (P = 4 or the
  largest the planner allows), one worker: PipeDream (a=1, stashing), PipeDream-2BW (a = P-1:
  at most two versions), GPipe / DAPPLE (group G = P microbatches per flush).
* **Ferret** plans come from :class:`~ferretd.planner.search.PlanSearch` (max 4 workers, 4
  stages): *minimal* = the smallest feasible budget, *unconstrained* = unlimited budget,
  *medium* = the geometric mean of the two memories; "Ferret @ M(X)" is planned with strategy
  X's memory as budget (the equal-memory comparison).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import torch
from torch import nn

from ferretd.engine.clock import StaticProgram, VirtualClock, cost_function
from ferretd.engine.plan import Plan
from ferretd.engine.schedule import gpipe, one_f_one_b_flush
from ferretd.models import mlp
from ferretd.planner.memory import MemoryParams, predict_memory
from ferretd.planner.profile import Profile, Profiler
from ferretd.planner.rate import RateParams
from ferretd.planner.search import PlanSearch

HIDDEN = (128, 128, 128)
NS = 1e-9
MAX_STAGES = 4
MAX_WORKERS = 4


def build_model(input_shape: tuple[int, ...], classes: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return mlp(input_shape, classes, HIDDEN)


def flop_profile(input_shape: tuple[int, ...], classes: int) -> Profile:
    """Measured bytes, FLOP-model times (module docstring)."""
    model = build_model(input_shape, classes, 0)
    prof = Profiler(warmup=1, repeats=1).profile(model, input_shape, 1, "cpu")
    blocks = []
    for block, bp in zip(model, prof.blocks, strict=True):
        macs = sum(p.numel() for p in block.parameters() if p.dim() > 1)
        fwd = (macs + 1000) * NS
        blocks.append(replace(bp, forward_s=fwd, backward_s=2 * fwd))
    return replace(prof, blocks=tuple(blocks))


@dataclass
class Strategy:
    """One row of the comparison: an engine plan or a synchronous / sequential baseline."""

    name: str
    kind: str  # "engine", "flush", "sequential"
    memory_bytes: int
    plan: Plan | None = None
    group: int = 1  # microbatches (samples) per training step of flush / sequential baselines
    step_s: tuple[float, ...] = ()  # virtual time of one step with k = 1..group samples


class Planner:
    """Everything derived from the profile and the load: partitions, plans, memory."""

    def __init__(self, profile: Profile, t_d: float, compensation: str = "none") -> None:
        self.profile = profile
        self.t_d = t_d
        self.params = MemoryParams.for_training(0.0, compensation, fitted=compensation == "iter_fisher")
        self.search = PlanSearch(
            profile,
            RateParams(arrival_interval_s=t_d),
            self.params,
            max_workers=MAX_WORKERS,
            max_stages=min(MAX_STAGES, profile.num_blocks),
        )

    @cached_property
    def t_seq(self) -> float:
        return self.profile.total_time_s

    @cached_property
    def partition(self) -> tuple[int, ...]:
        """Cut points of the most balanced partition with the most stages (<= MAX_STAGES)."""
        p = min(MAX_STAGES, self.profile.num_blocks)
        times = [b.forward_s + b.backward_s for b in self.profile.blocks]
        best: tuple[float, tuple[int, ...]] | None = None
        import itertools

        for cuts in itertools.combinations(range(1, len(times)), p - 1):
            bounds = [0, *cuts, len(times)]
            slowest = max(sum(times[bounds[j] : bounds[j + 1]]) for j in range(p))
            if best is None or slowest < best[0]:
                best = (slowest, cuts)
        assert best is not None
        return best[1]

    def memory(self, plan: Plan) -> int:
        return predict_memory(self.profile, plan, self.params).total_bytes

    def sample_bytes(self) -> int:
        return self.profile.blocks[0].input_bytes + 8

    def sequential(self, name: str, buffer: int = 0, batch: int = 1) -> Strategy:
        """One model, steps of up to ``batch`` samples costing ``k x t_seq``."""
        plan = Plan.uniform(self.profile.num_blocks)
        acts = (batch - 1) * self.profile.stage_activation_bytes(0, self.profile.num_blocks)
        steps = tuple(k * self.t_seq for k in range(1, batch + 1))
        memory = self.memory(plan) + acts + buffer * self.sample_bytes()
        return Strategy(name, "sequential", memory, plan, group=batch, step_s=steps)

    def flush(self, name: str, one_f_one_b: bool) -> Strategy:
        cuts = self.partition
        p = len(cuts) + 1
        group = p
        plan = Plan.uniform(self.profile.num_blocks, cuts)
        base = predict_memory(self.profile, plan, self.params, versions=(1,) * p)
        act = 0
        for j, (a, b) in enumerate(plan.stage_blocks()):
            per_mb = self.profile.stage_activation_bytes(a, b)
            act += (min(group, p - j) if one_f_one_b else group) * per_mb
        memory = base.total_bytes - base.activation_bytes + act + group * self.sample_bytes()
        steps = []
        for k in range(1, group + 1):
            sched = (one_f_one_b_flush if one_f_one_b else gpipe)(p, 1, k, k)
            clock = VirtualClock(
                StaticProgram(sched), cost_function(self.profile.cost_table(plan.stage_blocks())), lambda a: None
            )
            clock.arrive_all(sched.owner)
            clock.run()
            steps.append(max(clock.lane_free.values()))
        return Strategy(name, "flush", memory, plan, group=group, step_s=tuple(steps))

    def engine(self, name: str, plan: Plan) -> Strategy:
        return Strategy(name, "engine", self.memory(plan), plan)

    def pipedream(self) -> Strategy:
        return self.engine("PipeDream", Plan.uniform(self.profile.num_blocks, self.partition))

    def pipedream_2bw(self) -> Strategy:
        p = len(self.partition) + 1
        return self.engine("PipeDream-2BW", Plan.uniform(self.profile.num_blocks, self.partition, accumulation=p - 1))

    def ferret(self, budget: int | None, name: str) -> Strategy:
        plan = self.search.best(budget if budget is not None else 1 << 62)
        return self.engine(name, plan)

    def ferret_levels(self) -> list[Strategy]:
        low = self.ferret(self.search.minimum_bytes, "Ferret (min)")
        high = self.ferret(None, "Ferret (unconstrained)")
        mid_budget = int((low.memory_bytes * high.memory_bytes) ** 0.5)
        return [low, self.ferret(mid_budget, "Ferret (medium)"), high]


def describe(plan: Plan) -> str:
    """Compact: ``P2 N3 [a=1,2] rc omit=[0]``."""
    w = [plan.workers[n] for n in plan.active_workers]
    out = f"P{plan.num_stages} N{len(w)}"
    if any(x.recompute for x in w):
        out += f" rc{sum(x.recompute for x in w)}"
    accs = {x.accumulation for x in w}
    if any(a > 1 for acc in accs for a in acc):
        out += " a=" + "/".join(",".join(map(str, acc)) for acc in sorted(accs))
    if any(o for x in w for o in x.omit):
        out += " omit"
    return out
