"""Planner models against the engine: predicted vs measured memory, predicted R vs online accuracy.

Part 1, memory (>= 10 configurations across P, N, recompute, accumulation, omission and
compensation). An MLP (64 -> 256 x 3 -> 10, microbatch 32) and the built-in conv net (8, 16, 32
channels on 1x28x28, microbatch 8-64) train on a saturating stream in the engine's virtual-clock
mode (``PipelineLearner(executor="virtual")``, costs from the planner's own profile).

The headline number is measured **at the allocator** (issue 12): the whole life of the learner
(construction, every action, flush, close) runs under the autograd profiler's allocator recording
(``planner.profile.AllocationRecorder``: every CPU alloc/free, as torch.profiler's memory events
report them), and the peak of live torch bytes plus the action log's Python
objects (``sys.getsizeof`` over the bounded log, full at the end) is compared with the planner's
expected footprint and its bound (both with ``concurrent_lanes=False``: the virtual clock runs one
action at a time). The bookkeeping instruments below only split it into components, sampled after
every action and at every saved tensor:

* weight versions (+ compensation deltas): ``sum_j store.bytes_held()``;
* activations: bytes autograd saves (``saved_tensors_hooks`` over the whole run, deduplicated
  by storage, weights excluded, released when the graph dies) plus the stage inputs kept for
  recompute and the stage outputs waiting for the next stage;
* gradient windows: bytes of gradients waiting in accumulation windows;
* fixed state, read once: stage template modules, momentum buffers, compensator tensors;
* process RSS growth (psutil) from before the learner is built to the peak (allocator noise).

The predicted total is ``predict_memory`` with versions counted by the planner (a worst case over
arrival phasings); the measured total is the peak of the dynamic parts plus the fixed state.

Part 2, adaptation rate (>= 8 configurations). ``load_digits`` (features / 16), shuffled, streamed
one sample every ``t_d`` virtual seconds (microbatch 1), prequential online accuracy from
``predict_one`` before ``learn_one``. ``t_d`` is a third of the model's forward+backward time, so a
single lane cannot keep up and the knobs matter. Spearman rank correlation between predicted R and
measured online accuracy.

Virtual-clock note: the engine's virtual executor charges a recomputing worker's backward its
extra forward (``executors._virtual``), as the planner assumes.

Run alone: ``.venv/bin/python tools/bench/run_all.py --quick --only planner``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ferretd.config import TrainingConfig
from ferretd.engine.executors import ExecutorSpec
from ferretd.engine.learner import PrequentialScore
from ferretd.engine.plan import Plan
from ferretd.models import convnet, mlp
from ferretd.planner.memory import MemoryParams, expected_memory, expected_versions, predict_memory
from ferretd.planner.profile import AllocationRecorder, Profile, Profiler
from ferretd.planner.rate import RateParams, predict_rate

MiB = 2**20


def engine_available() -> str:
    """Empty when the engine can be driven, else why not."""
    try:
        from ferretd.engine.pipeline import PipelineLearner  # noqa: F401
    except ImportError as exc:
        return f"ferretd.engine.pipeline.PipelineLearner is not available yet ({exc})"
    return ""


LOG_LIMIT = 256  # the learner's default action-log bound (pipeline.DEFAULT_LOG_LIMIT)


def make_learner(model: torch.nn.Sequential, plan: Plan, profile: Profile, t_d: float, compensation: str, lr: float):
    from ferretd.engine.pipeline import PipelineLearner

    compensator = None
    if compensation != "none":
        from ferretd.compensation.base import make_compensator

        compensator = make_compensator(compensation, lambda0=0.04, nu=1e-3, alpha=0.9, eta_lambda=0.0)
    training = TrainingConfig(lr=lr, microbatch=profile.microbatch, momentum=0.0)
    table = profile.cost_table(plan.stage_blocks())
    learner = PipelineLearner(
        model, plan, training, compensator, executor=ExecutorSpec.virtual(table, t_d=t_d, log_limit=LOG_LIMIT)
    )
    return learner


# --------------------------------------------------------------------------- memory probe


def _ptr(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


class _Held:
    __slots__ = ("__weakref__", "t")

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


class MemoryProbe:
    """Peak bytes of versions, activations and gradient windows while the engine runs."""

    def __init__(self, learner: Any) -> None:
        self.learner = learner
        self.core = learner.core
        self.saved: dict[int, int] = {}  # storage ptr -> refcount
        self.saved_bytes = 0
        self.peak: dict[str, int] = {"versions": 0, "activations": 0, "grads": 0, "dynamic": 0}
        self.proc = psutil.Process()
        self.rss_peak = 0
        clock = learner.executor.clock
        inner = clock.execute

        def execute(action: Any) -> Any:
            out = inner(action)
            self.sample()
            return out

        clock.execute = execute

    def _weight_ptrs(self) -> set[int]:
        ptrs = set()
        for st in self.core.stages:
            store = st.store
            for n in store.live_numbers():
                ptrs.update(t.untyped_storage().data_ptr() for t in store.get(n).tensors)
        return ptrs

    def pack(self, t: torch.Tensor) -> Any:
        ptr, nbytes = _ptr(t)
        if ptr in self._weight_ptrs():
            return t
        holder = _Held(t.detach())  # holding ``t`` itself would tie a saved output to its own
        # grad_fn: a C++ reference cycle that keeps never-backpropagated graphs (omission) alive
        if self.saved.get(ptr, 0) == 0:
            self.saved_bytes += nbytes
        self.saved[ptr] = self.saved.get(ptr, 0) + 1
        weakref.finalize(holder, self._release, ptr, nbytes)
        self.sample()
        return holder

    @staticmethod
    def unpack(held: Any) -> torch.Tensor:
        return held.t if isinstance(held, _Held) else held

    def _release(self, ptr: int, nbytes: int) -> None:
        self.saved[ptr] -= 1
        if self.saved[ptr] == 0:
            del self.saved[ptr]
            self.saved_bytes -= nbytes

    def sample(self) -> None:
        core = self.core
        versions = sum(st.store.bytes_held() for st in core.stages)
        extra = 0
        seen: set[int] = set(self.saved)
        for mb in list(core.micro.values()):
            tensors = [ctx.inp for ctx in mb.ctx.values() if ctx.recompute and ctx.inp is not None]
            tensors += list(mb.acts.values())
            for t in tensors:
                ptr, nbytes = _ptr(t)
                if ptr not in seen:
                    seen.add(ptr)
                    extra += nbytes
        acts = self.saved_bytes + extra
        grads = sum(t.numel() * t.element_size() for gs in list(core.waiting.values()) for t in gs)
        for k, v in (("versions", versions), ("activations", acts), ("grads", grads)):
            self.peak[k] = max(self.peak[k], v)
        self.peak["dynamic"] = max(self.peak["dynamic"], versions + acts + grads)
        self.rss_peak = max(self.rss_peak, self.proc.memory_info().rss)

    def fixed_bytes(self) -> int:
        # the learner's template holds real weights; the stage modules are on the meta device
        total = sum(p.numel() * p.element_size() for p in self.learner.template.parameters())
        for st in self.core.stages:
            total += sum(b.numel() * b.element_size() for b in st.momentum if b is not None)
        comp = self.learner.compensator
        if comp is not None:
            total += _tensor_bytes(comp.state_dict())
        return total


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


# --------------------------------------------------------------------------- part 1


MEM_SHAPE = (64,)
MEM_HIDDEN = (256, 256, 256)
MEM_MB = 32


def _log_bytes(log: Any) -> int:
    """Python bytes of the action log: the deque, its entries, actions, tuples and large ints."""
    total = sys.getsizeof(log)
    for e in log:
        total += sys.getsizeof(e) + sys.getsizeof(e.action) + sys.getsizeof(e.pinned)
        total += sum(sys.getsizeof(v) for v in (e.action.microbatch, e.current, *e.pinned) if abs(v) > 256)
    return total


CONV_SHAPE = (1, 28, 28)
CONV_CHANNELS = (8, 16, 32)


def conv_configs() -> list[tuple[str, Plan, str, int]]:
    """(name, plan, compensation, microbatch) for the conv net (L = 4 blocks)."""
    L = 4

    def uni(p: int, n: int, **kw: Any) -> Plan:
        return Plan.uniform(L, Plan.even_partition(L, p), n, **kw)

    return [
        ("conv mb8 P1 N1", uni(1, 1), "none", 8),
        ("conv mb16 P2 N1", uni(2, 1), "none", 16),
        ("conv mb32 P2 N2", uni(2, 2), "none", 32),
        ("conv mb64 P1 N1", uni(1, 1), "none", 64),
        ("conv mb64 P2 N2 recompute", uni(2, 2, recompute=True), "none", 64),
        ("conv mb64 P3 N1 omit 0,1", uni(3, 1, omit_stages=(0, 1)), "none", 64),
        ("conv mb32 P4 N1 a=2", uni(4, 1, accumulation=2), "none", 32),
        ("conv mb16 P2 N2 iter_fisher", uni(2, 2), "iter_fisher", 16),
    ]


def memory_configs() -> list[tuple[str, Plan, str]]:
    """(name, plan, compensation) over L = 4 blocks."""
    L = 4

    def uni(p: int, n: int, **kw: Any) -> Plan:
        return Plan.uniform(L, Plan.even_partition(L, p), n, **kw)

    def hetero(p: int, accs: list[tuple[int, ...]]) -> Plan:
        base = uni(p, len(accs))
        return replace(base, workers=tuple(replace(base.workers[0], accumulation=a) for a in accs))

    return [
        ("P1 N1", uni(1, 1), "none"),
        ("P2 N1", uni(2, 1), "none"),
        ("P4 N1", uni(4, 1), "none"),
        ("P2 N2", uni(2, 2), "none"),
        ("P4 N2", uni(4, 2), "none"),
        ("P4 N3", uni(4, 3), "none"),
        ("P4 N2 recompute", uni(4, 2, recompute=True), "none"),
        ("P4 N1 a=2", uni(4, 1, accumulation=2), "none"),
        ("P4 N2 a=(2,1,1,1)", hetero(4, [(2, 1, 1, 1), (2, 1, 1, 1)]), "none"),
        ("P4 N1 omit 0,1", uni(4, 1, omit_stages=(0, 1)), "none"),
        ("P4 N2 omit 0", uni(4, 2, omit_stages=(0,)), "none"),
        ("P3 N2 recompute a=2", uni(3, 2, recompute=True, accumulation=2), "none"),
        ("P4 N2 iter_fisher", uni(4, 2), "iter_fisher"),
        ("P2 N3 gap_aware", uni(2, 3), "gap_aware"),
    ]


def measure_memory(
    plan: Plan,
    compensation: str,
    profile: Profile,
    microbatches: int,
    model_fn: Any = None,
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = model_fn() if model_fn is not None else mlp(MEM_SHAPE, 10, MEM_HIDDEN)
    shape, mb = profile.input_shape, profile.microbatch
    n = len(plan.active_workers)
    fwd = [profile.stage_forward_s(a, b) for a, b in plan.stage_blocks()]
    bwd = [profile.stage_backward_s(a, b) for a, b in plan.stage_blocks()]
    service = max(f + b for f, b in zip(fwd, bwd, strict=True))
    t_d = 0.8 * service / (n * mb)  # slightly saturated: full pipelines on every worker
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((microbatches * mb, *shape)).astype(np.float32)
    ys = rng.integers(0, 10, microbatches * mb)
    rss0 = psutil.Process().memory_info().rss
    with AllocationRecorder() as rec:
        learner = make_learner(model, plan, profile, t_d, compensation, lr=0.01)
        probe = MemoryProbe(learner)
        with torch.autograd.graph.saved_tensors_hooks(probe.pack, probe.unpack):
            for x, y in zip(xs, ys, strict=True):
                learner.learn_one(x, int(y))
            learner.flush()
        fixed = probe.fixed_bytes()
        log_bytes = _log_bytes(learner.core.log)
        log_entries = len(learner.core.log)
        learner.close()
        del learner, probe.learner, probe.core
    torch_peak = rec.peak
    params = MemoryParams.for_training(0.0, compensation, log_entries=LOG_LIMIT, concurrent_lanes=False)
    bound = predict_memory(profile, plan, params)
    realtime_bound = predict_memory(profile, plan, replace(params, concurrent_lanes=True))
    # expected: the log as full as this run filled it (a long-running daemon's is full: the bound)
    filled = replace(params, log_entries=log_entries)
    pred = predict_memory(profile, plan, filled, versions=expected_versions(profile, plan, t_d))
    expected_total = expected_memory(profile, plan, filled, t_d)
    measured = torch_peak + log_bytes
    bookkeeping = probe.peak["dynamic"] + fixed
    dynamic = pred.version_bytes + pred.delta_bytes + pred.activation_bytes + pred.grad_bytes
    dynamic += pred.transit_bytes + pred.transient_bytes + pred.log_bytes
    return {
        "predicted_bytes": expected_total,
        "component_sum_bytes": pred.total_bytes,
        "bound_bytes": bound.total_bytes,
        "realtime_bound_bytes": realtime_bound.total_bytes,
        "measured_bytes": measured,
        "allocator_peak_bytes": torch_peak,
        "log_bytes": log_bytes,
        "pred_log_bytes": pred.log_bytes,
        "pred_transient_bytes": pred.transient_bytes,
        "pred_transit_bytes": pred.transit_bytes,
        "bookkeeping_bytes": bookkeeping,
        "error": (expected_total - measured) / measured,
        "component_sum_error": (pred.total_bytes - measured) / measured,
        "within_bound": measured <= bound.total_bytes,
        "pred_versions": pred.version_bytes + pred.delta_bytes,
        "meas_versions": probe.peak["versions"],
        "pred_activations": pred.activation_bytes,
        "meas_activations": probe.peak["activations"],
        "pred_grads": pred.grad_bytes,
        "meas_grads": probe.peak["grads"],
        "pred_fixed": pred.total_bytes - dynamic,
        "meas_fixed": fixed,
        "rss_growth": probe.rss_peak - rss0,
        "versions_expected": list(pred.versions),
        "versions_bound": list(bound.versions),
    }


# --------------------------------------------------------------------------- part 2


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


RATE_HIDDEN = (128, 128, 64)


def rate_configs() -> list[tuple[str, Plan]]:
    L = 4

    def uni(p: int, n: int, **kw: Any) -> Plan:
        return Plan.uniform(L, Plan.even_partition(L, p), n, **kw)

    return [
        ("P1 N1", uni(1, 1)),
        ("P1 N2", uni(1, 2)),
        ("P1 N4", uni(1, 4)),
        ("P2 N1", uni(2, 1)),
        ("P2 N2", uni(2, 2)),
        ("P4 N1", uni(4, 1)),
        ("P4 N2", uni(4, 2)),
        ("P4 N1 recompute", uni(4, 1, recompute=True)),
        ("P2 N1 recompute", uni(2, 1, recompute=True)),
        ("P4 N1 a=3", uni(4, 1, accumulation=3)),
        ("P4 N2 omit 0,1,2", uni(4, 2, omit_stages=(0, 1, 2))),
        ("P1 N1 slowed x3", uni(1, 1)),
    ]


def measure_rate(plan: Plan, profile: Profile, t_d: float, xs: np.ndarray, ys: np.ndarray) -> float:
    torch.manual_seed(0)
    model = mlp((64,), 10, RATE_HIDDEN)
    learner = make_learner(model, plan, profile, t_d, "none", lr=0.05)
    score = PrequentialScore()
    for x, y in zip(xs, ys, strict=True):
        score.record(int(np.argmax(learner.predict_one(x))), int(y))
        learner.learn_one(x, int(y))
    learner.flush()
    learner.close()
    return float(score.accuracy or 0.0)


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


# --------------------------------------------------------------------------- runner


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    title = "Planner: predicted vs measured memory, predicted adaptation rate vs online accuracy"
    why = engine_available()
    if why:
        return {"title": title, "markdown": f"**Not run:** {why}.\n", "data": {"skipped": why}}
    t0 = time.perf_counter()
    profiler = Profiler(cache_dir=Path(tempfile.gettempdir()) / "ferretd-bench-profiles", warmup=3, repeats=7)

    # part 1
    mem_profile = profiler.profile(mlp(MEM_SHAPE, 10, MEM_HIDDEN), MEM_SHAPE, MEM_MB)
    mem_rows = []
    for name, plan, comp in memory_configs():
        per_worker = (10 if quick else 30) * len(plan.active_workers)
        row = measure_memory(plan, comp, mem_profile, microbatches=per_worker)
        mem_rows.append({"config": name, "compensation": comp, **row})
    conv_profiles: dict[int, Profile] = {}
    for name, plan, comp, mb in conv_configs():
        if mb not in conv_profiles:
            conv_profiles[mb] = profiler.profile(convnet(CONV_SHAPE, 10, CONV_CHANNELS), CONV_SHAPE, mb)
        per_worker = (16 if quick else 32) * len(plan.active_workers)
        row = measure_memory(
            plan,
            comp,
            conv_profiles[mb],
            microbatches=per_worker,
            model_fn=lambda: convnet(CONV_SHAPE, 10, CONV_CHANNELS),
        )
        mem_rows.append({"config": name, "compensation": comp, **row})
    errors = [abs(r["error"]) for r in mem_rows]

    # part 2
    xs, ys = digits()
    order = np.random.default_rng(0).permutation(len(xs))
    passes = 1 if quick else 2
    xs, ys = np.concatenate([xs[order]] * passes), np.concatenate([ys[order]] * passes)
    if quick:
        xs, ys = xs[:900], ys[:900]
    rate_profile = profiler.profile(mlp((64,), 10, RATE_HIDDEN), (64,), 1)
    t_d = rate_profile.total_time_s / 3
    rate_rows = []
    for name, plan in rate_configs():
        prof = rate_profile
        if "slowed" in name:  # same plan on a 3x slower device: checks the time axis of the model
            prof = replace(
                rate_profile,
                blocks=tuple(replace(b, forward_s=3 * b.forward_s, backward_s=3 * b.backward_s) for b in prof.blocks),
            )
        pred = predict_rate(prof, plan, RateParams(arrival_interval_s=t_d))
        oacc = measure_rate(plan, prof, t_d, xs, ys)
        rate_rows.append(
            {"config": name, "predicted_rate": pred.rate, "predicted_drop": pred.drop_fraction, "oacc": oacc}
        )
    rho = spearman([r["predicted_rate"] for r in rate_rows], [r["oacc"] for r in rate_rows])

    missed = max((r["measured_bytes"] - r["bookkeeping_bytes"]) / r["measured_bytes"] for r in mem_rows)
    md = [
        f"Memory model (MLP 64-256-256-256-10 at microbatch {MEM_MB}, and the conv net 8-16-32 on 1x28x28 at "
        "microbatch 8-64; virtual clock, saturating stream), measured **at the allocator**: the peak of live "
        "torch bytes over the learner's whole life (the profiler's allocator events) plus the action log's Python "
        f"bytes. Expected vs measured |error| median {np.median(errors) * 100:.1f}%, "
        f"max {max(errors) * 100:.1f}% over {len(mem_rows)} configurations; measured <= bound in "
        f"{sum(r['within_bound'] for r in mem_rows)}/{len(mem_rows)}. 'expected' takes versions, deltas and "
        "accumulation-window gradients at their joint peak in a replay of the engine's bookkeeping "
        "(`planner.memory.expected_memory`), plus activations, tensors in transit, action temporaries "
        "(profiled at the allocator) and the log as full as the run filled it; 'bound' is what the search "
        "checks (one action at a time, as the virtual clock runs; 'real-time bound' has every lane mid-action "
        "at once); 'bookkeeping' is the old instrument (versions + saved tensors + windows + fixed state), "
        f"which missed up to {missed * 100:.0f}% "
        "of the allocator's peak.",
        "",
        "| config | comp | expected MiB | measured MiB | error | sum of peaks MiB (error) | bound MiB "
        "| real-time bound MiB | bookkeeping MiB | temporaries pred MiB | versions+deltas exp/meas MiB "
        "| activations exp/meas MiB | grads exp/meas MiB | fixed exp/meas MiB | RSS growth MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in mem_rows:
        md.append(
            f"| {r['config']} | {r['compensation']} | {r['predicted_bytes'] / MiB:.2f} "
            f"| {r['measured_bytes'] / MiB:.2f} | {r['error'] * 100:+.1f}% "
            f"| {r['component_sum_bytes'] / MiB:.2f} ({r['component_sum_error'] * 100:+.1f}%) "
            f"| {r['bound_bytes'] / MiB:.2f} | {r['realtime_bound_bytes'] / MiB:.2f} "
            f"| {r['bookkeeping_bytes'] / MiB:.2f} | {r['pred_transient_bytes'] / MiB:.2f} "
            f"| {r['pred_versions'] / MiB:.2f} / {r['meas_versions'] / MiB:.2f} "
            f"| {r['pred_activations'] / MiB:.3f} / {r['meas_activations'] / MiB:.3f} "
            f"| {r['pred_grads'] / MiB:.2f} / {r['meas_grads'] / MiB:.2f} "
            f"| {r['pred_fixed'] / MiB:.2f} / {r['meas_fixed'] / MiB:.2f} | {r['rss_growth'] / MiB:.1f} |"
        )
    md += [
        "",
        f"Adaptation rate (digits, {len(xs)} samples, MLP 64-128-128-64-10, microbatch 1, t_d = {t_d * 1e6:.0f} us "
        f"= (t_f+t_b)/3, decay 0.1 per arrival): Spearman rho(predicted R, online accuracy) = **{rho:.2f}** "
        f"over {len(rate_rows)} configurations.",
        "",
        "| config | predicted R | predicted drop share | online accuracy |",
        "|---|---|---|---|",
    ]
    for r in rate_rows:
        md.append(f"| {r['config']} | {r['predicted_rate']:.4f} | {r['predicted_drop']:.2f} | {r['oacc']:.4f} |")
    md.append("")
    md.append(f"Wall time {time.perf_counter() - t0:.0f} s ({'quick' if quick else 'full'}).")
    data = {
        "memory": mem_rows,
        "rate": rate_rows,
        "spearman": rho,
        "memory_abs_error_max": max(errors),
        "memory_abs_error_median": float(np.median(errors)),
        "t_d": t_d,
        "rate_profile": rate_profile.to_dict(),
        "memory_profile": mem_profile.to_dict(),
    }
    return {"title": title, "markdown": "\n".join(md) + "\n", "data": data}
