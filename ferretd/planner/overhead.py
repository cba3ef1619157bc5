"""The real-time engine's cost per action beyond a block's own compute, measured once and cached.

The profiler times blocks with plain torch calls. The real-time executor adds, per F/B/U
action, a hand-off between lane threads, version bookkeeping and ``functional_call``; for small
models that is most of the time, and it holds the GIL. The rate model needs it (section 6 of
``rate.py``'s docstring) to see that many lanes of a tiny model are slower than one.

Measured by running the real ``PipelineLearner`` (2 stages, 1 worker) on a model whose two blocks
are ``Linear(1, 1)``, so compute is negligible: seconds per sample / 6 actions (F, B, U at 2
stages), both wall time (``action_overhead_s``) and the daemon process's own CPU time
(``parent_cpu_s``, ``time.process_time``: with thread lanes all of it, with process lanes what
the parent does under its GIL - bookkeeping, pipe I/O, relaying activations). The median of 3
runs is cached as JSON next to the profiles, keyed by executor, Python and torch versions. Each
executor has its own (issue 12): ``realtime`` (thread lanes: dispatch and hand-off under the GIL)
and ``process`` (lanes whose F and B run in worker processes: a pipe round trip per F and B,
mostly latency; measured on the dev box: 0.54 ms wall of which 0.30 ms parent CPU per action,
thread lanes 0.55 ms and 0.31 ms). A cache written before ``parent_cpu_s`` existed is read with
``parent_cpu_s = action_overhead_s`` (the conservative side).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ActionCosts:
    """Per-action cost of an executor beyond compute: wall time, and the daemon's CPU under its GIL."""

    action_overhead_s: float
    parent_cpu_s: float


def measure_action_costs(samples: int = 300, repeats: int = 3, executor: str = "realtime") -> ActionCosts:
    import numpy as np
    import torch
    from torch import nn

    from ferretd.config import TrainingConfig
    from ferretd.engine.pipeline import PipelineLearner
    from ferretd.engine.plan import Plan

    x = np.zeros(1, dtype=np.float32)
    walls, cpus = [], []
    for _ in range(repeats):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Sequential(nn.Linear(1, 1)), nn.Sequential(nn.Linear(1, 2)))
        learner = PipelineLearner(model, Plan.uniform(2, (1,), 1), TrainingConfig(lr=1e-3), executor=executor)
        try:
            for _ in range(30):  # warm-up: threads, allocator, autograd
                learner.learn_one(x, 0)
            learner.flush(30)
            start, cpu = time.perf_counter(), time.process_time()
            for i in range(samples):
                learner.learn_one(x, i % 2)
            learner.flush(60)
            walls.append((time.perf_counter() - start) / (samples * 6))
            cpus.append((time.process_time() - cpu) / (samples * 6))
        finally:
            learner.close()
    return ActionCosts(statistics.median(walls), statistics.median(cpus))


def measure_action_overhead(samples: int = 300, repeats: int = 3, executor: str = "realtime") -> float:
    return measure_action_costs(samples, repeats, executor).action_overhead_s


def cached_action_costs(cache_dir: Path | None, executor: str = "realtime") -> ActionCosts:
    import torch

    if cache_dir is None:
        return measure_action_costs(executor=executor)
    kind = "" if executor == "realtime" else f"{executor}-"
    key = f"overhead-{kind}py{platform.python_version()}-torch{torch.__version__}.json".replace("+", "_")
    path = Path(cache_dir) / key
    try:
        cached = json.loads(path.read_text())
        wall = float(cached["action_overhead_s"])
        return ActionCosts(wall, float(cached.get("parent_cpu_s", wall)))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    costs = measure_action_costs(executor=executor)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**asdict(costs), "measured_at": time.time()}))
    log.info("engine_overhead_measured", executor=executor, path=str(path), **asdict(costs))
    return costs


def cached_action_overhead(cache_dir: Path | None, executor: str = "realtime") -> float:
    return cached_action_costs(cache_dir, executor).action_overhead_s
