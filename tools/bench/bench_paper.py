"""The Ferret paper's headline, reproduced fairly: conv net on MNIST, equal devices, tuned baselines.

For both stream orders (shuffled ``mnist``, class-incremental ``mnist-ci``; data.py), load
levels 1x / 2x / 4x (microbatch interval ``t_d = t_mb / load``), device counts D = 1, 2, 4, 8
and seeds 0, 1, 2 (weights and a disjoint MNIST slice each; :func:`sizes` sets the images per
seed, 1024 quick and 1536 full, to fit about 15 and 60 minutes on a shared 2-core box), run every
row of paper/strategies.py on the virtual clock (FLOP cost model, lanes sharing the D devices),
each family at its own learning rate tuned on a separate slice with the same grid (paper/tuning.py).
One rule for every strategy: a step or accumulation window of k microbatches sums their
gradients. The OCL methods Vanilla, ER, MIR, LwF, MAS run on the Ferret (unconstrained) plan on
the class-incremental stream (quick: at D = 4 and load 2x only).

Memory: the prediction of one formula for every row (plans.py) and the allocator-measured peak of
the seed-0 run on the shuffled order (runners.py; the class-incremental rows run the same plans on
the same clock). Report and plots: paper/report.py; headline and summary: tools/bench/summary.py.

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
from tools.bench.paper import data
from tools.bench.paper.plans import CHANNELS, MICROBATCH, Strategy, describe, flop_profile
from tools.bench.paper.report import build_report
from tools.bench.paper.runners import RunResult
from tools.bench.paper.strategies import BUFFER, FERRET, N_TRAIN, cache_key, strategies, unconstrained
from tools.bench.paper.strategies import run as run_strategy
from tools.bench.paper.tuning import LR_GRID, TUNE_DEVICES, TUNE_LOAD, tune

SEEDS = (0, 1, 2)
LOADS = (1, 2, 4)
OCL_METHODS = ("vanilla", "er", "mir", "lwf", "mas")
CURVE_POINTS = 40
TEST_SAMPLES = 512


def sizes(quick: bool) -> tuple[int, tuple[int, ...]]:
    """(training images per seed, device counts)."""
    return (1024, (1, 2, 4, 8)) if quick else (1536, (1, 2, 4, 8))


def stream_info(name: str, samples: int) -> dict[str, Any]:
    acc: dict[str, list[float]] = {"nochange": [], "majority": []}
    for seed in SEEDS:
        st = data.mnist_stream(name, seed, samples, TEST_SAMPLES)
        score = PrequentialScore()
        for y in st.y:
            score.record(-1, int(y))
        s = score.summary()
        acc["nochange"].append(s["nochange_accuracy"])
        acc["majority"].append(s["majority_accuracy"])
    return {"samples": samples, "test_samples": TEST_SAMPLES, **{k: float(np.mean(v)) for k, v in acc.items()}}


def curve(hits: np.ndarray) -> list[float]:
    cum = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    idx = np.linspace(0, len(hits) - 1, CURVE_POINTS).astype(int)
    return [round(float(v), 4) for v in cum[idx]]


Job = tuple[str, int, int, int, str, Strategy, str, str]  # stream, load, D, seed, group, strategy, policy, ocl


def jobs_for(names: list[str], profile: Any, devices: tuple[int, ...], quick: bool) -> list[Job]:
    jobs: list[Job] = []
    for d in devices:
        for load in LOADS:
            rows = strategies(profile, profile.total_time_s / load, d, quick)
            for name in names:
                for seed in SEEDS:
                    jobs += [(name, load, d, seed, g, s, p, "vanilla") for g, s, p in rows]
                    if name == "mnist-ci" and (not quick or (d, load) == (TUNE_DEVICES, TUNE_LOAD)):
                        unc = unconstrained(rows)
                        jobs += [(name, load, d, seed, "ocl", unc, "engine", m) for m in OCL_METHODS[1:]]
    return jobs


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # planner's info logs off
    t0 = time.perf_counter()
    samples, devices = sizes(quick)
    names = list(data.STREAMS)
    profile = flop_profile()
    streams = {(n, s): data.mnist_stream(n, s, samples, TEST_SAMPLES) for n in names for s in SEEDS}
    tuning_streams = {n: data.mnist_stream(n, data.TUNING_SLICE, samples, TEST_SAMPLES) for n in names}
    tuned = tune(tuning_streams, profile, quick)
    t_tuned = time.perf_counter() - t0
    jobs = jobs_for(names, profile, devices, quick)
    cache: dict[tuple[Any, ...], RunResult] = {}
    measured: dict[tuple[Any, ...], int | None] = {}
    results: list[dict[str, Any]] = []
    curves: dict[str, list[float]] = {}
    for name, load, d, seed, group, s, policy, ocl in tqdm(jobs, desc="paper bench", unit="run", mininterval=5):
        lr = tuned[name][FERRET if ocl != "vanilla" else s.family]["lr"]
        t_d = profile.total_time_s / load
        if policy == "oracle":
            key: tuple[Any, ...] = ("oracle", name, seed, lr)
        else:
            key = cache_key(s, policy, name, load, d, seed, lr, ocl)
        mkey = ("oracle",) if policy == "oracle" else cache_key(s, policy, load, d, ocl)  # not order-dependent
        if key not in cache:
            measure = seed == 0 and mkey not in measured
            cache[key] = run_strategy(streams[(name, seed)], s, policy, profile, t_d, d, seed, lr, ocl, measure=measure)
            if measure:
                measured[mkey] = cache[key].allocator_peak_bytes
        r = cache[key]
        label = s.name if ocl == "vanilla" else f"{FERRET} (unconstrained) + {ocl.upper()}"
        if seed == 0:
            curves[f"{name}|{load}|{d}|{label}"] = curve(r.hits)
        results.append(
            {
                "stream": name,
                "load": load,
                "devices": d,
                "seed": seed,
                "group": group,
                "method": label,
                "family": s.family,
                "lr": lr,
                "plan": describe(s.plan) if s.plan is not None and s.kind == "engine" else s.kind,
                "compensation": s.compensation,
                "ocl": ocl,
                "memory_bytes": s.memory_bytes,
                "allocator_peak_bytes": measured.get(mkey),
                "online_accuracy": r.online_accuracy,
                "test_accuracy": r.test_accuracy,
                "dropped": r.dropped,
                **r.extra,
            }
        )
    info = {n: stream_info(n, samples) for n in names}
    settings = {
        "source": data.source(samples, TEST_SAMPLES),
        "samples_per_seed": samples,
        "microbatch": MICROBATCH,
        "channels": list(CHANNELS),
        "t_mb_s": profile.total_time_s,
        "param_bytes": profile.total_param_bytes,
        "activation_bytes_per_microbatch": sum(b.activation_bytes for b in profile.blocks),
        "seeds": list(SEEDS),
        "loads": list(LOADS),
        "devices": list(devices),
        "buffer": BUFFER,
        "n_train": N_TRAIN,
        "lr_grid": list(LR_GRID),
        "tune_load": TUNE_LOAD,
        "tune_devices": TUNE_DEVICES,
        "tuning_seconds": t_tuned,
        "quick": quick,
    }
    seconds = time.perf_counter() - t0
    markdown, summary = build_report(results, curves, info, settings, tuned, out_dir, seconds)
    payload = {
        "settings": settings,
        "streams": info,
        "tuning": tuned,
        "summary": summary,
        "runs": results,
        "curves_seed0": curves,
        "distinct_runs": len(cache),
    }
    return {"title": "Paper headline, fair reproduction (conv net on MNIST, virtual clock)", "markdown": markdown,
            "data": payload}  # fmt: skip


def rerender(out_dir: Path) -> None:
    """Rebuild paper.md's tables and the plots from the committed paper.json, without re-running."""
    import json

    data = json.loads((out_dir / "paper.json").read_text())
    md = out_dir / "paper.md"
    header = "\n\n".join(md.read_text().split("\n\n")[:2])  # title, command and machine lines
    markdown, summary = build_report(
        data["runs"], data["curves_seed0"], data["streams"], data["settings"], data["tuning"], out_dir, data["seconds"]
    )
    md.write_text(header + "\n\n" + markdown.rstrip() + "\n")
    data["summary"] = summary
    (out_dir / "paper.json").write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


if __name__ == "__main__":  # python tools/bench/bench_paper.py --rerender
    if sys.argv[1:] == ["--rerender"]:
        rerender(Path(__file__).resolve().parents[2] / "docs" / "benchmarks")
    else:
        sys.exit("run through tools/bench/run_all.py --only paper, or --rerender")
