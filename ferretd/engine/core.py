"""The engine's one code path: execute an action (F / B / U) on real tensors, and log it.

Role: every executor and the replay call :meth:`PipelineCore.execute`; only *when* actions run
differs. The core owns the stages (runner + version store + single writer with the stage's
optimiser state), the tensors of in-flight microbatches (activations, gradients, graphs), the
action log and the per-stage statistics. *Which* version a step uses, whether a backward is
omitted, what an update applies and when a sample is done are decided by the tensor-free
:class:`~ferretd.engine.bookkeeping.Bookkeeping` (shared with the dry run, simulate.py); the core
carries those decisions out on tensors:

* ``F`` pins the stage's version in the store; on an omitted lane (T3) the pin is dropped after
  the forward and the graph is kept only while the version stays current.
* ``B`` computes parameter gradients at the pinned version with ``torch.autograd.grad``, or is
  skipped when the book says so (the graph and pin are released).
* ``U`` is the single writer (``writer_lock``): for every gradient in the lane's window it calls
  ``compensator.compensate(stage, grads, pinned, current, deltas)`` (staleness 0 included;
  one call per gradient, so exactly one per update when a = 1), averages the window, runs the
  out-of-place optimiser step (optim.py) and publishes the next version.
* Divergence guard (optim.DivergenceGuard): the last stage's forward checks each microbatch's
  loss; a non-finite or exploding loss marks the microbatch diverged and every stage leaves its
  gradient out of the window. ``U`` checks the new weights (finite, step not exploding); a
  refused update publishes nothing, keeps the optimiser state, and marks the window's
  microbatches diverged, reported dropped with the guard's reason.
* Weight averaging: with ``ema_decay`` set, every published version is folded into the stage's
  :class:`~ferretd.engine.optim.WeightAverage` under the writer lock (what ``export="ema"`` serves).

The log appends every entry under the stage's store lock, in the same critical section as the
decision it records (``F``: the pin; ``B``: the omission check; ``U``: the publish), so replaying
the log in order, single-threaded, reproduces every version exactly (tested under jitter).
Lock order: ``writer_lock``, then ``lock`` or the store lock (never both), then the book's lock.
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

import torch
from torch import Tensor, nn

from ferretd.compensation.base import Compensator
from ferretd.config import TrainingConfig
from ferretd.engine.bookkeeping import Bookkeeping, Settlement
from ferretd.engine.learner import DoneCallback, LearnOutcome
from ferretd.engine.optim import DivergenceGuard, OptimStates, WeightAverage, optimizer_step
from ferretd.engine.plan import Plan
from ferretd.engine.schedule import Action
from ferretd.engine.stage import StageContext, StageRunner
from ferretd.engine.stages import StageState, StageViews
from ferretd.engine.versions import Version, VersionStore

ExtraLoss = Callable[[Tensor, Tensor, Tensor], Tensor | None]  # (logits, y, stage-0 input x)
ExtraGrad = Callable[[Sequence[str], Sequence[Tensor]], list[Tensor | None] | None]  # OCL parameter regulariser
NO_CURRENT: Final = -1  # LogEntry.current of a B and of an update that had no window to apply


@dataclass(frozen=True, slots=True)
class LogEntry:
    action: Action
    pinned: tuple[int, ...]  # F/B: the version used; U: the versions of the window's gradients
    current: int  # F: = pinned; U: the version the update was applied to; B: NO_CURRENT
    skipped: bool = False


@dataclass
class _Micro:
    """The tensors of one in-flight microbatch (its bookkeeping lives in the book)."""

    worker: int
    x: Tensor
    y: Tensor
    ctx: dict[int, StageContext] = field(default_factory=dict)
    acts: dict[int, Tensor] = field(default_factory=dict)
    grads: dict[int, Tensor | None] = field(default_factory=dict)


class PipelineCore(StageViews):
    """Stages, versions, windows and the action log of one plan."""

    window_reduce = "mean"  # "sum": an accumulation window sums its gradients (bench_paper's rule)

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
        omitted = {(w, s) for w, wk in enumerate(plan.workers) for s in range(self.num_stages) if wk.omit[s]}
        self.book = Bookkeeping(self.num_stages, omitted)
        self.lock = threading.Lock()
        self.micro: dict[int, _Micro] = {}
        self.callbacks: dict[int, list[DoneCallback | None]] = {}  # until the microbatch is reported
        self.predicted: dict[int, list[int]] = {}  # the last stage's class per row, until reported
        self.waiting: dict[tuple[int, int], list[Tensor]] = {}  # (stage, microbatch) -> gradients in a window
        self.log: deque[LogEntry] = deque(maxlen=log_limit)
        self.inputs: dict[int, tuple[int, Tensor, Tensor]] = {}
        self.probe: Callable[..., None] | None = None

    @property
    def skipped_backwards(self) -> int:
        return self.book.skipped

    @property
    def updates(self) -> list[int]:
        return list(self.book.updates)

    def restore_updates(self, counts: Sequence[int]) -> None:
        """Carry update counts over (state load, re-plan); they count published versions."""
        for s, n in enumerate(counts[: self.num_stages]):
            self.book.updates[s] = int(n)

    # ------------------------------------------------------------------ microbatches

    def add_microbatch(self, m: int, worker: int, x: Tensor, y: Tensor, callbacks: list[DoneCallback | None]) -> None:
        with self.lock:
            self.micro[m] = _Micro(worker, x, y)
            self.callbacks[m] = callbacks
            self.book.admit(m, worker)
            if self.record_inputs:
                self.inputs[m] = (worker, x, y)

    def in_flight(self) -> int:
        with self.lock:
            return len(self.micro)

    def window_tail(self, worker: int, stage: int) -> int | None:
        """The last microbatch whose gradient waits in lane (worker, stage)'s window."""
        return self.book.window_tail((worker, stage))

    def microbatches_of(self, worker: int) -> set[int]:
        with self.lock:
            return {m for m, mb in self.micro.items() if mb.worker == worker}

    def drop_microbatches(self, ids: Iterable[int], reason: str) -> None:
        """Forget ``ids`` now (their worker is gone): release their pins and graphs and report each
        one not yet reported as dropped with ``reason``."""
        ids = list(ids)
        with self.lock:
            unreported = set(self.book.drop(ids))
            for m in ids:
                mb = self.micro.pop(m, None)
                if mb is None:
                    continue
                for s, ctx in list(mb.ctx.items()):
                    if ctx.version is not None:
                        self.stages[s].store.unpin(ctx.version)
                        ctx.version = None
                    ctx.out = None
                    ctx.release()
            fire = [
                (self.callbacks.pop(m, []), LearnOutcome(False, reason), self.predicted.pop(m, None))
                for m in ids
                if m in unreported
            ]
        _fire(fire)

    def abandon(self, reason: str) -> int:
        """Report every unfinished microbatch as dropped (shutdown without flush)."""
        with self.lock:
            left = [(self.callbacks.pop(m, []), self.predicted.pop(m, None)) for m in self.book.abandon()]
            self.micro.clear()
            self.waiting.clear()
            self.predicted.clear()
        _fire([(callbacks, LearnOutcome(False, reason), predicted) for callbacks, predicted in left])
        return sum(len(callbacks) for callbacks, _ in left)

    def _loss_fn(self, y: Tensor, x: Tensor) -> Callable[[Tensor], Tensor]:
        def loss_fn(logits: Tensor) -> Tensor:
            target = y.to(logits.device)
            loss = nn.functional.cross_entropy(logits, target)  # nn.CrossEntropyLoss() without the module call
            if self.extra_loss is not None:
                extra = self.extra_loss(logits, target, x)
                if extra is not None:
                    loss = loss + extra
            return loss

        return loss_fn

    def _report(self, settled: Iterable[Settlement], finished: Iterable[int]) -> None:
        """Fire the outcomes the book settled and forget the microbatches it finished.

        A microbatch's callbacks leave with its one settlement, not with its tensors: another
        lane may finish the microbatch between the book settling it and this report."""
        with self.lock:
            fire = [
                (
                    self.callbacks.pop(s.microbatch, []),
                    LearnOutcome(s.trained, s.reason),
                    self.predicted.pop(s.microbatch, None),
                )
                for s in settled
            ]
            for m in finished:
                self.micro.pop(m, None)
        _fire(fire)

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

    def _forward(self, a: Action) -> LogEntry:
        s, m = a.stage, a.microbatch
        st, mb = self.stages[s], self.micro[m]
        recompute = self.plan.workers[a.worker].recompute
        with st.store.lock:
            version = st.store.pin()
            self.book.forward(a)
            entry = self._log(LogEntry(a, (version.number,), version.number))
        ctx = StageContext(version.number, version, recompute)
        x = mb.x if s == 0 else mb.acts.pop(s - 1)
        loss_fn = self._loss_fn(mb.y, mb.x) if st.runner.last else None
        out = st.runner.forward(ctx, version.tensors, x, loss_fn)
        if st.runner.last and loss_fn is not None:
            if ctx.predicted is not None:
                self.predicted[m] = ctx.predicted
            diverged = self.guard.check_loss(float(out))
            if diverged is not None:
                self.book.mark_diverged(m, diverged)
                self.guard.refused(diverged)
        with st.store.lock:
            still_current = self.book.forward_done(a)
            if a.lane in self.book.omitted:
                st.store.unpin(version)
                ctx.version = None
                if still_current:
                    st.omitted_ctx.add(ctx)
                else:
                    ctx.stale = True
                    ctx.release()
        mb.ctx[s] = ctx
        if not st.runner.last:
            mb.acts[s] = out
        return entry

    def _backward(self, a: Action) -> LogEntry:
        s, m = a.stage, a.microbatch
        st, mb = self.stages[s], self.micro[m]
        ctx = mb.ctx.pop(s)
        grad_out = None if st.runner.last else mb.grads.pop(s + 1)
        # The decision (and the log entry) happens under the store lock, so a replay in log order
        # sees exactly the versions this backward saw.
        with st.store.lock:
            decision = self.book.backward(a)
            st.omitted_ctx.discard(ctx)
            if decision.pin:  # omitted lane, its forwarded version still current
                ctx.version = st.store.pin_if_current(ctx.version_number)
            entry = self._log(LogEntry(a, (ctx.version_number,), NO_CURRENT, skipped=not decision.compute))
            if not decision.compute and ctx.version is not None:
                st.store.unpin(ctx.version)
        if not decision.compute:
            ctx.release()
            mb.grads[s] = None
            self._report(decision.settled, decision.finished)
            return entry
        version = ctx.version
        assert version is not None
        loss_fn = self._loss_fn(mb.y, mb.x) if st.runner.last else None
        grads, grad_in = st.runner.backward(ctx, version.tensors, grad_out, loss_fn)
        if self.extra_grad is not None:  # OCL parameter regulariser (MAS), at the pinned version
            extra = self.extra_grad(self.param_names[s], version.tensors)
            if extra is not None:
                grads = [g if e is None else g + e for g, e in zip(grads, extra, strict=True)]
        if s > 0:
            mb.grads[s] = grad_in
        if self.probe is not None:
            self.probe("grad", microbatch=m, stage=s, version=ctx.version_number, grads=grads)
        with self.lock:
            self.book.backward_done(a, ctx.version_number)
            self.waiting[(s, m)] = grads
        return entry

    def _update(self, a: Action) -> LogEntry:
        s = a.stage
        st = self.stages[s]
        with self.lock:
            entries, flagged = self.book.begin_update(a)
            grads = [self.waiting.pop((s, e.microbatch)) for e in entries]
        if not entries:
            return self._log(LogEntry(a, (), NO_CURRENT, skipped=True))
        pinned = tuple(e.version for e in entries)
        with st.writer_lock:
            cur = st.store.current
            versions = [st.store.get(v) for v in pinned]
            kept = [(g, v) for e, g, v in zip(entries, grads, versions, strict=True) if e.microbatch not in flagged]
            refused: str | None = None
            new: tuple[Tensor, ...] | None = None
            if kept:
                new, optim = self._step(s, st, cur, kept)
                refused = self.guard.check_update(cur.tensors, new)
                if refused is not None:
                    self.guard.refused(refused)
            publish = new is not None and refused is None
            with st.store.lock:
                for v in versions:
                    st.store.unpin(v)
                result = self.book.end_update(a, entries, flagged, publish=publish, refused=refused)
                version = st.store.publish(new) if publish and new is not None else None
                entry = self._log(LogEntry(a, pinned, cur.number, skipped=version is None))
                if version is not None:
                    for ctx in [c for c in st.omitted_ctx if c.version_number != version.number]:
                        ctx.stale = True
                        ctx.release()
                        st.omitted_ctx.discard(ctx)
            if version is not None:
                st.optim = optim
                if st.average is not None:
                    st.average.update(version.tensors)
        if self.probe is not None and version is not None:
            self.probe("publish", stage=s, version=version.number, tensors=version.tensors)
        self._report(result.settled, result.finished)
        return entry

    def _step(
        self, s: int, st: StageState, cur: Version, kept: list[tuple[list[Tensor], Version]]
    ) -> tuple[tuple[Tensor, ...], OptimStates]:
        """Compensate and average the window's gradients; the optimiser's new weights and state."""
        applied: list[list[Tensor]] = []
        for grads, version in kept:
            if self.compensator is None:
                applied.append(grads)
            else:
                deltas = st.store.deltas_since(version.number)
                applied.append(self.compensator.compensate(s, grads, version.tensors, cur.tensors, deltas))
        if len(applied) == 1:
            total = applied[0]
        else:
            scale = len(applied) if self.window_reduce == "mean" else 1
            total = [torch.stack(gs).sum(0) / scale for gs in zip(*applied, strict=True)]
        return optimizer_step(cur.tensors, total, st.optim, self.training)


def _fire(items: list[tuple[list[DoneCallback | None], LearnOutcome, list[int] | None]]) -> None:
    """Call each sample's callback with its outcome and, when its forward ran, its predicted class
    (an OCL method's replayed rows come after the stream's samples, so row ``i`` is sample ``i``)."""
    for callbacks, outcome, predicted in items:
        for i, cb in enumerate(callbacks):
            if cb is not None:
                cb(outcome if predicted is None else LearnOutcome(outcome.trained, outcome.reason, predicted[i]))
