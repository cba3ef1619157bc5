"""PipelineLearner: the Ferret fine-grained asynchronous pipeline as an OnlineLearner.

Role: what the daemon drives. Samples are routed ``i -> active worker i mod N_active``; each
worker forms microbatches of ``training.microbatch`` samples (OCL ``augment`` / ``observe`` run
here, in the caller's thread), which enter that worker's async 1F1B pipeline
(:class:`~ferretd.engine.clock.OnlineProgram`) on the executor ``executor`` names (a kind or an
:class:`~ferretd.engine.executors.ExecutorSpec`, built by ``build_executor``; see executors.py):
``realtime`` fires ``on_done`` from a lane thread; ``virtual`` runs the clock up to each
sample's arrival inside ``learn_one``; ``process`` computes F and B in worker processes, and a
lost worker process drops to the remaining workers (``active`` shrinks); when none is left the
thread lanes take over the same core.

Devices (``devices="auto"``): a stage the plan puts on ``"cpu"``/``"auto"`` runs on
``cuda:(j mod ngpu)`` when CUDA is present; a plan naming a CUDA device is obeyed;
``devices="plan"`` uses the plan's devices as written.

``apply_plan`` drains in-flight microbatches (partial windows applied), keeps weights,
optimiser state and averaged weights (by full-model parameter name) and rebuilds stages,
program and lanes.

Normalisation (``norm``, a :class:`~ferretd.models.normalize.RunningNorm`) happens here, in the
caller's thread, before a sample enters the engine: ``learn_one`` folds the sample into the
statistics and then normalises it; ``predict_one`` only normalises. ``export_module`` returns
``Normalized(frozen norm, weights)``, the averaged weights when ``ema_decay`` is set. When the
partition changes, the compensator's per-stage state is reset (its tensors no longer match).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import structlog
import torch
from torch import Tensor, nn

from ferretd.compensation.base import Compensator
from ferretd.config import Config, TrainingConfig
from ferretd.engine.clock import OnlineProgram
from ferretd.engine.core import PipelineCore
from ferretd.engine.executors import DEFAULT_LOG_LIMIT as DEFAULT_LOG_LIMIT  # re-exported: the planner counts it
from ferretd.engine.executors import Executor, ExecutorSpec, build_executor
from ferretd.engine.learner import DoneCallback, LearnOutcome, OnlineLearner, ema_decay_for, load_extras
from ferretd.engine.optim import DivergenceGuard
from ferretd.engine.plan import Plan
from ferretd.models.normalize import RunningNorm, make_norm_for, wrap_export
from ferretd.ocl.base import OclMethod
from ferretd.ocl.view import ModelView

log = structlog.get_logger(__name__)


def resolve_devices(plan: Plan, policy: str = "auto") -> list[torch.device]:
    ngpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    out = []
    for j, name in enumerate(plan.devices):
        if policy == "auto" and name in ("cpu", "auto"):
            out.append(torch.device(f"cuda:{j % ngpu}") if ngpu else torch.device("cpu"))
        else:
            out.append(torch.device("cpu" if name == "auto" else name))
    return out


class PipelineLearner(OnlineLearner):
    """Asynchronous pipeline-parallel online learner (N workers x P stages, one shared model)."""

    kind = "pipeline"
    reports_predictions = True

    def __init__(
        self,
        model: nn.Sequential,
        plan: Plan,
        training: TrainingConfig,
        compensator: Compensator | None = None,
        ocl: OclMethod | None = None,
        executor: ExecutorSpec | str = "realtime",
        *,
        devices: str = "auto",
        norm: RunningNorm | None = None,
        ema_decay: float | None = None,
    ) -> None:
        self.spec = ExecutorSpec.of(executor)
        self.template = copy.deepcopy(model)
        self.training = training
        self.compensator = compensator
        self.ocl = ocl
        self.device_policy = devices
        self.norm = norm
        self.ema_decay = ema_decay
        self.guard = DivergenceGuard.from_config(training)
        self._samples = 0
        self._microbatches = 0
        self._buffers: dict[int, list[tuple[np.ndarray, int, DoneCallback | None, float]]] = {}
        self._build(plan, None, None)

    # ------------------------------------------------------------------ construction

    def _build(
        self,
        plan: Plan,
        weights: dict[str, Tensor] | None,
        momentum: dict[str, Tensor] | None,
        **learning: Any,
    ) -> None:
        self.plan = plan
        devs = resolve_devices(plan, self.device_policy)
        self.core = PipelineCore(
            self.template,
            plan,
            self.training,
            compensator=self.compensator,
            devices=devs,
            extra_loss=self.ocl.extra_loss if self.ocl is not None and self.ocl.uses_extra_loss else None,
            extra_grad=self.ocl.extra_grad if self.ocl is not None and self.ocl.uses_extra_grad else None,
            record_inputs=self.spec.record_inputs,
            log_limit=self.spec.log_limit,
            guard=self.guard,
            ema_decay=self.ema_decay,
        )
        if weights is not None:
            self.core.load_state(weights, momentum or {}, **learning)
        if self.ocl is not None:
            self.ocl.bind(ModelView(self.template, self.current_weights, self.training.lr))
        self.active = plan.active_workers
        acc = {(w, s): plan.workers[w].accumulation[s] for w in self.active for s in range(plan.num_stages)}
        self.program = OnlineProgram(plan.num_stages, acc)
        self.executor: Executor = build_executor(self.spec, self.core, self.program, self._worker_lost)

    def _worker_lost(self, worker: int) -> None:
        """A process worker died (called from a lane): route new samples to the others."""
        self.active = [w for w in self.active if w != worker]

    def _thread_fallback(self) -> None:
        """Every process worker is gone: thread lanes take over the same core and weights."""
        log.warning("process_workers_lost", running_on="thread lanes", workers=len(self.plan.active_workers))
        self.executor.close()
        self.active = self.plan.active_workers
        acc = {(w, s): self.plan.workers[w].accumulation[s] for w in self.active for s in range(self.plan.num_stages)}
        self.program = OnlineProgram(self.plan.num_stages, acc)
        self.executor = build_executor(
            dataclasses.replace(self.spec, kind="realtime", threads=1), self.core, self.program
        )

    def current_weights(self) -> dict[str, Tensor]:
        """Current published weights by full-model name, without a copy (versions are immutable)."""
        pairs = zip(self.core.param_names, self.core.current_tensors(), strict=True)
        return {n: t for names, tensors in pairs for n, t in zip(names, tensors, strict=True)}

    def in_flight_capacity(self) -> int:
        """Samples the engine should hold to keep every lane busy and finish without a flush.

        ``N_active x microbatch x (max(P, largest accumulation) + 1)``: a worker's pipeline holds
        P microbatches, and a sample is reported only when the accumulation window of the lowest
        stage it reaches closes, which takes ``a`` microbatches of that worker; one more per
        worker waits ready behind them, so a lane does not sit idle while the daemon's loop is
        busy elsewhere (scoring, ingest; without it, P1 N2 process lanes trained 240 samples/s of
        a 4x conv-net stream, with it 397). A caller that caps what it hands over below this must
        call ``flush`` to make progress.
        """
        plan = self.plan
        a_max = max(max(plan.workers[w].accumulation) for w in self.active)
        return len(self.active) * self.training.microbatch * (max(plan.num_stages, a_max) + 1)

    # ------------------------------------------------------------------ OnlineLearner

    @property
    def updates(self) -> int:
        return max(self.core.updates)

    def predict_one(self, x: np.ndarray) -> np.ndarray:
        if self.norm is not None:
            x = self.norm.apply(x)
        xb = torch.as_tensor(x, dtype=torch.float32).unsqueeze(0)
        logits = self.core.predict(xb)
        return torch.softmax(logits.float().cpu(), dim=1)[0].numpy()

    def predict_many(self, xs: np.ndarray) -> np.ndarray:
        batch = torch.as_tensor(np.asarray(xs), dtype=torch.float32)
        if self.norm is not None:
            with torch.no_grad():
                batch = self.norm(batch)
        logits = self.core.predict(batch)
        return torch.softmax(logits.float().cpu(), dim=1).numpy()

    def learn_one(self, x: np.ndarray, y: int, on_done: DoneCallback | None = None) -> None:
        if self.norm is not None:
            self.norm.update(x)
            x = self.norm.apply(x)
        i = self._samples
        self._samples += 1
        if not self.active:
            self._thread_fallback()
        worker = self.active[i % len(self.active)]
        buf = self._buffers.setdefault(worker, [])
        buf.append((x, int(y), on_done, i * self.spec.t_d))
        if len(buf) >= self.training.microbatch:
            self._emit(worker)

    def _emit(self, worker: int) -> None:
        buf = self._buffers.pop(worker, [])
        if not buf:
            return
        first = buf[0][0]
        if len(buf) == 1 and type(first) is np.ndarray and first.dtype == np.float32:  # a copy, as np.stack's
            x = torch.from_numpy(first[None].copy())
            y = torch.full((1,), buf[0][1], dtype=torch.long)
        else:
            x = torch.as_tensor(np.stack([b[0] for b in buf]), dtype=torch.float32)
            y = torch.as_tensor([b[1] for b in buf], dtype=torch.long)
        if self.ocl is not None:
            xt, yt = self.ocl.augment(x, y)
            self.ocl.observe(x, y)
        else:
            xt, yt = x, y
        m = self._microbatches
        self._microbatches += 1
        self.core.add_microbatch(m, worker, xt, yt, [b[2] for b in buf])
        self.executor.submit(m, worker, at=buf[-1][3])

    def flush(self, timeout: float | None = None) -> bool:
        for worker in sorted(self._buffers):
            self._emit(worker)
        return self.executor.drain(timeout)

    def export_module(self) -> nn.Module:
        module = copy.deepcopy(self.template)
        weights, _, average = self.core.learning_state()
        module.load_state_dict(average if average is not None else weights, strict=False)
        return wrap_export(module, self.norm)

    def state_dict(self) -> dict[str, Any]:
        weights, optim, average = self.core.learning_state()
        return {
            "kind": "pipeline",
            "model": weights,
            "momentum": {n: e["first"] for n, e in optim.items() if "first" in e},
            "optim": optim,
            "average": average,
            "average_count": self.core.averaged_count(),
            "normalizer": self.norm.state() if self.norm is not None else None,
            "guard": self.guard.state(),
            "compensator": self.compensator.state_dict() if self.compensator is not None else {},
            "ocl": self.ocl.state_dict() if self.ocl is not None else {},
            "updates": self.core.updates,
            "plan": self.plan.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.flush()
        self.core.load_state(
            state["model"],
            state.get("momentum", {}),
            optim=state.get("optim"),
            average=state.get("average"),
            average_count=int(state.get("average_count") or 0),
        )
        load_extras(state, self.norm, self.guard)
        if self.compensator is not None and state.get("compensator"):
            self.compensator.load_state_dict(state["compensator"])
        if self.ocl is not None and state.get("ocl"):
            self.ocl.load_state_dict(state["ocl"])
        self.core.restore_updates(state.get("updates", []))

    def apply_plan(self, plan: Plan, timeout: float | None = None) -> bool:
        """Switch to ``plan`` at a safe point: drain, keep weights and momentum, rebuild lanes."""
        if plan.num_blocks != self.plan.num_blocks:
            raise ValueError(f"plan has {plan.num_blocks} blocks, model has {self.plan.num_blocks}")
        if not self.flush(timeout):
            return False
        updates = max(self.core.updates)
        weights, optim, average = self.core.learning_state()
        count = self.core.averaged_count()
        self.executor.close()
        if self.compensator is not None and plan.partition != self.plan.partition:
            # per-stage statistics (EMAs, fitted lambdas) describe the old stages' tensors
            self.compensator.load_state_dict({"method": self.compensator.name})
        self._build(plan, weights, {}, optim=optim, average=average, average_count=count)
        self.core.restore_updates([updates] * plan.num_stages)
        return True

    def status(self) -> dict[str, Any]:
        stats = self.core.stats()
        return {
            "engine": "pipeline",
            "executor": self.executor.kind,  # what runs (process may fall back)
            "stages": self.plan.num_stages,
            "workers": len(self.active),
            "in_flight_microbatches": self.core.in_flight(),
            "skipped_backwards": self.core.skipped_backwards,
            "stage": stats,
            "max_staleness": [s["max_staleness"] for s in stats],
            "mean_staleness": [s["mean_staleness"] for s in stats],
            "live_versions": [s["live_versions"] for s in stats],
            "version_bytes": sum(s["version_bytes"] for s in stats),
            "lane_utilisation": self.executor.utilisation(),
            "compensator": self.compensator.stats() if self.compensator is not None else {},
            "ocl": self.ocl.stats() if self.ocl is not None else {},
            "guard": self.guard.stats(),
            "normalizer": self.norm.stats() if self.norm is not None else None,
        }

    @classmethod
    def from_config(cls, config: Config, plan: Plan, **kwargs: Any) -> PipelineLearner:
        """The learner a daemon config describes, for ``plan`` (e.g. ``planner.plan_for_config``).

        ``[compensation] method = "none"`` runs without a compensator (no deltas are kept);
        ``[ocl]`` picks the OCL method; ``[pipeline] executor`` the executor.
        """
        from ferretd.compensation.base import make_compensator
        from ferretd.models import build_model
        from ferretd.ocl.base import make_ocl

        comp_cfg = config.compensation
        compensator = None
        if comp_cfg.method != "none":
            compensator = make_compensator(comp_cfg.method, **dataclasses.asdict(comp_cfg))
        ocl_hyper = {**dataclasses.asdict(config.ocl), "seed": config.training.seed, "lr": config.training.lr}
        ocl = make_ocl(config.ocl.method, **ocl_hyper)
        model = build_model(config.model, seed=config.training.seed)
        executor = config.pipeline.executor
        if executor == "auto":  # the planner weighed the executors (planning.executors_for_config)
            executor = str(plan.extra.get("executor", "realtime"))
        kwargs.setdefault("executor", executor)
        kwargs.setdefault("norm", make_norm_for(config))
        kwargs.setdefault("ema_decay", ema_decay_for(config))
        return cls(model, plan, config.training, compensator=compensator, ocl=ocl, **kwargs)

    def close(self) -> None:
        self.executor.close()
        for worker in list(self._buffers):
            for _, _, cb, _ in self._buffers.pop(worker):
                if cb is not None:
                    cb(LearnOutcome(False, "closed"))
        self.core.abandon("closed")
