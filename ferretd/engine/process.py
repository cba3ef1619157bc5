"""The process executor: lanes whose F and B run in worker processes, escaping the GIL.

Role: the third executor beside the virtual clock and the thread lanes (runtime.py). It is the
thread executor with one change: the *compute* of every F and B of lane (worker n, stage j) runs
in that lane's own worker process. Scheduling, version pins, the action log, accumulation
windows, compensation and the single-writer ``U`` stay in the daemon's process, in
``core.execute`` exactly as before, so the executed log replays bitwise on a plain core (tested).
CPU stages only; on CUDA the thread executor stays (kernels release the GIL there).

Decisions (issue 12, measured on the 2-core dev box):

* Weights and the version stash live in **shared memory slots**: per stage a pool of slots, each
  a full set of the stage's tensors (``share_memory_()``). The first F on a version copies it into
  a free slot (one whose version the store no longer holds); a slot is handed to a worker once,
  over its pipe (torch's fd reduction), and read in place afterwards. Versions stay immutable and
  single-writer: only the parent writes a slot, and only while no live version maps to it.
* Activations and gradients go over **plain pipes** as numpy arrays (a pipe moved an activation
  in 28 us; ``torch.multiprocessing`` queues, which copy tensors into fresh shared memory, took
  1,039 us), relayed by the parent between neighbouring stages.
* The autograd graph of an in-flight microbatch stays in the worker that ran its F (the lane's
  B goes to the same process). At the **last stage** the worker runs the backward right after the
  forward and returns both in one round trip: that B needs nothing but the F's own graph and
  pinned version, so computing it early gives the same bits; the parent hands the cached result
  to the B when the schedule reaches it (and discards it if an omitted lane skips it). When the
  parent releases a context (B done, stale omitted lane), a drop message rides on the lane's next
  command.
* Workers start from a ``forkserver`` that preloads torch (a clean single-threaded parent; a
  ``spawn`` child spends seconds importing torch, a plain ``fork`` would copy the daemon's threads'
  locks). Each worker runs one torch intra-op thread unless told otherwise.
* A worker that dies (EOF on its pipe) is **lost, not fatal**: its lanes stop, every gradient
  already in its windows is applied by the parent (U needs no worker), each of its microbatches
  that cannot finish is reported dropped (``worker_lost``) exactly once with its pins released,
  its program lanes are removed, new microbatches for it are dropped on arrival, and
  ``on_worker_lost`` lets the learner route to the remaining workers. The ledger stays whole.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import structlog
import torch
import torch.multiprocessing  # registers the shared-tensor reductions on pipes
from torch import Tensor, nn

from ferretd.engine.core import PipelineCore
from ferretd.engine.runtime import RealtimeExecutor
from ferretd.engine.schedule import Action, Lane
from ferretd.engine.stage import StageContext, StageRunner

log = structlog.get_logger(__name__)

WORKER_LOST = "worker_lost"


class WorkerLost(RuntimeError):
    """A lane's worker process is gone."""

    def __init__(self, worker: int, ctx: StageContext | None = None) -> None:
        super().__init__(f"worker {worker} process lost")
        self.worker = worker
        self.ctx = ctx


# --------------------------------------------------------------------------- worker process


