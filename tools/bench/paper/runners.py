"""Run one strategy over one stream on the virtual clock: prequential hits, drops, test accuracy.

Sample ``i`` arrives at virtual time ``i x t_d`` and is predicted by the weights current at that
time (test-then-train); a sample never trained on still counts in online accuracy.

* :func:`run_buffered` - Oracle, 1-Skip, Random-N, Last-N, Camel and the synchronous flush
  pipelines (GPipe, DAPPLE). One model; a training step on k samples starts when the learner is
  free, costs ``strategy.step_s[k-1]`` virtual seconds and its update becomes visible at its end
  (the gradient is the same whether computed at start or end: nothing else updates meanwhile).
  Oracle trains each sample at its arrival with zero cost. 1-Skip drops what arrives while busy.
  The others keep the last B arrivals (older ones are dropped) and, when free, train on up to N
  of them (removed from the buffer): Random-N a seeded random choice, Last-N the newest,
  GPipe / DAPPLE the newest G (one flush), and **Camel** (our simplified variant of its coreset
  selection): the N buffered samples that were most uncertain when they arrived (smallest top-2
  softmax margin of the test-then-train prediction, so scoring costs no extra forward; the score
  is as stale as the sample). Loss: mean cross-entropy, plain SGD.
* :func:`run_engine` - the async pipeline engine (PipeDream, 2BW, Ferret) via
  :class:`StreamPipeline`, a :class:`~ferretd.engine.pipeline.PipelineLearner` on the virtual
  executor with admission control: an arrival goes to the next worker (round robin) whose
  stage-0 lane has no forward waiting; when every worker has one waiting it is dropped (1-Skip
  per worker, like the daemon's bounded queue). The engine itself never drops.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ferretd.config import CompensationConfig, TrainingConfig
from ferretd.engine.clock import cost_function
from ferretd.engine.executors import ExecutorSpec
from ferretd.engine.pipeline import PipelineLearner
from tools.bench.paper.plans import Strategy, build_model
from tools.streams import Stream

LR = 0.05


@dataclass
class RunResult:
    hits: np.ndarray
    trained: int
    test_accuracy: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def online_accuracy(self) -> float:
        return float(self.hits.mean())

    @property
    def dropped(self) -> int:
        return len(self.hits) - self.trained


def _test_accuracy(logits: torch.Tensor, y: np.ndarray) -> float:
    return float((logits.argmax(1).numpy() == y).mean())


def run_buffered(stream: Stream, strategy: Strategy, policy: str, t_d: float, seed: int, buffer: int = 16) -> RunResult:
    """``policy``: oracle, skip, random, last, camel, flush (module docstring)."""
    model = build_model(stream.input_shape, stream.classes, seed)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    rng = np.random.default_rng(seed)
    xs = torch.as_tensor(stream.x, dtype=torch.float32)
    ys = torch.as_tensor(stream.y)
    cap = 1 if policy == "skip" else strategy.group if policy == "flush" else buffer
    waiting: deque[int] = deque(maxlen=cap)
    pending: tuple[float, list[int]] | None = None  # (done at, samples)
    hits = np.zeros(len(ys), dtype=bool)
    margins = np.zeros(len(ys))
    trained = 0

    def step(idx: list[int]) -> None:
        nonlocal trained
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xs[idx]), ys[idx]).backward()
        opt.step()
        trained += len(idx)

    def choose() -> list[int]:
        k = min(strategy.group, len(waiting))
        items = list(waiting)
        if policy == "random":
            pick = sorted(rng.choice(len(items), size=k, replace=False).tolist())
        elif policy == "camel":
            pick = sorted(np.argsort(margins[items], kind="stable")[:k].tolist())
        else:  # last, flush, skip
            pick = list(range(len(items) - k, len(items)))
        chosen = [items[p] for p in pick]
        for i in chosen:
            waiting.remove(i)
        return chosen

    def start(at: float) -> None:
        nonlocal pending
        if waiting:
            idx = choose()
            pending = (at + strategy.step_s[len(idx) - 1], idx)

    for i in range(len(ys)):
        t = i * t_d
        while pending is not None and pending[0] <= t:
            done, idx = pending
            pending = None
            step(idx)
            if policy != "skip":
                start(done)
        with torch.no_grad():
            probs = torch.softmax(model(xs[i : i + 1]), 1)[0]
        hits[i] = int(probs.argmax()) == int(ys[i])
        top2 = probs.topk(2).values
        margins[i] = float(top2[0] - top2[1])
        if policy == "oracle":
            step([i])
            continue
        if policy == "skip" and pending is not None:
            continue
        waiting.append(i)
        if pending is None:
            start(t)
    while pending is not None:
        done, idx = pending
        pending = None
        step(idx)
        start(done)
    with torch.no_grad():
        test = _test_accuracy(model(torch.as_tensor(stream.x_test, dtype=torch.float32)), stream.y_test)
    return RunResult(hits, trained, test)


class StreamPipeline(PipelineLearner):
    """PipelineLearner with arrival times given per sample and admission control (docstring)."""

    _rr = 0

    def advance(self, t: float) -> None:
        self.executor.clock.run(until=t)  # type: ignore[union-attr]

    def offer(self, x: np.ndarray, y: int, at: float) -> bool:
        lanes = self.program._state  # private: which stage-0 lane has a forward waiting
        n = len(self.active)
        for k in range(n):
            w = self.active[(self._rr + k) % n]
            if not lanes[(w, 0)].f_queue:
                self._rr = (self._rr + k + 1) % n
                self._samples += 1
                self._buffers[w] = [(x, int(y), None, at)]
                self._emit(w)
                return True
        return False


def run_engine(
    stream: Stream,
    strategy: Strategy,
    profile: Any,
    t_d: float,
    seed: int,
    compensation: str = "none",
    ocl: str = "vanilla",
) -> RunResult:
    from ferretd.compensation.base import make_compensator
    from ferretd.ocl.base import make_ocl

    plan = strategy.plan
    assert plan is not None
    comp = None
    if compensation != "none":
        comp = make_compensator(compensation, **dataclasses.asdict(CompensationConfig(method=compensation)))
    ocl_method = make_ocl(ocl, replay_bytes=64 * stream.x[0].nbytes, replay_per_sample=1, seed=seed)
    table = profile.cost_table(plan.stage_blocks())
    model = build_model(stream.input_shape, stream.classes, seed)
    learner = StreamPipeline(
        model,
        plan,
        TrainingConfig(lr=LR, microbatch=1),
        comp,
        ocl_method,
        executor=ExecutorSpec.virtual(table, log_limit=0),
    )
    recompute = [n for n, w in enumerate(plan.workers) if w.recompute]
    learner.executor.clock.cost = cost_function(table, recompute_workers=recompute)  # type: ignore[union-attr]
    hits = np.zeros(len(stream.y), dtype=bool)
    trained = 0
    for i, (x, y) in enumerate(zip(stream.x, stream.y, strict=True)):
        t = i * t_d
        learner.advance(t)
        hits[i] = int(np.argmax(learner.predict_one(x))) == int(y)
        trained += learner.offer(x, int(y), t)
    learner.flush()
    logits = learner.core.predict(torch.as_tensor(stream.x_test, dtype=torch.float32)).float().cpu()
    status = learner.status()
    extra = {
        "engine_version_bytes_peak": sum(st.store.max_live * st.store.current.nbytes for st in learner.core.stages),
        "max_staleness": status["max_staleness"],
        "mean_staleness": [round(s, 3) for s in status["mean_staleness"]],
        "skipped_backwards": status["skipped_backwards"],
        "fallbacks": sum(int(v.get("fallbacks", 0)) for v in comp.stats().values()) if comp is not None else 0,
    }
    learner.close()
    return RunResult(hits, trained, _test_accuracy(logits, stream.y_test), extra)
