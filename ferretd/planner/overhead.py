"""The real-time engine's cost per action beyond a block's own compute, measured once and cached.

The profiler times blocks with plain torch calls. The real-time executor adds, per F/B/U
action, a hand-off between lane threads, version bookkeeping and ``functional_call``; for small
models that is most of the time, and it holds the GIL. The rate model needs it (section 6 of
``rate.py``'s docstring) to see that many lanes of a tiny model are slower than one.

Measured by running the real ``PipelineLearner`` (2 stages, 1 worker) on a model whose two blocks
are ``Linear(1, 1)``, so compute is negligible: seconds per sample / 6 actions (F, B, U at 2
stages). The median of 3 runs is cached as JSON next to the profiles, keyed by executor, Python
and torch versions. Each executor has its own (issue 12): ``realtime`` (thread lanes: dispatch
and hand-off under the GIL) and ``process`` (lanes whose F and B run in worker processes: a pipe
round trip per F and B; the compute leaves the GIL, the overhead is latency).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


def measure_action_overhead(samples: int = 300, repeats: int = 3, executor: str = "realtime") -> float:
    import numpy as np
    import torch
    from torch import nn

    from ferretd.config import TrainingConfig
    from ferretd.engine.pipeline import PipelineLearner
    from ferretd.engine.plan import Plan

    x = np.zeros(1, dtype=np.float32)
    results = []
    for _ in range(repeats):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Sequential(nn.Linear(1, 1)), nn.Sequential(nn.Linear(1, 2)))
        learner = PipelineLearner(model, Plan.uniform(2, (1,), 1), TrainingConfig(lr=1e-3), executor=executor)
        try:
            for _ in range(30):  # warm-up: threads, allocator, autograd
                learner.learn_one(x, 0)
            learner.flush(30)
            start = time.perf_counter()
            for i in range(samples):
                learner.learn_one(x, i % 2)
            learner.flush(60)
            results.append((time.perf_counter() - start) / (samples * 6))
        finally:
            learner.close()
    return statistics.median(results)


def cached_action_overhead(cache_dir: Path | None, executor: str = "realtime") -> float:
    import torch

    if cache_dir is None:
        return measure_action_overhead(executor=executor)
    kind = "" if executor == "realtime" else f"{executor}-"
    key = f"overhead-{kind}py{platform.python_version()}-torch{torch.__version__}.json".replace("+", "_")
    path = Path(cache_dir) / key
    try:
        return float(json.loads(path.read_text())["action_overhead_s"])
    except (OSError, ValueError, KeyError):
        pass
    overhead = measure_action_overhead(executor=executor)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"action_overhead_s": overhead, "measured_at": time.time()}))
    log.info("engine_overhead_measured", executor=executor, action_overhead_s=overhead, path=str(path))
    return overhead