def _arr(t: Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy()


def _worker_main(conn: Any, index: int, module_bytes: bytes, last: bool, threads: int) -> None:
    """Serve F / B / drop commands for one lane until the pipe closes."""
    torch.set_num_threads(threads)
    module = pickle.loads(module_bytes).to_empty(device="cpu")  # weights come from the slots
    runner = StageRunner(index, module, torch.device("cpu"), last=last)
    runner.initial_tensors()
    loss = nn.CrossEntropyLoss()
    slots: dict[int, tuple[Tensor, ...]] = {}
    ctxs: dict[int, StageContext] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        op, m, drops = msg[0], msg[1], msg[-1]
        for d in drops:
            ctxs.pop(d, None)
        try:
            if op == "slot":
                slots[m] = msg[2]
                continue
            if op == "F":
                _, _, slot, recompute, x, y, _ = msg
                ctx = StageContext(0, None, recompute)
                target = torch.from_numpy(y) if y is not None else None
                loss_fn = (lambda logits, target=target: loss(logits, target)) if last else None
                out = runner.forward(ctx, slots[slot], torch.from_numpy(x), loss_fn)
                if last:  # eager backward: one round trip for F and B (module docstring)
                    grads, grad_in = runner.backward(ctx, slots[slot], None, loss_fn)
                    conn.send(("ok", out.numpy(), [g.numpy() for g in grads], _arr(grad_in), ctx.predicted))
                    continue
                ctxs[m] = ctx
                conn.send(("ok", out.numpy()))
            elif op == "B":
                _, _, slot, grad_out, y, _ = msg
                ctx = ctxs.pop(m)
                target = torch.from_numpy(y) if y is not None else None
                loss_fn = (lambda logits, target=target: loss(logits, target)) if last else None
                g_out = torch.from_numpy(grad_out) if grad_out is not None else None
                grads, grad_in = runner.backward(ctx, slots[slot], g_out, loss_fn)
                conn.send(("ok", [g.numpy() for g in grads], _arr(grad_in)))
        except Exception as exc:  # reported to the lane, which raises it in the daemon
            conn.send(("error", repr(exc)))


# --------------------------------------------------------------------------- parent side


class _Handle:
    """Stands in for a remote graph in ``ctx.out``; dropping it tells the worker to free the graph."""

    __slots__ = ("__weakref__", "lane", "m", "owner")

    def __init__(self, owner: ProcessExecutor, lane: Lane, m: int) -> None:
        self.owner, self.lane, self.m = owner, lane, m

    def __del__(self) -> None:
        self.owner._drop(self.lane, self.m)


class _Eager:
    """A last stage's backward result, computed together with its forward."""

    __slots__ = ("grad_in", "grads")

    def __init__(self, grads: list[np.ndarray], grad_in: np.ndarray | None) -> None:
        self.grads, self.grad_in = grads, grad_in


class _SlotPool:
    """Shared-memory copies of one stage's live versions."""

    def __init__(self, core: PipelineCore, stage: int) -> None:
        self.store = core.stages[stage].store
        self.lock = threading.Lock()
        self.slots: list[tuple[Tensor, ...]] = []
        self.version_of: list[int] = []

    def slot_for(self, number: int, tensors: tuple[Tensor, ...]) -> int:
        with self.lock:
            if number in self.version_of:
                return self.version_of.index(number)
            live = set(self.store.live_numbers())
            for i, v in enumerate(self.version_of):
                if v not in live:
                    for dst, src in zip(self.slots[i], tensors, strict=True):
                        dst.copy_(src)
                    self.version_of[i] = number
                    return i
            self.slots.append(tuple(t.detach().clone().share_memory_() for t in tensors))  # type: ignore[no-untyped-call]
            self.version_of.append(number)
            return len(self.slots) - 1


class _RemoteRunner:
    """The stage's runner as ``core.execute`` sees it: F and B go to the calling lane's worker."""

    def __init__(self, owner: ProcessExecutor, runner: StageRunner, pool: _SlotPool) -> None:
        self._owner, self._runner, self._pool = owner, runner, pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)

    def forward(self, ctx: StageContext, tensors: tuple[Tensor, ...], x: Tensor, loss_fn: Any) -> Tensor:
        lane, action = self._owner._current()
        slot = self._pool.slot_for(ctx.version_number, tensors)
        y = self._owner.core.micro[action.microbatch].y.numpy() if self._runner.last else None
        try:
            reply = self._owner._call(lane, slot, ("F", action.microbatch, slot, ctx.recompute, _arr(x), y))
        except WorkerLost as lost:
            lost.ctx = ctx
            raise
        if self._runner.last:
            ctx.out = _Eager(reply[2], reply[3])  # type: ignore[assignment]
            ctx.predicted = reply[4]
        else:
            ctx.out = _Handle(self._owner, lane, action.microbatch)  # type: ignore[assignment]
        ctx.inp = None
        return torch.from_numpy(reply[1])

    def backward(
        self, ctx: StageContext, tensors: tuple[Tensor, ...], grad_out: Tensor | None, loss_fn: Any
    ) -> tuple[list[Tensor], Tensor | None]:
        if isinstance(ctx.out, _Eager):  # computed with its forward, on the same pinned version
            eager = ctx.out
            ctx.release()
            grad_in = torch.from_numpy(eager.grad_in) if eager.grad_in is not None else None
            return [torch.from_numpy(g) for g in eager.grads], grad_in
        lane, action = self._owner._current()
        slot = self._pool.slot_for(ctx.version_number, tensors)
        y = self._owner.core.micro[action.microbatch].y.numpy() if self._runner.last else None
        handle = ctx.out
        ctx.out = None  # the worker pops the graph with this B; no drop message for it
        if isinstance(handle, _Handle):
            handle.m = -1
        reply = self._owner._call(lane, slot, ("B", action.microbatch, slot, _arr(grad_out), y))
        ctx.release()
        grads = [torch.from_numpy(g) for g in reply[1]]
        return grads, torch.from_numpy(reply[2]) if reply[2] is not None else None


