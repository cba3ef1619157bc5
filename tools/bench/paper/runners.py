"""Run one strategy over one stream on the virtual clock: prequential hits, drops, test accuracy, memory.

The stream is cut into microbatches of ``MICROBATCH`` images; microbatch ``i`` arrives at virtual
time ``i x t_d`` and each of its images is predicted by the weights current at that time
(test-then-train); images never trained on still count in online accuracy.

**One rule for combining several microbatches into one update, for every strategy: the gradients
are summed** (each microbatch's loss is the mean over its images; a step or accumulation window
of k microbatches adds k of them), as the method's accumulation does. The engine is told so via
its ``PipelineCore.window_reduce = "sum"`` option (the product default stays "mean").

* :func:`run_buffered` - Oracle, 1-Skip, Random-N, Last-N, Camel and the synchronous flush
  pipelines (GPipe, DAPPLE). One model; a training step on k microbatches starts when the learner
  is free, costs ``strategy.step_s[k-1]`` virtual seconds and its update becomes visible at its
  end; it computes ``strategy.parallel`` microbatches at once (one per device) and accumulates the
  rest sequentially. Oracle trains each microbatch at its arrival at zero cost. 1-Skip drops what arrives while
  busy. The others keep the last B arrivals (copies; older ones are dropped) and, when free,
  train on up to N of them: Random-N a seeded random choice, Last-N the newest, GPipe / DAPPLE the
  newest G (one flush), and **Camel** (our simplified variant of its coreset selection): the N
  buffered microbatches that were most uncertain when they arrived (smallest mean top-2 softmax
  margin of the test-then-train prediction: no extra forward). Plain SGD.
* :func:`run_engine` - the async pipeline engine (PipeDream, 2BW, Ferret) via
  :class:`StreamPipeline` on the virtual executor, whose clock shares ``devices`` devices among the
  plan's lanes; admission control: an arrival goes to the next worker (round robin) whose stage-0
  lane has no forward waiting, else it is dropped (1-Skip per worker).

OCL methods take the product defaults, except that LwF and MAS refresh their reference model /
importance ``OCL_REFRESHES`` times per stream: the default period (1000 samples) is about a whole
quick stream, which would leave them inert.

``measure=True`` runs the learner's whole life (construction, stream, flush) under the
allocator recorder (:class:`ferretd.planner.profile.AllocationRecorder`): the peak of live torch
bytes above the level before it. The stream's images are allocated before; buffered copies and
everything the learner allocates count.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ferretd.config import CompensationConfig, OclConfig, TrainingConfig
from ferretd.engine.executors import ExecutorSpec
from ferretd.engine.pipeline import PipelineLearner
from ferretd.planner.profile import AllocationRecorder, Profile
from tools.bench.paper.plans import MICROBATCH, Strategy, build_model
from tools.streams import Stream

OCL_REFRESHES = 8  # LwF / MAS refresh their reference this many times per stream (default 1000 samples)


@dataclass
class RunResult:
    hits: np.ndarray
    trained: int  # images trained on
    test_accuracy: float
    allocator_peak_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def online_accuracy(self) -> float:
        return float(self.hits.mean())

    @property
    def dropped(self) -> int:
        return len(self.hits) - self.trained


def microbatches(stream: Stream) -> int:
    return len(stream.y) // MICROBATCH


def _test_accuracy(predict: Any, stream: Stream) -> float:
    with torch.no_grad():
        logits = predict(torch.as_tensor(stream.x_test, dtype=torch.float32)).float().cpu()
    return float((logits.argmax(1).numpy() == stream.y_test).mean())


def run_buffered(
    stream: Stream, strategy: Strategy, policy: str, t_d: float, seed: int, lr: float, buffer: int, *, measure: bool
) -> RunResult:
    """``policy``: oracle, skip, random, last, camel, flush (module docstring)."""
    n = microbatches(stream)
    xs = torch.as_tensor(stream.x[: n * MICROBATCH], dtype=torch.float32).reshape(n, MICROBATCH, *stream.input_shape)
    ys = torch.as_tensor(stream.y[: n * MICROBATCH]).reshape(n, MICROBATCH)
    hits = np.zeros((n, MICROBATCH), dtype=bool)
    margins = np.zeros(n)
    rng = np.random.default_rng(seed)
    trained = 0
    recorder = AllocationRecorder() if measure else nullcontext()
    with recorder:
        model = build_model(seed)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        cap = 1 if policy == "skip" else strategy.group if policy == "flush" else buffer
        waiting: deque[tuple[int, torch.Tensor]] = deque(maxlen=cap)
        pending: tuple[float, list[tuple[int, torch.Tensor]]] | None = None  # (done at, microbatches)

        def step(items: list[tuple[int, torch.Tensor]]) -> None:
            nonlocal trained
            opt.zero_grad(set_to_none=True)
            for c in range(0, len(items), strategy.parallel):  # D microbatches at once, the rest accumulate
                chunk = items[c : c + strategy.parallel]
                x = torch.cat([t for _, t in chunk])
                y = torch.cat([ys[i] for i, _ in chunk])
                (F.cross_entropy(model(x), y) * len(chunk)).backward()  # sum of per-microbatch means
            opt.step()
            trained += len(items) * MICROBATCH

        def choose() -> list[tuple[int, torch.Tensor]]:
            k = min(strategy.group, len(waiting))
            items = list(waiting)
            if policy == "random":
                pick = sorted(rng.choice(len(items), size=k, replace=False).tolist())
            elif policy == "camel":
                pick = sorted(np.argsort(margins[[i for i, _ in items]], kind="stable")[:k].tolist())
            else:  # last, flush, skip
                pick = list(range(len(items) - k, len(items)))
            chosen = [items[p] for p in pick]
            for c in chosen:
                waiting.remove(c)
            return chosen

        def start(at: float) -> None:
            nonlocal pending
            if waiting:
                chosen = choose()
                pending = (at + strategy.step_s[len(chosen) - 1], chosen)

        for i in range(n):
            t = i * t_d
            while pending is not None and pending[0] <= t:
                done, chosen = pending
                pending = None
                step(chosen)
                if policy != "skip":
                    start(done)
            with torch.no_grad():
                probs = torch.softmax(model(xs[i]), 1)
            hits[i] = (probs.argmax(1) == ys[i]).numpy()
            top2 = probs.topk(2, dim=1).values
            margins[i] = float((top2[:, 0] - top2[:, 1]).mean())
            if policy == "oracle":
                step([(i, xs[i])])
                continue
            if policy == "skip" and pending is not None:
                continue
            waiting.append((i, xs[i].clone()))
            if pending is None:
                start(t)
        while pending is not None:
            done, chosen = pending
            pending = None
            step(chosen)
            start(done)
    peak = recorder.peak if isinstance(recorder, AllocationRecorder) else None
    return RunResult(hits.reshape(-1), trained, _test_accuracy(model, stream), peak)


class StreamPipeline(PipelineLearner):
    """PipelineLearner fed whole microbatches at given times, with admission control (docstring)."""

    _rr = 0

    def advance(self, t: float) -> None:
        self.executor.clock.run(until=t)  # type: ignore[union-attr]

    def offer(self, x: np.ndarray, y: np.ndarray, at: float) -> bool:
        lanes = self.program._state  # private: which stage-0 lane has a forward waiting
        n = len(self.active)
        for k in range(n):
            w = self.active[(self._rr + k) % n]
            if not lanes[(w, 0)].f_queue:
                self._rr = (self._rr + k + 1) % n
                self._samples += len(y)
                self._buffers[w] = [(xi, int(yi), None, at) for xi, yi in zip(x, y, strict=True)]
                self._emit(w)
                return True
        return False


def run_engine(
    stream: Stream,
    strategy: Strategy,
    profile: Profile,
    t_d: float,
    seed: int,
    lr: float,
    devices: int,
    ocl: str = "vanilla",
    *,
    measure: bool,
) -> RunResult:
    from ferretd.compensation.base import make_compensator
    from ferretd.ocl.base import make_ocl

    plan = strategy.plan
    assert plan is not None
    n = microbatches(stream)
    xs = stream.x[: n * MICROBATCH].reshape(n, MICROBATCH, *stream.input_shape)
    ys = stream.y[: n * MICROBATCH].reshape(n, MICROBATCH)
    hits = np.zeros((n, MICROBATCH), dtype=bool)
    trained = 0
    recorder = AllocationRecorder() if measure else nullcontext()
    with recorder:
        comp = None
        if strategy.compensation != "none":
            cfg = CompensationConfig(method=strategy.compensation)
            comp = make_compensator(strategy.compensation, **dataclasses.asdict(cfg))
        ocl_hyper = dataclasses.asdict(OclConfig(method=ocl))
        refresh = max(MICROBATCH, len(stream.y) // OCL_REFRESHES)
        hyper = {**ocl_hyper, "seed": seed, "lr": lr, "lwf_refresh": refresh, "mas_refresh": refresh}
        ocl_method = make_ocl(ocl, **hyper)
        model = build_model(seed)
        learner = StreamPipeline(
            model,
            plan,
            TrainingConfig(lr=lr, microbatch=MICROBATCH),
            comp,
            ocl_method,
            executor=ExecutorSpec.virtual(profile.cost_table(plan.stage_blocks()), log_limit=0),
        )
        learner.core.window_reduce = "sum"
        learner.executor.clock.devices = devices  # type: ignore[union-attr]
        for i in range(n):
            t = i * t_d
            learner.advance(t)
            with torch.no_grad():
                logits = learner.core.predict(torch.as_tensor(xs[i], dtype=torch.float32))
            hits[i] = logits.argmax(1).numpy() == ys[i]
            trained += MICROBATCH * learner.offer(xs[i], ys[i], t)
        learner.flush()
    peak = recorder.peak if isinstance(recorder, AllocationRecorder) else None
    status = learner.status()
    extra = {
        "engine_version_bytes_peak": sum(st.store.max_live * st.store.current.nbytes for st in learner.core.stages),
        "max_staleness": status["max_staleness"],
        "fallbacks": sum(int(v.get("fallbacks", 0)) for v in comp.stats().values()) if comp is not None else 0,
    }
    test = _test_accuracy(learner.core.predict, stream)
    learner.close()
    return RunResult(hits.reshape(-1), trained, test, peak, extra)
