"""Each daemon alone on the box, one after the other: does a second lane pay when nothing else runs?

bench_realtime runs the two daemons side by side (each gets about half of a 2-core box); this
runs the sequential daemon, P1 N2 on threads, P1 N2 on processes and the planner's choice one at
a time on the same conv-net MNIST stream at 2x and 4x the sequential daemon's calibrated rate
(2 repetitions, medians), and prints trained/s, online accuracy and the CPU cores each used.
A diagnostic for issue 12, not part of `make bench`:

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench/realtime_alone.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.bench import bench_realtime as br

QUEUE = {"queue_capacity": 256, "overflow": "drop_oldest"}


def variants(rate: float) -> dict[str, dict[str, Any]]:
    base = {"model": br.CONV, "training": {"lr": 0.05, "microbatch": br.CONV_MB}}
    ferret = {**base, "compensation": {"method": "iter_fisher"}}
    return {
        "sequential": {**base, "pipeline": {"plan": "manual", "stages": 1, "workers": 1}},
        "P1 N2 threads": {**ferret, "pipeline": {"plan": "manual", "workers": 2, "executor": "realtime"}},
        "P1 N2 processes": {**ferret, "pipeline": {"plan": "manual", "workers": 2, "executor": "process"}},
        "auto": {
            **ferret,
            "pipeline": {"plan": "auto", "executor": "auto"},
            "planner": {"arrival_interval_s": 1.0 / rate, "max_workers": 4, "max_stages": 4},
        },
    }


def calibrate(root: Path) -> float:
    x, y, _ = br.mnist_images(1500, seed=99)
    daemon = br.Daemon("calibration", root / "calib", ingest={"queue_capacity": 8192}, **variants(1.0)["sequential"])
    try:
        start = time.monotonic()
        br.publish([daemon], x, y, 0.0)
        daemon.wait(lambda s: s["counters"]["trained"] >= len(y) - br.CONV_MB, 600, "trained")
        return len(y) / (time.monotonic() - start)
    finally:
        daemon.stop()


def one_run(name: str, sections: dict[str, Any], directory: Path, xs: Any, ys: Any, rate: float) -> dict[str, Any]:
    daemon = br.Daemon(name, directory, ingest=QUEUE, **sections)
    try:
        cpu0, start = daemon.cpu_seconds(), time.monotonic()
        br.publish([daemon], xs, ys, rate)
        status = br.summary(daemon.drained(len(ys), 600))
        elapsed = time.monotonic() - start
        return {
            "trained_per_s": status["trained"] / elapsed,
            "online_accuracy": status["online_accuracy"] or 0.0,
            "cores": (daemon.cpu_seconds() - cpu0) / elapsed,
            "plan": f"P{status['stages']} N{status['workers']}",
        }
    finally:
        daemon.stop()


def main() -> None:
    root = Path(tempfile.mkdtemp())
    seq_rate = calibrate(root)
    print(f"sequential daemon alone sustains {seq_rate:.0f} samples/s", flush=True)
    for overload in (2, 4):
        rate = overload * seq_rate
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants(rate)}
        for rep in range(2):
            xs, ys, _ = br.mnist_images(4000, seed=rep)
            for name, sections in variants(rate).items():
                directory = root / f"{name.replace(' ', '_')}-x{overload}-{rep}"
                results[name].append(one_run(name, sections, directory, xs, ys, rate))
        seq = statistics.median(r["trained_per_s"] for r in results["sequential"])
        for name, runs in results.items():
            tp = statistics.median(r["trained_per_s"] for r in runs)
            acc = statistics.median(r["online_accuracy"] for r in runs)
            cores = statistics.median(r["cores"] for r in runs)
            plans = sorted({r["plan"] for r in runs})
            print(
                f"x{overload} {name:16s} trained/s {tp:6.0f} ({tp / seq:.2f}x)  online acc {100 * acc:5.1f}%  "
                f"cores {cores:.2f}  plans {plans}",
                flush=True,
            )


if __name__ == "__main__":
    main()
