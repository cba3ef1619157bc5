"""Plan search: the best predicted adaptation rate whose predicted memory fits the budget.

Role: sections 4.3-4.5 of the Ferret notes, pure (Profile in, Plan out).

* **Sub-problem 2, partitions.** For a per-stage time cap t^c the greedy scan (add blocks while
  the stage's F+B stays under the cap, else cut) gives the fewest-stage contiguous partition.
  Only caps equal to some contiguous segment time change the result, so we enumerate those,
  dedupe, and keep partitions with at most ``max_stages`` stages: at most (L^2-L)/2 candidates
  plus the single stage.
* **Sub-problem 1, configuration.** From the fastest configuration (N = min(max_workers,
  ceil((t_f+t_b)/(b t_d))) workers, no recompute, a=1, no omission) we repeatedly apply one memory
  step: S1 recompute on a worker, S2 raise a_{n,j} to the next value that drops a version (by the
  closed-form count), S3 omission at (n, j), S4 remove a worker; steps that save no bytes are
  ignored (in the engine an accumulation window costs a gradients, so raising a can cost
  memory); each time the one that loses the least predicted R per byte saved. Decision: the
  path does not depend on the budget: it runs until no step saves memory, and for a budget M
  we take the best-R configuration on it that fits. This makes results cacheable across
  budgets and makes predicted R monotone in M by construction. Two
  paths are walked per partition and pooled: ``ordered`` (the notes' S1 -> S4 priority: a step of
  a later kind only when no earlier kind saves memory) and ``global`` (least loss per byte over
  all kinds).
* Paths are walked with the closed-form version count (fast). The answer for a budget is the
  first candidate, in a fixed order (higher R, then less memory), whose memory with versions
  counted by the engine's own bookkeeping (``memory.simulated_versions``) fits; that is the
  ``predicted_memory_bytes`` of the plan (a bound); ``extra["expected_memory_bytes"]`` is the
  footprint expected at the planned arrival interval. A fixed order keeps R monotone in the budget.
* A budget below every candidate raises :class:`BudgetTooSmall` naming the minimum in bytes and
  MiB. Devices: stage j on ``cuda:(j mod ngpu)`` when GPUs exist, else ``cpu``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

import structlog

from ferretd.engine.plan import Plan, WorkerPlan
from ferretd.planner.memory import MemoryParams, expected_versions, plan_versions, predict_memory
from ferretd.planner.profile import Profile
from ferretd.planner.rate import RateParams, predict_rate

log = structlog.get_logger(__name__)


class BudgetTooSmall(ValueError):
    """No plan fits; ``minimum_bytes`` is what the smallest feasible plan needs."""

    def __init__(self, budget_bytes: int, minimum_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.minimum_bytes = minimum_bytes
        super().__init__(
            f"memory budget {budget_bytes} bytes ({budget_bytes / 2**20:.2f} MiB) is below the smallest "
            f"feasible plan, which needs {minimum_bytes} bytes ({minimum_bytes / 2**20:.2f} MiB)"
        )


@dataclass(frozen=True)
class Candidate:
    """One evaluated (partition, configuration)."""

    plan: Plan
    memory_bytes: int
    rate: float


def greedy_partition(times: list[float], cap: float) -> tuple[int, ...] | None:
    """Fewest-stage contiguous cut points with every stage time <= cap (None if a block exceeds it)."""
    cuts: list[int] = []
    acc = 0.0
    eps = cap * 1e-12
    for i, t in enumerate(times):
        if t > cap + eps:
            return None
        if acc + t > cap + eps:
            cuts.append(i)
            acc = 0.0
        acc += t
    return tuple(cuts)


def enumerate_partitions(times: list[float], max_stages: int) -> list[tuple[int, ...]]:
    """Distinct greedy partitions over every segment-time cap, single stage first."""
    n = len(times)
    caps = sorted({sum(times[i:j]) for i in range(n) for j in range(i + 1, n + 1)}, reverse=True)
    seen: dict[tuple[int, ...], None] = {}
    for cap in caps:
        cuts = greedy_partition(times, cap)
        if cuts is None:
            break
        if len(cuts) + 1 <= max_stages:
            seen.setdefault(cuts, None)
    return list(seen)


class PlanSearch:
    """Search over partitions and configurations for one profile and stream."""

    def __init__(
        self,
        profile: Profile,
        rate_params: RateParams,
        memory_params: MemoryParams | None = None,
        *,
        max_workers: int = 4,
        max_stages: int = 4,
        num_gpus: int = 0,
    ) -> None:
        self.profile = profile
        self.rate_params = rate_params
        self.memory_params = memory_params or MemoryParams()
        self.max_workers = max_workers
        self.max_stages = max_stages
        self.num_gpus = num_gpus
        self._paths: dict[tuple[int, ...], list[Candidate]] = {}
        self._exact: dict[str, int] = {}

    # ---------------------------------------------------------------- pieces

    @cached_property
    def partitions(self) -> list[tuple[int, ...]]:
        times = [b.forward_s + b.backward_s for b in self.profile.blocks]
        return enumerate_partitions(times, self.max_stages)

    @property
    def initial_workers(self) -> int:
        per_mb = self.profile.total_time_s
        tau = self.profile.microbatch * self.rate_params.arrival_interval_s
        return max(1, min(self.max_workers, math.ceil(per_mb / tau - 1e-9)))

    def devices(self, stages: int) -> tuple[str, ...]:
        if self.num_gpus > 0:
            return tuple(f"cuda:{j % self.num_gpus}" for j in range(stages))
        return ("cpu",) * stages

    def evaluate(self, plan: Plan) -> Candidate:
        mem = predict_memory(self.profile, plan, self.memory_params, exact=False).total_bytes
        return Candidate(plan, mem, predict_rate(self.profile, plan, self.rate_params).rate)

    def fastest(self, partition: tuple[int, ...]) -> Plan:
        p = len(partition) + 1
        return Plan.uniform(self.profile.num_blocks, partition, self.initial_workers, devices=self.devices(p))

    # ---------------------------------------------------------------- steps

    def steps(self, plan: Plan) -> list[tuple[int, Plan]]:
        """Every single-knob memory step from ``plan``, tagged with its kind 1..4."""
        out: list[tuple[int, Plan]] = []
        p = plan.num_stages
        active = plan.active_workers

        def with_worker(n: int, w: WorkerPlan) -> Plan:
            workers = list(plan.workers)
            workers[n] = w
            return replace(plan, workers=tuple(workers))

        for n in active:
            w = plan.workers[n]
            if not w.recompute:
                out.append((1, with_worker(n, replace(w, recompute=True))))
            for j in range(p):
                if w.omit[j]:
                    continue
                before = plan_versions(plan, exact=False)[j]
                for a in range(w.accumulation[j] + 1, p - j + 1):
                    acc = list(w.accumulation)
                    acc[j] = a
                    raised = with_worker(n, replace(w, accumulation=tuple(acc)))
                    if plan_versions(raised, exact=False)[j] < before:  # the next value that drops a version
                        out.append((2, raised))
                        break
                om = list(w.omit)
                om[j] = True
                out.append((3, with_worker(n, replace(w, omit=tuple(om)))))
        if len(active) > 1:
            # workers are interchangeable up to their knobs: try removing each distinct one
            seen: set[WorkerPlan] = set()
            for n in active:
                if plan.workers[n] not in seen:
                    seen.add(plan.workers[n])
                    out.append((4, with_worker(n, replace(plan.workers[n], active=False))))
        return out

    def walk(self, partition: tuple[int, ...], ordered: bool) -> list[Candidate]:
        """The greedy path from the fastest configuration until no step saves memory."""
        cur = self.evaluate(self.fastest(partition))
        path = [cur]
        while True:
            best: tuple[tuple[int, float], Candidate] | None = None
            for kind, nxt_plan in self.steps(cur.plan):
                nxt = self.evaluate(nxt_plan)
                saved = cur.memory_bytes - nxt.memory_bytes
                if saved <= 0:
                    continue
                score = ((kind if ordered else 0), (cur.rate - nxt.rate) / saved)
                if best is None or score < best[0]:
                    best = (score, nxt)
            if best is None:
                return path
            cur = best[1]
            path.append(cur)

    def path(self, partition: tuple[int, ...]) -> list[Candidate]:
        """Pooled ``ordered`` and ``global`` paths of one partition (cached)."""
        if partition not in self._paths:
            self._paths[partition] = self.walk(partition, True) + self.walk(partition, False)
        return self._paths[partition]

    def all_candidates(self) -> list[Candidate]:
        return [c for part in self.partitions for c in self.path(part)]

    def exact_bytes(self, cand: Candidate) -> int:
        """Memory with versions counted by the engine's bookkeeping (cached per plan)."""
        key = cand.plan.to_json()
        if key not in self._exact:
            self._exact[key] = predict_memory(self.profile, cand.plan, self.memory_params).total_bytes
        return self._exact[key]

    @cached_property
    def ranked(self) -> list[Candidate]:
        """Candidates best first: higher R, then less memory, then fewer stages (fixed order)."""
        unique = {c.plan.to_json(): c for c in self.all_candidates()}
        return sorted(unique.values(), key=lambda c: (-c.rate, c.memory_bytes, c.plan.num_stages, c.plan.to_json()))

    @cached_property
    def minimum_bytes(self) -> int:
        return min(self.exact_bytes(c) for c in self.ranked)

    # ---------------------------------------------------------------- answer

    def best(self, budget_bytes: int) -> Plan:
        """The first candidate in :attr:`ranked` whose exact memory fits; raises BudgetTooSmall."""
        for cand in self.ranked:
            memory = self.exact_bytes(cand)
            if memory <= budget_bytes:
                break
        else:
            raise BudgetTooSmall(budget_bytes, self.minimum_bytes)
        log.info(
            "plan chosen",
            stages=cand.plan.num_stages,
            workers=len(cand.plan.active_workers),
            memory=memory,
            rate=round(cand.rate, 6),
            budget=budget_bytes,
        )
        expected = predict_memory(
            self.profile,
            cand.plan,
            self.memory_params,
            versions=expected_versions(self.profile, cand.plan, self.rate_params.arrival_interval_s),
        ).total_bytes
        return replace(
            cand.plan,
            predicted_memory_bytes=memory,
            predicted_rate=cand.rate,
            budget_bytes=budget_bytes,
            extra={**cand.plan.extra, "expected_memory_bytes": expected},
        )


def search(
    profile: Profile,
    budget_bytes: int,
    rate_params: RateParams,
    memory_params: MemoryParams | None = None,
    *,
    max_workers: int = 4,
    max_stages: int = 4,
    num_gpus: int = 0,
) -> Plan:
    """One-shot search (build a :class:`PlanSearch` to reuse paths across budgets)."""
    return PlanSearch(
        profile, rate_params, memory_params, max_workers=max_workers, max_stages=max_stages, num_gpus=num_gpus
    ).best(budget_bytes)
