"""The rows of the paper comparison for one (load, D), and the runner that executes any of them.

Rows (group, strategy, policy):

* ``stream``: Oracle, 1-Skip, Random-N, Last-N, Camel (buffer B = ``BUFFER`` microbatches, N =
  ``N_TRAIN`` per step) - the paper's stream baselines;
* ``pipeline``: GPipe, DAPPLE (synchronous, flush), PipeDream, PipeDream-2BW (asynchronous);
* ``ferret``: Ferret with the product default compensation (iter_fisher) at minimal / medium /
  unconstrained memory; ``sweep``: more budgets between minimal and unconstrained (the curve the
  headline ratio is read from); ``equal-memory``: Ferret planned at each pipeline competitor's
  memory;
* ``nocomp``: Ferret without compensation (minimal, unconstrained, and the sweep in full mode).

Every family (the name without its memory level) has one learning rate, tuned by tuning.py.
"""

from __future__ import annotations

from typing import Any

from ferretd.planner.profile import Profile
from tools.bench.paper.plans import Planner, Strategy
from tools.bench.paper.runners import RunResult, run_buffered, run_engine
from tools.streams import Stream

BUFFER, N_TRAIN = 8, 4
FERRET, NOCOMP = "Ferret", "Ferret no-comp"


def _levels(pl: Planner, family: str, points: int) -> list[tuple[str, Strategy]]:
    """(group, strategy): minimal, medium, unconstrained, then ``points`` sweep budgets between."""
    low = pl.ferret(pl.search.minimum_bytes, f"{family} (min)", family)
    high = pl.ferret(None, f"{family} (unconstrained)", family)
    mid = pl.ferret(int((low.memory_bytes * high.memory_bytes) ** 0.5), f"{family} (medium)", family)
    rows = [("ferret" if family == FERRET else "nocomp", s) for s in (low, mid, high)]
    for k in range(1, points + 1):
        budget = int(low.memory_bytes * (high.memory_bytes / low.memory_bytes) ** (k / (points + 1)))
        rows.append(("sweep" if family == FERRET else "nocomp", pl.ferret(budget, f"{family} sweep {k}", family)))
    return rows


def strategies(profile: Profile, t_d: float, devices: int, quick: bool) -> list[tuple[str, Strategy, str]]:
    pl = Planner(profile, t_d, devices, "iter_fisher")
    pn = Planner(profile, t_d, devices, "none")
    b, n = BUFFER, N_TRAIN
    rows: list[tuple[str, Strategy, str]] = [
        ("stream", pn.sequential("Oracle"), "oracle"),
        ("stream", pn.sequential("1-Skip"), "skip"),
        ("stream", pn.sequential(f"Random-N (B={b}, N={n})", b, n), "random"),
        ("stream", pn.sequential(f"Last-N (B={b}, N={n})", b, n), "last"),
        ("stream", pn.sequential(f"Camel (B={b}, N={n})", b, n), "camel"),
        ("pipeline", pn.flush("GPipe", one_f_one_b=False), "flush"),
        ("pipeline", pn.flush("DAPPLE", one_f_one_b=True), "flush"),
        ("pipeline", pn.pipedream(), "engine"),
        ("pipeline", pn.pipedream_2bw(), "engine"),
    ]
    rows += [(g, s, "engine") for g, s in _levels(pl, FERRET, 2 if quick else 4)]
    rows += [(g, s, "engine") for g, s in _levels(pn, NOCOMP, 0 if quick else 2)]
    for group, comp, _ in list(rows):
        if group == "pipeline" and comp.memory_bytes >= pl.search.minimum_bytes:
            rows.append(("equal-memory", pl.ferret(comp.memory_bytes, f"Ferret @ M({comp.name})", FERRET), "engine"))
    return rows


def unconstrained(rows: list[tuple[str, Strategy, str]]) -> Strategy:
    return next(s for _, s, _ in rows if s.name == f"{FERRET} (unconstrained)")


def run(
    stream: Stream,
    strategy: Strategy,
    policy: str,
    profile: Profile,
    t_d: float,
    devices: int,
    seed: int,
    lr: float,
    ocl: str = "vanilla",
    *,
    measure: bool = False,
) -> RunResult:
    if policy == "engine":
        return run_engine(stream, strategy, profile, t_d, seed, lr, devices, ocl, measure=measure)
    return run_buffered(stream, strategy, policy, t_d, seed, lr, BUFFER, measure=measure)


def cache_key(strategy: Strategy, policy: str, *rest: Any) -> tuple[Any, ...]:
    """Runs that are the same computation share one result (an engine plan under two names)."""
    ident = strategy.plan.to_json() if policy == "engine" and strategy.plan is not None else strategy.name
    return (ident, policy, strategy.compensation, strategy.step_s, *rest)
