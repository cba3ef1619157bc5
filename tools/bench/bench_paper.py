"""The Ferret paper's section-5 comparison on real streams, on the virtual clock (exactly reproducible).

For every stream (digits iid, digits class-split, sp500 with natural drift; see tools/streams.py),
load level (arrival interval ``t_d = t_seq / load``, load 1x / 2x / 4x the sequential per-sample
time) and seed (0, 1, 2: weight init and, for digits, the stream order), run:

* stream baselines: Oracle, 1-Skip, Random-N, Last-N, Camel (buffer B=16, N=4);
* pipelines: GPipe, DAPPLE (1F1B flush), PipeDream, PipeDream-2BW, Ferret at minimal / medium /
  unconstrained memory, Ferret planned at each competitor's memory (equal memory), and a Ferret
  budget sweep (the accuracy-memory curve);
* compensation none / step_aware / gap_aware / fisher / iter_fisher on the Ferret
  (unconstrained) plan; OCL vanilla / ER on the same plan (at 4x only in quick mode).

Metrics: online accuracy (test-then-train), held-out test accuracy at the end, the planner's
predicted memory (all strategies, one formula; engine runs also report measured peak version
bytes), agm / tagm against 1-Skip and DAPPLE, mean and spread (population std) over the seeds;
NoChange and majority-class accuracy of every stream beside them. How strategies, costs and
memory are modelled: tools/bench/paper/plans.py and runners.py. Report and plots: report.py.

Run alone: ``.venv/bin/python tools/bench/run_all.py --quick --only paper``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import structlog
import torch
from tqdm import tqdm

from ferretd.engine.learner import PrequentialScore
from tools.bench.paper.plans import Planner, Strategy, describe, flop_profile
from tools.bench.paper.report import build_report
from tools.bench.paper.runners import RunResult, run_buffered, run_engine
from tools.streams import load_stream

SEEDS = (0, 1, 2)
LOADS = (1, 2, 4)
COMPENSATIONS = ("none", "step_aware", "gap_aware", "fisher", "iter_fisher")
BUFFER, N_TRAIN = 16, 4
CURVE_POINTS = 60


def streams(quick: bool) -> list[str]:
    out = ["digits", "digits-split"]
    try:
        load_stream("sp500")
        out.append("sp500")
    except ImportError:
        print("sp500 stream skipped: the river package is not installed")
    return out


def strategies(pl: Planner) -> list[tuple[str, Strategy, str]]:
    """(group, strategy, policy) rows for one load level."""
    rows: list[tuple[str, Strategy, str]] = [
        ("stream", pl.sequential("Oracle"), "oracle"),
        ("stream", pl.sequential("1-Skip"), "skip"),
        ("stream", pl.sequential(f"Random-N (B={BUFFER}, N={N_TRAIN})", BUFFER, N_TRAIN), "random"),
        ("stream", pl.sequential(f"Last-N (B={BUFFER}, N={N_TRAIN})", BUFFER, N_TRAIN), "last"),
        ("stream", pl.sequential(f"Camel (B={BUFFER}, N={N_TRAIN})", BUFFER, N_TRAIN), "camel"),
        ("pipeline", pl.flush("GPipe", one_f_one_b=False), "flush"),
        ("pipeline", pl.flush("DAPPLE", one_f_one_b=True), "flush"),
        ("pipeline", pl.pipedream(), "engine"),
        ("pipeline", pl.pipedream_2bw(), "engine"),
    ]
    rows += [("pipeline", s, "engine") for s in pl.ferret_levels()]
    competitors = [s for g, s, _ in rows if g == "pipeline" and not s.name.startswith("Ferret")]
    for comp in competitors:
        if comp.memory_bytes >= pl.search.minimum_bytes:
            rows.append(("equal-memory", pl.ferret(comp.memory_bytes, f"Ferret @ M({comp.name})"), "engine"))
    low = pl.search.minimum_bytes
    high = next(s for _, s, _ in rows if s.name == "Ferret (unconstrained)").memory_bytes
    for k in range(5):
        budget = int(low * (high / low) ** (k / 4))
        rows.append(("sweep", pl.ferret(budget, f"Ferret sweep {k}"), "engine"))
    return rows


def baselines(name: str) -> dict[str, Any]:
    out: dict[str, list[float]] = {"nochange": [], "majority": []}
    for seed in SEEDS:
        st = load_stream(name, seed)
        score = PrequentialScore()
        for y in st.y:
            score.record(-1, int(y))
        s = score.summary()
        out["nochange"].append(s["nochange_accuracy"])
        out["majority"].append(s["majority_accuracy"])
    st = load_stream(name, 0)
    info = {"samples": len(st.y), "test_samples": len(st.y_test), "classes": st.classes, "features": st.input_shape}
    return {**info, **{k: float(np.mean(v)) for k, v in out.items()}}


def curve(hits: np.ndarray) -> list[float]:
    cum = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    idx = np.linspace(0, len(hits) - 1, CURVE_POINTS).astype(int)
    return [round(float(v), 4) for v in cum[idx]]


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # planner's info logs off
    t0 = time.perf_counter()
    names = streams(quick)
    jobs: list[tuple[str, int, int, str, Strategy, str, str, str]] = []
    profiles = {}
    for name in names:
        st = load_stream(name, 0)
        prof = flop_profile(st.input_shape, st.classes)
        profiles[name] = prof
        t_seq = prof.total_time_s
        for load in LOADS:
            pl = Planner(prof, t_seq / load)
            rows = strategies(pl)
            ferret_unc = next(s for _, s, _ in rows if s.name == "Ferret (unconstrained)")
            extra_rows = []
            if not quick or load == max(LOADS):
                for comp in COMPENSATIONS[1:]:
                    mem = Planner(prof, t_seq / load, comp).memory(ferret_unc.plan)  # type: ignore[arg-type]
                    s = Strategy(f"Ferret (unconstrained) + {comp}", "engine", mem, ferret_unc.plan)
                    extra_rows.append(("compensation", s, "engine", comp, "vanilla"))
                er_mem = ferret_unc.memory_bytes + 64 * (pl.sample_bytes())
                s = Strategy("Ferret (unconstrained) + ER", "engine", er_mem, ferret_unc.plan)
                extra_rows.append(("ocl", s, "engine", "none", "er"))
            for seed in SEEDS:
                for group, s, policy in rows:
                    jobs.append((name, load, seed, group, s, policy, "none", "vanilla"))
                for group, s, policy, comp, ocl in extra_rows:
                    jobs.append((name, load, seed, group, s, policy, comp, ocl))
    cache: dict[tuple[Any, ...], RunResult] = {}
    results: list[dict[str, Any]] = []
    curves: dict[str, list[float]] = {}
    streams_cache = {(n, seed): load_stream(n, seed) for n in names for seed in SEEDS}
    for name, load, seed, group, s, policy, comp, ocl in tqdm(jobs, desc="paper bench", unit="run", mininterval=2):
        stream = streams_cache[(name, seed)]
        t_d = profiles[name].total_time_s / load
        key = (name, load, seed, s.plan.to_json() if policy == "engine" and s.plan else s.name, policy, comp, ocl)
        if key not in cache:
            if policy == "engine":
                cache[key] = run_engine(stream, s, profiles[name], t_d, seed, comp, ocl)
            else:
                cache[key] = run_buffered(stream, s, policy, t_d, seed, BUFFER)
        r = cache[key]
        if seed == 0:
            curves[f"{name}|{load}|{s.name}"] = curve(r.hits)
        results.append(
            {
                "stream": name,
                "load": load,
                "seed": seed,
                "group": group,
                "method": s.name,
                "plan": describe(s.plan) if s.plan is not None and s.kind == "engine" else s.kind,
                "memory_bytes": s.memory_bytes,
                "online_accuracy": r.online_accuracy,
                "test_accuracy": r.test_accuracy,
                "trained": r.trained,
                "dropped": r.dropped,
                "compensation": comp,
                "ocl": ocl,
                **r.extra,
            }
        )
    info = {n: baselines(n) for n in names}
    for n, prof in profiles.items():
        info[n]["t_seq_s"] = prof.total_time_s
        info[n]["param_bytes"] = prof.total_param_bytes
    seconds = time.perf_counter() - t0
    markdown, summary = build_report(results, curves, info, out_dir, quick, seconds)
    data = {
        "seeds": list(SEEDS),
        "loads": list(LOADS),
        "buffer": BUFFER,
        "n_train": N_TRAIN,
        "streams": info,
        "summary": summary,
        "runs": results,
        "curves_seed0": curves,
        "distinct_runs": len(cache),
    }
    return {"title": "Paper comparison on real streams (virtual clock)", "markdown": markdown, "data": data}
