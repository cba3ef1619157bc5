"""Model, deterministic virtual costs, every strategy's plan on D devices and its predicted memory.

Decisions (bench_paper):

* **Model**: the built-in conv net ``convnet((1, 28, 28), 10, (8, 16, 32))`` - four blocks (three
  Conv3x3+ReLU+MaxPool, a Linear head), microbatch ``MICROBATCH`` = 16 images: its memory is
  mostly activations (~3 MiB of saved activations per microbatch against ~90 KiB of weights), the
  regime the paper's memory claim is about.
* **Costs are a FLOP model, not wall time**: block l's forward on one microbatch costs
  ``(MICROBATCH x MACs_l + 1000) x 1 ns`` (MACs per sample counted by forward hooks on every
  Conv2d / Linear; the constant stands for per-kernel overhead), backward twice that, update 0; a
  recomputing worker's backward pays its stage's forward again (``clock.cost_function``). The
  planner's profile keeps its *measured bytes* but gets these times, so plans, schedules and
  every result are exactly reproducible. ``t_mb`` = forward+backward of one microbatch on one
  device; the arrival interval of microbatches is ``t_d = t_mb / load``.
* **Equal hardware**: every strategy gets D identical devices. Engine plans run on a
  :class:`~ferretd.engine.clock.VirtualClock` whose lanes share ``D`` devices, and Ferret's search is
  restricted to plans with at most D lanes (stages x workers), so the planner's rate model (one
  device per lane) holds. The sequential baselines use the D devices data-parallel: a step on k
  microbatches costs ``ceil(k / D) x t_mb`` (all-reduce not charged) and holds the activations of
  at most D microbatches at once (the rest of a step accumulates sequentially, as a user would).
  Synchronous pipelines use ``P = min(D, 4)`` stages and ``R = D // P`` data-parallel replicas;
  PipeDream / 2BW use P stages and R workers.
* **Memory predicted by one formula** (:func:`ferretd.planner.memory.predict_memory`, actions run
  one at a time as on the virtual clock, versions counted by the planner's worst-case bound):
  sequential = the P1 N1 plan + activations of the extra parallel microbatches + the buffer of
  raw microbatches + one weight(+grad) replica per extra data-parallel device; flush pipelines =
  the P-stage plan with one version per stage, ``G x A_j`` (GPipe) or ``min(G, P-j) x A_j``
  (DAPPLE) activations, times R replicas. Runs are also measured at the allocator (runners.py).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from functools import cached_property

import torch
from torch import nn

from ferretd.engine.clock import StaticProgram, VirtualClock, cost_function
from ferretd.engine.plan import Plan
from ferretd.engine.schedule import gpipe, one_f_one_b_flush
from ferretd.models import convnet
from ferretd.planner.memory import MemoryParams, predict_memory
from ferretd.planner.profile import Profile, Profiler
from ferretd.planner.rate import RateParams
from ferretd.planner.search import Candidate, PlanSearch

INPUT_SHAPE = (1, 28, 28)
CLASSES = 10
CHANNELS = (8, 16, 32)
MICROBATCH = 16
NS = 1e-9
MAX_STAGES = 4


def build_model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return convnet(INPUT_SHAPE, CLASSES, CHANNELS)


def block_macs(model: nn.Sequential) -> list[int]:
    """Multiply-accumulates per sample of every block (Conv2d and Linear layers)."""
    counts = [0] * len(model)
    hooks = []
    for i, block in enumerate(model):
        for layer in block.modules():
            if isinstance(layer, nn.Conv2d):

                def conv(mod: nn.Conv2d, _in: object, out: torch.Tensor, i: int = i) -> None:
                    k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
                    counts[i] += out[0].numel() * k

                hooks.append(layer.register_forward_hook(conv))
            elif isinstance(layer, nn.Linear):
                hooks.append(
                    layer.register_forward_hook(
                        lambda mod, _in, _out, i=i: counts.__setitem__(
                            i, counts[i] + mod.in_features * mod.out_features
                        )
                    )
                )
    with torch.no_grad():
        model(torch.zeros(1, *INPUT_SHAPE))
    for h in hooks:
        h.remove()
    return counts


def flop_profile() -> Profile:
    """Measured bytes at MICROBATCH, FLOP-model times (module docstring)."""
    model = build_model(0)
    prof = Profiler(warmup=1, repeats=1).profile(model, INPUT_SHAPE, MICROBATCH, "cpu")
    blocks = []
    for bp, macs in zip(prof.blocks, block_macs(model), strict=True):
        fwd = (MICROBATCH * macs + 1000) * NS
        blocks.append(replace(bp, forward_s=fwd, backward_s=2 * fwd))
    return replace(prof, blocks=tuple(blocks))


def lanes(plan: Plan) -> int:
    return plan.num_stages * len(plan.active_workers)


class DeviceSearch(PlanSearch):
    """Ferret's plan search restricted to plans with at most ``devices`` lanes."""

    def __init__(self, *args: object, devices: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.device_count = devices

    @cached_property
    def ranked(self) -> list[Candidate]:
        return [c for c in super().ranked if lanes(c.plan) <= self.device_count]


@dataclass
class Strategy:
    """One row of the comparison: an engine plan or a synchronous / sequential baseline."""

    name: str
    kind: str  # "engine", "flush", "sequential"
    memory_bytes: int
    plan: Plan | None = None
    group: int = 1  # microbatches per training step of flush / sequential baselines
    step_s: tuple[float, ...] = ()  # virtual time of one step with k = 1..group microbatches
    family: str = ""  # learning-rate tuning family (defaults to the name)
    compensation: str = "none"
    parallel: int = 1  # microbatches of a step computed at once (the rest accumulate sequentially)

    def __post_init__(self) -> None:
        self.family = self.family or self.name


class Planner:
    """Everything derived from the profile, the load and the device count: plans and memory."""

    def __init__(self, profile: Profile, t_d: float, devices: int, compensation: str = "none") -> None:
        self.profile = profile
        self.t_d = t_d
        self.devices = devices
        self.compensation = compensation
        self.params = MemoryParams.for_training(
            0.0, compensation, fitted=compensation == "iter_fisher", concurrent_lanes=False
        )
        stages = min(MAX_STAGES, profile.num_blocks, devices)
        self.search = DeviceSearch(
            profile,
            RateParams(arrival_interval_s=t_d / profile.microbatch),
            self.params,
            max_workers=devices,
            max_stages=stages,
            devices=devices,
        )

    @cached_property
    def t_mb(self) -> float:
        return self.profile.total_time_s

    @cached_property
    def stages(self) -> int:
        return min(MAX_STAGES, self.profile.num_blocks, self.devices)

    @cached_property
    def replicas(self) -> int:
        return max(1, self.devices // self.stages)

    @cached_property
    def partition(self) -> tuple[int, ...]:
        """Cut points of the partition into ``stages`` stages with the smallest slowest stage."""
        p = self.stages
        times = [b.forward_s + b.backward_s for b in self.profile.blocks]
        best: tuple[float, tuple[int, ...]] | None = None
        for cuts in itertools.combinations(range(1, len(times)), p - 1):
            bounds = [0, *cuts, len(times)]
            slowest = max(sum(times[bounds[j] : bounds[j + 1]]) for j in range(p))
            if best is None or slowest < best[0]:
                best = (slowest, cuts)
        assert best is not None
        return best[1]

    def memory(self, plan: Plan) -> int:
        return predict_memory(self.profile, plan, self.params).total_bytes

    def microbatch_bytes(self) -> int:
        return self.profile.blocks[0].input_bytes + 8 * self.profile.microbatch

    def weight_bytes(self) -> int:
        return sum(b.param_bytes for b in self.profile.blocks)

    def sequential(self, name: str, buffer: int = 0, batch: int = 1) -> Strategy:
        """One model, steps of up to ``batch`` microbatches costing ``ceil(k / D) x t_mb``."""
        plan = Plan.uniform(self.profile.num_blocks)
        parallel = min(batch, self.devices)
        acts = (parallel - 1) * self.profile.stage_activation_bytes(0, self.profile.num_blocks)
        steps = tuple(math.ceil(k / self.devices) * self.t_mb for k in range(1, batch + 1))
        memory = self.memory(plan) + acts + buffer * self.microbatch_bytes() + (parallel - 1) * 2 * self.weight_bytes()
        family = name.split(" (")[0]
        return Strategy(name, "sequential", memory, plan, group=batch, step_s=steps, family=family, parallel=parallel)

    def flush(self, name: str, one_f_one_b: bool) -> Strategy:
        cuts, p, r = self.partition, self.stages, self.replicas
        plan = Plan.uniform(self.profile.num_blocks, cuts)
        base = predict_memory(self.profile, plan, self.params, versions=(1,) * p)
        act = 0
        for j, (a, b) in enumerate(plan.stage_blocks()):
            per_mb = self.profile.stage_activation_bytes(a, b)
            act += (min(p, p - j) if one_f_one_b else p) * per_mb
        per_replica = base.total_bytes - base.activation_bytes + act
        memory = r * per_replica + p * r * self.microbatch_bytes()
        steps = []
        table = self.profile.cost_table(plan.stage_blocks())
        for k in range(1, p * r + 1):
            g = math.ceil(k / r)
            sched = (one_f_one_b_flush if one_f_one_b else gpipe)(p, 1, g, g)
            clock = VirtualClock(StaticProgram(sched), cost_function(table), lambda a: None)
            clock.arrive_all(sched.owner)
            clock.run()
            steps.append(max(clock.lane_free.values()))
        return Strategy(name, "flush", memory, plan, group=p * r, step_s=tuple(steps), parallel=p * r)

    def engine(self, name: str, plan: Plan, family: str | None = None) -> Strategy:
        return Strategy(name, "engine", self.memory(plan), plan, family=family or name, compensation=self.compensation)

    def pipedream(self) -> Strategy:
        return self.engine("PipeDream", Plan.uniform(self.profile.num_blocks, self.partition, self.replicas))

    def pipedream_2bw(self) -> Strategy:
        acc = max(1, self.stages - 1)
        plan = Plan.uniform(self.profile.num_blocks, self.partition, self.replicas, accumulation=acc)
        return self.engine("PipeDream-2BW", plan)

    def ferret(self, budget: int | None, name: str, family: str) -> Strategy:
        plan = self.search.best(budget if budget is not None else 1 << 62)
        return self.engine(name, plan, family)


def describe(plan: Plan) -> str:
    """Compact: ``P2 N3 rc1 a=1,2 omit``."""
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