class ProcessExecutor(RealtimeExecutor):
    """Lanes on threads in the daemon, their F and B in one worker process per lane."""

    kind = "process"

    def __init__(
        self,
        core: PipelineCore,
        program: Any,
        *,
        threads: int = 1,
        jitter: Callable[[Action], None] | None = None,
        on_worker_lost: Callable[[int], None] | None = None,
        start_method: str = "forkserver",
    ) -> None:
        if any(st.runner.device.type != "cpu" for st in core.stages):
            raise ValueError("the process executor runs CPU stages only; use the thread executor on CUDA")
        if core.extra_loss is not None or getattr(core, "extra_grad", None) is not None:
            raise ValueError("the process executor does not run OCL losses in workers; use the thread executor")
        self.on_worker_lost = on_worker_lost
        self.lost: set[int] = set()
        self._local = threading.local()
        self._drops: dict[Lane, list[int]] = {lane: [] for lane in program.lanes}
        self._drop_lock = threading.Lock()
        self._sent: dict[Lane, set[int]] = {lane: set() for lane in program.lanes}
        ctx: Any = mp.get_context(start_method)  # typeshed's BaseContext lacks Process and Pipe
        if start_method == "forkserver":
            ctx.set_forkserver_preload(["torch", "ferretd.engine.process"])
        self._conns: dict[Lane, Any] = {}
        self.procs: dict[Lane, Any] = {}
        for lane in program.lanes:
            w, s = lane
            runner = core.stages[s].runner
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main,
                args=(child, s, pickle.dumps(runner.module), runner.last, threads),
                name=f"ferret-proc-w{w}s{s}",
                daemon=True,
            )
            proc.start()
            child.close()
            self._conns[lane], self.procs[lane] = parent, proc
        self.pools = [_SlotPool(core, s) for s in range(core.num_stages)]
        for s, st in enumerate(core.stages):
            st.runner = _RemoteRunner(self, st.runner, self.pools[s])  # type: ignore[assignment]
        self._runners = [st.runner for st in core.stages]
        super().__init__(core, program, jitter=jitter, threads=None)

    # ------------------------------------------------------------------ plumbing

    def _current(self) -> tuple[Lane, Action]:
        return self._local.lane, self._local.action

    def _drop(self, lane: Lane, m: int) -> None:
        if m >= 0:
            with self._drop_lock:
                self._drops[lane].append(m)

    def _call(self, lane: Lane, slot: int, msg: tuple[Any, ...]) -> tuple[Any, ...]:
        conn = self._conns[lane]
        with self._drop_lock:
            drops, self._drops[lane] = self._drops[lane], []
        try:
            if slot not in self._sent[lane]:
                conn.send(("slot", slot, self.pools[lane[1]].slots[slot], []))
                self._sent[lane].add(slot)
            conn.send((*msg, drops))
            reply: tuple[Any, ...] = conn.recv()
        except (EOFError, OSError) as exc:
            raise WorkerLost(lane[0]) from exc
        if reply[0] != "ok":
            raise RuntimeError(f"worker w{lane[0]}s{lane[1]} failed: {reply[1]}")
        return reply

    def submit(self, microbatch: int, worker: int, at: float = 0.0) -> None:
        if worker in self.lost:
            self._drop_microbatches({microbatch})
            return
        super().submit(microbatch, worker, at)

    # ------------------------------------------------------------------ lanes

    def _lane_runner(self, lane: Lane) -> Callable[[Action], Any]:
        """Run the action through ``core.execute`` (its F/B go to this lane's worker process); a lost
        worker ends its lanes quietly."""
        core = self.core
        local = self._local

        def run(action: Action) -> None:
            local.lane, local.action = lane, action
            try:
                core.execute(action)
            except WorkerLost as lost:
                self._lose(lost)
                raise _LaneGone from lost

        return run

    def _lane_closed(self, lane: Lane) -> bool:
        return lane[0] in self.lost

    def _lane_failed(self, lane: Lane, action: Action, exc: BaseException) -> None:
        if not (isinstance(exc, _LaneGone) or lane[0] in self.lost):
            self._fail(lane, action, exc)
            return
        with self.cond:
            self.running -= 1
            self._notify_all()
            self.cond.notify_all()

    # ------------------------------------------------------------------ losing a worker

    def _lose(self, lost: WorkerLost) -> None:
        """Degrade to the remaining workers, settling every microbatch of the lost one once."""
        w, core = lost.worker, self.core
        with self.cond:
            if w in self.lost:
                first = False
            else:
                first = True
                self.lost.add(w)
        if lost.ctx is not None and lost.ctx.version is not None:  # the F that failed had pinned
            stage = self._local.action.stage
            core.stages[stage].store.unpin(lost.ctx.version)
            lost.ctx.version = None
        if not first:
            return
        log.warning("worker_lost", worker=w, lanes=[f"w{w}s{s}" for s in range(core.num_stages)])
        for proc in (p for (pw, _), p in self.procs.items() if pw == w):
            proc.kill()
        # gradients already computed are good: apply them (U runs in this process)
        for s in range(core.num_stages):
            last = core.window_tail(w, s)
            if last is not None:
                core.execute(Action(w, s, "U", last))
        self._drop_microbatches(core.microbatches_of(w))
        with self.cond:
            self.program.remove_worker(w)
            self._notify_all()
            self.cond.notify_all()
        if self.on_worker_lost is not None:
            self.on_worker_lost(w)

    def _drop_microbatches(self, ids: set[int]) -> None:
        self.core.drop_microbatches(ids, WORKER_LOST)

    def close(self) -> None:
        super().close()
        for conn in self._conns.values():
            conn.close()
        for proc in self.procs.values():
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        for st, runner in zip(self.core.stages, self._runners, strict=True):
            if isinstance(runner, _RemoteRunner):
                st.runner = runner._runner


class _LaneGone(Exception):
    """Internal: the lane's worker was lost and handled; the lane thread ends."""
