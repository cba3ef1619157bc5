"""The engine's one code path: execute an action (F / B / U) on real tensors, and log it.

Role: both executors (runtime.py) and the replay call :meth:`PipelineCore.execute`; only *when*
actions run differs. The core owns the stages (runner + version store + single writer with the
stage's SGD momentum), the in-flight microbatches, the per-lane accumulation windows, the
action log and the per-stage statistics.

Rules (decisions written down, see also versions.py and simulate.py, which mirrors them):

* ``F`` pins the stage's current version (logged with it) and keeps it until the ``U`` that
  applies the microbatch's gradient. On an omitted lane (T3) the forward does not keep the pin;
  the stage's next update drops the microbatch's saved graph.
* ``B`` computes parameter gradients at the pinned version with ``torch.autograd.grad``. On an
  omitted lane it first checks that the version it forwarded with is still current; if not the
  backward is skipped and every upstream ``B`` of that microbatch is skipped (nothing pinned).
* ``U`` is the single writer (``writer_lock``): for every gradient in the lane's window it calls
  ``compensator.compensate(stage, grads, pinned, current, deltas)`` (staleness 0 included;
  one call per gradient, so exactly one per update when a = 1), averages the window, runs the
  out-of-place optimiser step (optim.py) and publishes the next version. A window with no
  gradient publishes nothing.
* Divergence guard (optim.DivergenceGuard): the last stage's forward checks each microbatch's
  loss; a non-finite or exploding loss marks the microbatch diverged and every stage leaves its
  gradient out of the window. ``U`` checks the new weights (finite, step not exploding); a
  refused update publishes nothing, keeps the optimiser state, and marks the window's
  microbatches diverged. A diverged sample is reported dropped with the guard's reason
  (``diverged_nonfinite`` / ``diverged_exploding``) once its lowest stage is done with it.
* Weight averaging: with ``ema_decay`` set, every published version is folded into the stage's
  :class:`~ferretd.engine.optim.WeightAverage` under the writer lock (what ``export="ema"`` serves).
* A sample is done (``on_done`` fires once) when the update of the lowest stage its backward
  reached is applied; a microbatch skipped at the last stage is reported dropped.

The log appends every entry under the stage's store lock, in the same critical section as the
decision it records (``F``: the pin; ``B``: the omission check; ``U``: the publish), so replaying
the log in order, single-threaded, reproduces every version exactly (tested under jitter).
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ferretd.compensation.base import Compensator
from ferretd.config import TrainingConfig
from ferretd.engine.learner import DoneCallback, LearnOutcome
from ferretd.engine.optim import DivergenceGuard, OptimStates, WeightAverage, optimizer_step
from ferretd.engine.plan import Plan
from ferretd.engine.schedule import Action, Lane
from ferretd.engine.stage import StageContext, StageRunner
from ferretd.engine.versions import Version, VersionStore

ExtraLoss = Callable[[Tensor, Tensor, Tensor], Tensor | None]  # (logits, y, stage-0 input x)
ExtraGrad = Callable[[Sequence[str], Sequence[Tensor]], list[Tensor | None] | None]  # OCL parameter regulariser


@dataclass(frozen=True, slots=True)
class LogEntry:
    action: Action
    pinned: tuple[int, ...]  # F/B: the version used; U: the versions of the window's gradients
    current: int  # F: = pinned; U: the version the update was applied to; B: -1
    skipped: bool = False


@dataclass
class _Micro:
    worker: int
    x: Tensor
    y: Tensor
    callbacks: list[DoneCallback | None]
    ctx: dict[int, StageContext] = field(default_factory=dict)
    acts: dict[int, Tensor] = field(default_factory=dict)
    grads: dict[int, Tensor | None] = field(default_factory=dict)
    lowest: int | None = None
    terminal: int | None = None
    applied: set[int] = field(default_factory=set)
    backward_done: bool = False
    diverged: str | None = None


@dataclass
class _Entry:
    microbatch: int
    grads: list[Tensor]
    version: Version


@dataclass
class StageState:
    runner: StageRunner
    store: VersionStore
    optim: OptimStates
    average: WeightAverage | None = None
    writer_lock: threading.Lock = field(default_factory=threading.Lock)
    omitted_ctx: set[StageContext] = field(default_factory=set)
    staleness_max: int = 0
    staleness_sum: int = 0
    staleness_n: int = 0
    updates: int = 0

    @property
    def momentum(self) -> list[Tensor | None]:
        """SGD momentum (or Adam's first moment) per parameter."""
        return [p.first for p in self.optim.params]


class PipelineCore:
    """Stages, versions, windows and the action log of one plan."""

    def __init__(
        self,
        model: nn.Sequential,
        plan: Plan,
        training: TrainingConfig,
        *,
        compensator: Compensator | None = None,
        devices: Sequence[torch.device] | None = None,
        extra_loss: ExtraLoss | None = None,
        extra_grad: ExtraGrad | None = None,
        record_inputs: bool = False,
        log_limit: int | None = None,
        guard: DivergenceGuard | None = None,
        ema_decay: float | None = None,
    ) -> None:
        blocks = list(model.children())
        if len(blocks) != plan.num_blocks:
            raise ValueError(f"plan has {plan.num_blocks} blocks, model has {len(blocks)}")
        self.plan = plan
        self.training = training
        self.compensator = compensator
        self.extra_loss = extra_loss
        self.extra_grad = extra_grad
        self.record_inputs = record_inputs
        self.guard = guard if guard is not None else DivergenceGuard.from_config(training)
        self.ema_decay = ema_decay
        self.num_stages = plan.num_stages
        devs = list(devices) if devices is not None else [torch.device(d) for d in plan.devices]
        self.stages: list[StageState] = []
        self.param_names: list[list[str]] = []
        for j, (a, b) in enumerate(plan.stage_blocks()):
            module = nn.Sequential(*[copy.deepcopy(blk) for blk in blocks[a:b]])
            runner = StageRunner(j, module, devs[j], last=j == self.num_stages - 1)
            store = VersionStore(runner.initial_tensors(), keep_deltas=compensator is not None)
            average = WeightAverage(ema_decay, store.current.tensors) if ema_decay else None
            self.stages.append(StageState(runner, store, OptimStates.empty(len(runner.names)), average))
            self.param_names.append([f"{a + int(n.split('.', 1)[0])}.{n.split('.', 1)[1]}" for n in runner.names])
        self.loss = nn.CrossEntropyLoss()
        self.lock = threading.Lock()
        self.micro: dict[int, _Micro] = {}
        self.windows: dict[Lane, list[_Entry]] = {}
        self.log: deque[LogEntry] = deque(maxlen=log_limit)
        self.inputs: dict[int, tuple[int, Tensor, Tensor]] = {}
        self.probe: Callable[..., None] | None = None
        self.skipped_backwards = 0

    # ------------------------------------------------------------------ microbatches

    def add_microbatch(self, m: int, worker: int, x: Tensor, y: Tensor, callbacks: list[DoneCallback | None]) -> None:
        with self.lock:
            self.micro[m] = _Micro(worker, x, y, callbacks)
            if self.record_inputs:
                self.inputs[m] = (worker, x, y)

    def in_flight(self) -> int:
        with self.lock:
            return len(self.micro)

    def _loss_fn(self, y: Tensor, x: Tensor) -> Callable[[Tensor], Tensor]:
        def loss_fn(logits: Tensor) -> Tensor:
            target = y.to(logits.device)
            loss = self.loss(logits, target)
            if self.extra_loss is not None:
                extra = self.extra_loss(logits, target, x)
                if extra is not None:
                    loss = loss + extra
            return loss

        return loss_fn

    # ------------------------------------------------------------------ actions

    def execute(self, action: Action) -> LogEntry:
        if action.kind == "F":
            return self._forward(action)
        if action.kind == "B":
            return self._backward(action)
        return self._update(action)

    def _log(self, entry: LogEntry) -> LogEntry:
        self.log.append(entry)
        return entry

    def abandon(self, reason: str) -> int:
        """Report every unfinished microbatch as dropped (shutdown without flush)."""
        with self.lock:
            left = [mb for mb in self.micro.values() if mb.terminal is None or mb.terminal >= 0]
            self.micro.clear()
            self.windows.clear()
        _fire([(mb.callbacks, LearnOutcome(False, reason)) for mb in left])
        return sum(len(mb.callbacks) for mb in left)

    def _lane_knobs(self, action: Action) -> tuple[bool, bool]:
        w = self.plan.workers[action.worker]
        return w.recompute, w.omit[action.stage]

    def _forward(self, a: Action) -> LogEntry:
        s, m = a.stage, a.microbatch
        st, mb = self.stages[s], self.micro[m]
        recompute, omitted = self._lane_knobs(a)
        with st.store.lock:
            version = st.store.pin()
            entry = LogEntry(a, (version.number,), version.number)
            self._log(entry)
        ctx = StageContext(version.number, version, recompute)
        x = mb.x if s == 0 else mb.acts.pop(s - 1)
        loss_fn = self._loss_fn(mb.y, mb.x) if st.runner.last else None
        out = st.runner.forward(ctx, version.tensors, x, loss_fn)
        if st.runner.last and loss_fn is not None:
            with self.lock:
                mb.diverged = self.guard.check_loss(float(out))
                if mb.diverged is not None:
                    self.guard.refused(mb.diverged)
        if omitted:
            with st.store.lock:
                st.store.unpin(version)
                ctx.version = None
                if st.store.current.number != ctx.version_number:
                    ctx.stale = True
                    ctx.release()
                else:
                    st.omitted_ctx.add(ctx)
        mb.ctx[s] = ctx
        if not st.runner.last:
            mb.acts[s] = out
        return entry

    def _backward(self, a: Action) -> LogEntry:
        s, m = a.stage, a.microbatch
        st, mb = self.stages[s], self.micro[m]
        ctx = mb.ctx.pop(s)
        grad_out = None if st.runner.last else mb.grads.pop(s + 1)
        skip = not st.runner.last and grad_out is None
        # The decision (and the log entry) happens under the store lock, so a replay in log order
        # sees exactly the versions this backward saw.
        with st.store.lock:
            if not skip and ctx.version is None:  # omitted lane: compute only at the forwarded version
                st.omitted_ctx.discard(ctx)
                ctx.version = None if ctx.stale else st.store.pin_if_current(ctx.version_number)
                skip = ctx.version is None
                if skip:
                    self.skipped_backwards += 1
            entry = self._log(LogEntry(a, (ctx.version_number,), -1, skipped=skip))
            if skip:
                st.omitted_ctx.discard(ctx)
                if ctx.version is not None:
                    st.store.unpin(ctx.version)
        if skip:
            ctx.release()
            mb.grads[s] = None
            self._skipped(m, mb, s)
            return entry
        assert ctx.version is not None
        loss_fn = self._loss_fn(mb.y, mb.x) if st.runner.last else None
        grads, grad_in = st.runner.backward(ctx, ctx.version.tensors, grad_out, loss_fn)
        if self.extra_grad is not None:  # OCL parameter regulariser (MAS), at the pinned version
            extra = self.extra_grad(self.param_names[s], ctx.version.tensors)
            if extra is not None:
                grads = [g if e is None else g + e for g, e in zip(grads, extra, strict=True)]
        if s > 0:
            mb.grads[s] = grad_in
        if self.probe is not None:
            self.probe("grad", microbatch=m, stage=s, version=ctx.version_number, grads=grads)
        with self.lock:
            self.windows.setdefault(a.lane, []).append(_Entry(m, grads, ctx.version))
            mb.lowest = s
            if s == 0:
                mb.terminal = 0
                mb.backward_done = True
        return entry

    def _skipped(self, m: int, mb: _Micro, s: int) -> None:
        fire: list[tuple[list[DoneCallback | None], LearnOutcome]] = []
        with self.lock:
            if mb.terminal is None and mb.lowest is None:
                mb.terminal = -1
                fire.append((mb.callbacks, LearnOutcome(False, "omitted: stale at the last stage")))
            elif mb.terminal is None:
                mb.terminal = mb.lowest
            if s == 0:
                mb.backward_done = True
            fire += self._settle(m, mb)
        _fire(fire)

    def _settle(self, m: int, mb: _Micro) -> list[tuple[list[DoneCallback | None], LearnOutcome]]:
        """Call with ``self.lock`` held: the outcome to report, and forget finished microbatches."""
        out = []
        if mb.terminal is not None and mb.terminal >= 0 and mb.terminal in mb.applied:
            out.append((mb.callbacks, LearnOutcome(mb.diverged is None, mb.diverged or "")))
            mb.terminal = -2
        if mb.backward_done and mb.terminal is not None and mb.terminal < 0:
            self.micro.pop(m, None)
        return out

    def _update(self, a: Action) -> LogEntry:
        s = a.stage
        st = self.stages[s]
        with self.lock:
            entries = self.windows.pop(a.lane, [])
            flagged = {e.microbatch for e in entries if (mb := self.micro.get(e.microbatch)) and mb.diverged}
        if not entries:
            return self._log(LogEntry(a, (), -1, skipped=True))
        with st.writer_lock:
            cur = st.store.current
            kept = [e for e in entries if e.microbatch not in flagged]
            refused: str | None = None
            new: tuple[Tensor, ...] | None = None
            if kept:
                new, optim = self._step(s, st, cur, kept)
                refused = self.guard.check_update(cur.tensors, new)
                if refused is not None:
                    self.guard.refused(refused)
            with st.store.lock:
                for e in entries:
                    st.store.unpin(e.version)
                if new is None or refused is not None:
                    entry = self._log(LogEntry(a, tuple(e.version.number for e in entries), cur.number, skipped=True))
                    version = None
                else:
                    version = st.store.publish(new)
                    entry = LogEntry(a, tuple(e.version.number for e in entries), cur.number)
                    self._log(entry)
                    for ctx in [c for c in st.omitted_ctx if c.version_number != version.number]:
                        ctx.stale = True
                        ctx.release()
                        st.omitted_ctx.discard(ctx)
            if version is not None:
                st.optim = optim
                if st.average is not None:
                    st.average.update(version.tensors)
                st.updates += 1
        if self.probe is not None and version is not None:
            self.probe("publish", stage=s, version=version.number, tensors=version.tensors)
        fire = []
        with self.lock:
            for e in entries:
                mb = self.micro.get(e.microbatch)
                if mb is not None:
                    if refused is not None and mb.diverged is None:
                        mb.diverged = refused
                    mb.applied.add(s)
                    fire += self._settle(e.microbatch, mb)
        _fire(fire)
        return entry

    def _step(
        self, s: int, st: StageState, cur: Version, entries: list[_Entry]
    ) -> tuple[tuple[Tensor, ...], OptimStates]:
        """Compensate and average the window's gradients; the optimiser's new weights and state."""
        applied: list[list[Tensor]] = []
        for e in entries:
            tau = cur.number - e.version.number
            st.staleness_max = max(st.staleness_max, tau)
            st.staleness_sum += tau
            st.staleness_n += 1
            if self.compensator is None:
                applied.append(e.grads)
            else:
                deltas = st.store.deltas_since(e.version.number)
                applied.append(self.compensator.compensate(s, e.grads, e.version.tensors, cur.tensors, deltas))
        if len(applied) == 1:
            total = applied[0]
        else:
            total = [torch.stack(gs).sum(0) / len(gs) for gs in zip(*applied, strict=True)]
        return optimizer_step(cur.tensors, total, st.optim, self.training)

    # ------------------------------------------------------------------ model views

    def current_tensors(self) -> list[tuple[Tensor, ...]]:
        return [st.store.current.tensors for st in self.stages]

    def predict(self, x: Tensor) -> Tensor:
        versions = self.current_tensors()
        for st, tensors in zip(self.stages, versions, strict=True):
            x = st.runner.predict(tensors, x)
        return x

    def full_state(self) -> dict[str, Tensor]:
        """Current weights under the full model's parameter names (on the CPU)."""
        return self.snapshot()[0]

    def momentum_state(self) -> dict[str, Tensor]:
        return self.snapshot()[1]

    def snapshot(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Weights and momentum of every stage's current version, each stage read under its writer lock."""
        weights, optim = self.learning_state()[:2]
        momentum = {n: e["first"] for n, e in optim.items() if "first" in e}
        return weights, momentum

    def learning_state(self) -> tuple[dict[str, Tensor], dict[str, dict[str, Any]], dict[str, Tensor] | None]:
        """Weights, optimiser state and averaged weights (None when off) by full parameter name."""
        weights: dict[str, Tensor] = {}
        optim: dict[str, dict[str, Any]] = {}
        average: dict[str, Tensor] | None = {} if self.ema_decay else None
        for names, st in zip(self.param_names, self.stages, strict=True):
            with st.writer_lock:
                tensors = st.store.current.tensors
                weights.update({n: t.detach().cpu().clone() for n, t in zip(names, tensors, strict=True)})
                optim.update(st.optim.to_dict(names))
                if average is not None and st.average is not None:
                    pairs = zip(names, st.average.tensors, strict=True)
                    average.update({n: t.detach().cpu().clone() for n, t in pairs})
        return weights, optim, average

    def averaged_count(self) -> int:
        return min((st.average.count for st in self.stages if st.average is not None), default=0)

    def load_state(
        self,
        weights: dict[str, Tensor],
        momentum: dict[str, Tensor],
        optim: dict[str, dict[str, Any]] | None = None,
        average: dict[str, Tensor] | None = None,
        average_count: int = 0,
    ) -> None:
        """Install weights and optimiser state (``optim``, else SGD ``momentum``) by full name."""
        saved = optim if optim is not None else {n: {"first": t} for n, t in momentum.items()}
        for names, st in zip(self.param_names, self.stages, strict=True):
            dev = st.runner.device
            st.store.reset(tuple(weights[n].to(dev) for n in names))
            st.optim = OptimStates.from_dict(names, saved, dev)
            if st.average is not None:
                have = average is not None and all(n in average for n in names)
                src = [average[n].to(dev) for n in names] if have and average is not None else st.store.current.tensors
                st.average.reset(src, average_count if have else 0)

    def stats(self) -> list[dict[str, Any]]:
        return [
            {
                "stage": j,
                "device": str(st.runner.device),
                "version": st.store.current.number,
                "updates": st.updates,
                "max_staleness": st.staleness_max,
                "mean_staleness": st.staleness_sum / st.staleness_n if st.staleness_n else 0.0,
                "live_versions": st.store.live_versions(),
                "max_live_versions": st.store.max_live,
                "version_bytes": st.store.bytes_held(),
                "optimizer_bytes": st.optim.nbytes(),
            }
            for j, st in enumerate(self.stages)
        ]


def _fire(items: list[tuple[list[DoneCallback | None], LearnOutcome]]) -> None:
    for callbacks, outcome in items:
        for cb in callbacks:
            if cb is not None:
                cb(outcome)
