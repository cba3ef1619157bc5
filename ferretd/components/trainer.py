"""The trainer component: the online learner, the plan it runs, and every sample's fate.

The loop hands samples to :meth:`Trainer.learn`; the learner (sequential in the loop thread,
the pipeline engine in its lanes) reports each sample once, and :meth:`_settle` passes that to
the ledger (``settle``), times the delay from arrival to update, and notes a divergence the
guard refused (logged on the trainer's own rate-limited channel). A new plan is applied at a
safe point: by the learner itself when the plan is of its ``kind``, else by a learner of the
new kind that takes over the drained state (:func:`ferretd.lifecycle.adapt_learner_state`).

Checkpoint part: ``learner`` (its state dict), ``plan`` and ``updates``. The learner must be
flushed before :meth:`capture` (nothing in flight).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
import torch

from ferretd.config import Config
from ferretd.engine.learner import LearnOutcome, OnlineLearner
from ferretd.engine.plan import Plan
from ferretd.ingest import SampleQueue
from ferretd.learners import learner_kind, make_learner
from ferretd.lifecycle import adapt_learner_state
from ferretd.logs import RateLimitedLog
from ferretd.messages import DropReason, Sample

log = structlog.get_logger("ferretd.trainer")

Settle = Callable[[bool, str], None]
Predicted = Callable[[Sample, int | None], None]


class Trainer:
    def __init__(self, config: Config, plan: Plan, settle: Settle, predicted: Predicted | None = None) -> None:
        self._config = config
        self.plan = plan
        self.learner: OnlineLearner = make_learner(config, plan)
        self._settle_in_ledger = settle
        self._predicted = predicted
        self._refusals = RateLimitedLog(log)
        self._delay_lock = threading.Lock()  # engines settle samples from their own threads
        self._delay_sum = 0.0
        self._delay_count = 0
        self.last_divergence_at: float | None = None
        self._flushed_after = -1.0  # the last arrival before the latest idle flush

    @property
    def updates(self) -> int:
        return self.learner.updates

    @property
    def scores_while_training(self) -> bool:
        """Whether the learner's outcomes carry each sample's prediction (handed to ``predicted``)."""
        return self._predicted is not None and self.learner.reports_predictions

    def learn(self, sample: Sample) -> None:
        """Hand ``sample`` to the learner; its outcome settles it in the ledger and, when the learner
        reports predictions, passes its prediction (or None: no forward ran) to ``predicted``."""
        received_at = sample.received_at
        report = self._predicted if self.scores_while_training else None

        def done(outcome: LearnOutcome) -> None:
            if report is not None:
                report(sample, outcome.predicted)
            self._settle(outcome, received_at)

        self.learner.learn_one(sample.features, sample.label, done)

    def _settle(self, outcome: LearnOutcome, received_at: float) -> None:
        if outcome.reason.startswith("diverged"):
            self.last_divergence_at = time.monotonic()
            self._refusals.warning("diverged", "update_refused", reason=outcome.reason)
        self._settle_in_ledger(outcome.trained, outcome.reason or DropReason.ENGINE.value)
        if outcome.trained and received_at:
            delay = time.monotonic() - received_at
            with self._delay_lock:
                self._delay_sum += delay
                self._delay_count += 1

    def mean_delay_s(self) -> float | None:
        with self._delay_lock:
            return self._delay_sum / self._delay_count if self._delay_count else None

    def in_flight_cap(self) -> int:
        """Samples the engine may hold: enough to keep every active lane busy, no more.

        Beyond that, samples would only grow older inside the engine; held back, they wait in the
        bounded queue where the overflow policy drops the stalest. The pipeline engine knows its
        own depth (workers x microbatch x max(P, accumulation): an accumulation window must fill
        before its samples complete); the sequential learner holds one microbatch.
        """
        return max(1, self.learner.in_flight_capacity())

    def flush(self, timeout: float) -> bool:
        return self.learner.flush(timeout=timeout)

    def flush_when_idle(self, queue: SampleQueue) -> None:
        """Train what the learner still holds once the stream has been quiet ``[training] idle_flush_s``.

        A learner keeps a partial microbatch (or accumulation window) until it fills; without
        this, the last samples before a pause in the stream would wait, untrained, for the next
        ones. Called by the loop when it took nothing; once per quiet spell."""
        quiet_s, last_arrival = self._config.training.idle_flush_s, queue.last_received_at
        if not quiet_s or last_arrival == self._flushed_after or time.monotonic() - last_arrival < quiet_s:
            return
        if len(queue) or not queue.snapshot().in_flight:
            return
        self._flushed_after = last_arrival
        if not self.learner.flush(timeout=self._config.daemon.shutdown_timeout_s):
            log.warning("idle_flush_timeout", detail="the learner did not settle its partial microbatch in time")

    def switch_plan(self, new: Plan, timeout: float) -> bool:
        """Run ``new`` from a safe point on; swap learners when its kind differs. False: not drained."""
        kind = learner_kind(new, self._config)
        if kind == self.learner.kind:
            applied = self.learner.apply_plan(new, timeout=timeout)
        else:
            applied = self._replace_learner(new, kind, timeout)
        if applied:
            self.plan = new
        return applied

    def _replace_learner(self, new: Plan, kind: str, timeout: float) -> bool:
        if not self.learner.flush(timeout=timeout):
            return False
        state = self.learner.state_dict()
        replacement = make_learner(self._config, new)
        replacement.load_state_dict(adapt_learner_state(state, self.plan, new, kind))
        self.learner.close()
        self.learner = replacement
        return True

    def model_template(self) -> torch.nn.Module:
        """A freshly built configured model (to check a checkpoint's shapes); leaves the RNGs alone."""
        from ferretd.models import build_model

        with torch.random.fork_rng(devices=[]):
            return build_model(self._config.model)

    def close(self) -> None:
        self.learner.close()

    # ------------------------------------------------------------------ component

    def capture(self) -> dict[str, Any]:
        return {"updates": self.learner.updates, "learner": self.learner.state_dict(), "plan": self.plan.to_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        saved_plan = Plan.from_dict(state["plan"]) if state.get("plan") else None
        kind = learner_kind(self.plan, self._config)
        self.learner.load_state_dict(adapt_learner_state(state["learner"], saved_plan, self.plan, kind))

    def reconfigure(self, config: Config) -> None:
        """No live key: the model, training and engine keys need a restart."""
        self._config = config

    def reset(self) -> None:
        """A fresh learner for the running plan (after a resume that failed half-way)."""
        self.learner.close()
        self.learner = make_learner(self._config, self.plan)
