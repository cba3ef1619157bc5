"""ferretd's arbiter: composes the components, runs the one loop, and is the control facade.

gunicorn's shape. The components (:mod:`ferretd.components`) each own their state: ``ingest``
(socket, decoder, sample queue), ``trainer`` (learner and plan), ``score``, ``snapshots``,
``checkpoints``, ``control``, the re-planner and logging. The daemon keeps only the loop's own
state (running / paused / stopping, heartbeat, progress) and asks components to act:

* **one inbox** (:class:`ferretd.events.EventQueue`): signal handlers only enqueue, control
  handlers enqueue a call and wait for its result; the loop thread alone changes state, and
  SIGTERM and ``ferretctl stop`` share :meth:`Daemon.request_stop`;
* **the loop**: events, then samples (predict for online accuracy, then learn), then snapshot,
  checkpoint, history, re-plan and watchdog timing; a call wakes a loop waiting for samples;
* **checkpoints** are every component's ``capture()``; resume hands a checkpoint to every
  ``restore``; **reload** is :func:`ferretd.config.diff_live`, then ``reconfigure`` on each
  component it names; **health** is :func:`ferretd.health.assess` of a status snapshot.

The control handlers and tests read ``queue``, ``learner``, ``plan``, ``store``, ``exporter``:
properties over the components.
"""

from __future__ import annotations

import concurrent.futures
import signal
import time
from pathlib import Path
from typing import Any

import structlog
import torch
import zmq

from ferretd import __version__, health, lifecycle
from ferretd.components.checkpoints import CheckpointComponent
from ferretd.components.control import ControlComponent
from ferretd.components.ingest import IngestComponent
from ferretd.components.score import ScoreComponent
from ferretd.components.snapshots import SnapshotComponent
from ferretd.components.trainer import Trainer
from ferretd.config import Config, ConfigError
from ferretd.engine.learner import OnlineLearner
from ferretd.engine.plan import Plan
from ferretd.events import CallEvent, Event, EventQueue, SignalEvent
from ferretd.health import HealthIssues, Liveness
from ferretd.history import History
from ferretd.ingest import SampleQueue
from ferretd.instance import InstanceLock, check_runtime_dir
from ferretd.learners import plan_from_config
from ferretd.logs import LogSettings
from ferretd.messages import Sample
from ferretd.replan import Replanner
from ferretd.shutdown import ShutdownBudget, drain
from ferretd.snapshot.export_worker import SnapshotExporter
from ferretd.snapshot.store import SnapshotStore
from ferretd.status import StatusSources, build_status, health_snapshot, snapshot_meta, status_line
from ferretd.systemd import Notifier
from transports.security import KeyFileError, server_keys_from, start_authenticator

log = structlog.get_logger("ferretd")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_SOCKET = 0, 1, 2, 3
EXIT_ALREADY_RUNNING = 3  # another ferretd holds the runtime directory's lock
EXIT_CHECKPOINT_FAILED = 4  # stopped, but the final checkpoint could not be written
TICK_S = 0.05  # longest wait for samples or events: timers (watchdog, cadences) need the loop to turn


class Daemon:
    def __init__(
        self,
        config: Config,
        context: zmq.Context[Any] | None = None,
        config_path: str | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        if config.pipeline.executor == "virtual":
            raise ConfigError(
                '[pipeline] executor: the daemon runs "realtime" or "process"; "virtual" is for tests and benchmarks'
            )
        self.config = config
        self.config_path = config_path
        # Before any socket or state file is touched: a private runtime directory, one daemon on it.
        self.instance_lock = InstanceLock(check_runtime_dir(config.runtime_dir, EXIT_CONFIG), EXIT_ALREADY_RUNNING)
        self.instance_lock.acquire()
        try:
            self._compose(config, context, notifier)
        except BaseException:
            self.instance_lock.release()
            raise

    def _compose(self, config: Config, context: zmq.Context[Any] | None, notifier: Notifier | None) -> None:
        self.context = context or zmq.Context()
        self.started_at = time.time()
        self.state = "starting"
        torch.set_num_threads(config.daemon.torch_threads)  # deliberately, before any learner is built
        try:  # CURVE keys for tcp endpoints (transports.security); a bad key file is a config error
            self.server_keys = server_keys_from(config.security)
        except KeyFileError as exc:
            raise ConfigError(f"[security] {exc}") from None
        self.authenticator: Any = None
        self.notifier = notifier or Notifier()
        self.ingest = IngestComponent(config)
        self.replanner = Replanner(config, arrival_fn=lambda: self.queue.arrival_interval_s())
        plan = self.replanner.initial_plan() if self.replanner.auto else plan_from_config(config)
        self.trainer = Trainer(
            config,
            plan,
            settle=lambda trained, reason: self.queue.settle(trained, reason),
            predicted=lambda sample, guess: self.score.on_predicted(sample, guess),
        )
        self.score = ScoreComponent(config, learner=lambda: self.learner)
        self.snapshots = SnapshotComponent(config, lambda: self.learner, meta=lambda: snapshot_meta(self.sources))
        self.checkpoints = CheckpointComponent(config)
        self.control = ControlComponent(config)
        self.logging = LogSettings()
        self.history = History(config.metrics.history_every_s, config.metrics.history_points)
        self.health_issues = HealthIssues()
        self.events = EventQueue(wake=lambda: self.queue.wake())
        self.components: dict[str, Any] = {  # by the names config.diff_live reports
            "ingest": self.ingest,
            "trainer": self.trainer,
            "score": self.score,
            "snapshots": self.snapshots,
            "checkpoints": self.checkpoints,
            "control": self.control,
            "replanner": self.replanner,
            "logging": self.logging,
        }
        self.sources = StatusSources(
            self.ingest, self.trainer, self.score, self.snapshots, self.checkpoints, self.control, config.model.name
        )
        self._stop_requested = False
        self.paused = False
        self.liveness = Liveness()
        self.resumed_from = self.checkpoints.resume_newest(
            self.trainer.model_template,
            lambda state: lifecycle.restore_checkpoint(self._checkpointed(), state),
            self._reset_learning_state,
            self.health_issues,
        )
        if self.resumed_from is not None:
            self.snapshots.cadence.mark(self.learner.updates)
            self.checkpoints.cadence.mark(self.learner.updates)
            self.liveness.resumed(self.queue.snapshot().trained)

    def _checkpointed(self) -> tuple[Any, ...]:
        """The components whose state a checkpoint holds, in restore order (the learner first)."""
        return (self.trainer, self.score, self.ingest, self.replanner, self.snapshots)

    @property
    def queue(self) -> SampleQueue:
        return self.ingest.queue

    @property
    def learner(self) -> OnlineLearner:
        return self.trainer.learner

    @property
    def plan(self) -> Plan:
        return self.trainer.plan

    @property
    def store(self) -> SnapshotStore:
        return self.snapshots.store

    @property
    def exporter(self) -> SnapshotExporter:
        return self.snapshots.exporter

    def _reset_learning_state(self) -> None:
        """Back to a fresh start after a resume that failed half-way (``__init__`` only)."""
        self.trainer.reset()
        self.score.reset()
        self.ingest.reset()
        self.replanner.restore({"override_bytes": None})

    # ------------------------------------------------------------------ read from any thread

    def status(self) -> dict[str, Any]:
        return build_status(self.sources, state=self.state, started_at=self.started_at, resumed_from=self.resumed_from)

    def status_line(self) -> str:
        return status_line(self.sources, self.state)

    def score_summary(self) -> dict[str, Any]:
        return self.score.summary()

    def health(self) -> dict[str, Any]:
        """``ferretctl health``: 0 healthy, 1 degraded, 2 down (rules in :mod:`ferretd.health`)."""
        snapshot = health_snapshot(
            self.sources,
            state=self.state,
            paused=self.paused,
            liveness=self.liveness,
            issues=self.health_issues,
            max_drop_share=self.config.metrics.max_drop_share,
        )
        return health.assess(snapshot)

    # ------------------------------------------------------------------ events (any thread)

    def call_in_loop(self, fn: Any, timeout: float | None = None) -> Any:
        """Run ``fn`` on the loop thread and wait for its result (how control mutates state)."""
        return self.events.call(fn, timeout or self.config.control.timeout_s)

    def request_stop(self, reason: str) -> None:
        if not self._stop_requested:
            log.info("stop_requested", reason=reason)
        self._stop_requested = True
        self.queue.wake()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, _frame: self.events.post_signal(signum))

    def _handle(self, event: Event | None) -> None:
        if isinstance(event, CallEvent):
            event.run()
        elif isinstance(event, SignalEvent):
            if event.signum != signal.SIGHUP:
                self.request_stop(signal.Signals(event.signum).name)
            elif self.state in ("running", "paused"):
                try:
                    self.reload()
                except ConfigError as exc:
                    log.error("reload_failed", error=str(exc))

    def _handle_events(self) -> None:
        for event in self.events.drain():
            self._handle(event)

    # ------------------------------------------------------------------ the loop

    def start(self) -> None:
        cfg = self.config
        Path(cfg.runtime_dir).mkdir(parents=True, exist_ok=True, mode=0o750)
        Path(cfg.state_dir).mkdir(parents=True, exist_ok=True, mode=0o750)
        from ferretd.control.commands import make_handler

        keys = self.server_keys
        if keys is not None:  # ZAP must run before the first CURVE server socket binds
            self.authenticator = start_authenticator(self.context, cfg.security.authorized_keys_dir)
        self.snapshots.bind(self.context, keys)
        self.control.bind(self.context, keys, make_handler(self))
        self.ingest.bind(self.context, keys)
        self.snapshots.start()
        self.control.start(self.status)
        self.ingest.start()
        self.state = "running"
        log.info(
            "ferretd_ready",
            version=__version__,
            ingest=cfg.ingest.endpoint,
            control=cfg.control.endpoint,
            snapshots=cfg.snapshot.announce_endpoint,
            model=cfg.model.name,
            learner=self.learner.status().get("engine"),
            plan=self.plan.to_dict(),
        )
        self.notifier.ready(self.status_line())

    def run(self) -> int:
        """The loop. Returns the process exit code."""
        self.start()
        try:
            while not self._stop_requested:
                self._turn()
            return self.shutdown()
        except Exception:
            log.exception("ferretd_failed")
            self.shutdown(final_snapshot=False)
            return EXIT_FAILURE

    def _turn(self) -> None:
        self.liveness.beat()
        self.ingest.observe_drops()
        self._handle_events()
        if self.paused:
            self.score.score_dropped(self.queue.take_dropped)
            self._handle(self.events.get(timeout=TICK_S))
        else:
            batch = self.queue.take(
                self.config.training.microbatch, timeout=TICK_S, max_in_flight=self.trainer.in_flight_cap()
            )
            self._process(batch)
            if not batch or self.score.batch_due(self.queue.awaiting_score, self.queue.capacity):
                self.score.score_dropped(self.queue.take_dropped, exact=not len(self.queue))
            if not batch:
                self.trainer.flush_when_idle(self.queue)
        self.score.record_predicted()  # test-then-train predictions of the samples trained so far
        self.snapshots.maybe()
        self._maybe_checkpoint()
        self.history.maybe_record(self.sources)
        if self.replanner.due():
            self.replan(reason="headroom")
        if self._training_progressing() and self.notifier.maybe_ping():
            self.notifier.status(self.status_line())

    def _process(self, batch: list[Sample]) -> None:
        if not self.trainer.scores_while_training:
            self.score.score_many(batch)  # test, then train: one forward predicts the whole batch
        for sample in batch:
            self.snapshots.observe(sample.features, sample.label)
            self.trainer.learn(sample)

    def _training_progressing(self) -> bool:
        ledger = self.queue.snapshot()
        return self.liveness.progressing(ledger.trained, ledger.queued, self.paused)

    # ------------------------------------------------------------------ operator actions (loop thread)

    def reload(self) -> dict[str, Any]:
        """Re-read the config file; each component a live change concerns reconfigures. Raises ConfigError."""
        self.notifier.reloading()
        try:
            if self.config_path is None:
                return {"applied": [], "needs_restart": [], "note": "running on embedded defaults: nothing to reload"}
            diff = lifecycle.reload_components(self.components, self.config, self.config_path)
            self.config = diff.merged
            replan = diff.changes("replanner") and self.replanner.auto
            replanned = self.replan(force=True, reason="reload") if replan else None
            return {"applied": list(diff.applied), "needs_restart": list(diff.needs_restart), "replan": replanned}
        finally:
            self.notifier.ready(self.status_line())

    def set_paused(self, paused: bool) -> dict[str, Any]:
        if paused != self.paused:
            self.paused = paused
            if paused:
                self.trainer.flush(timeout=self.config.daemon.shutdown_timeout_s)
            self.state = "paused" if paused else "running"
            log.info("training_paused" if paused else "training_resumed")
            self.notifier.status(self.status_line())
        return {"state": self.state}

    def checkpoint_now(self, reason: str, flush_timeout: float | None = None) -> str:
        """Flush the engine and write every component's state (loop thread only)."""
        self.trainer.flush(self.config.daemon.shutdown_timeout_s if flush_timeout is None else flush_timeout)
        return str(self.checkpoints.save(lifecycle.checkpoint_state(self._checkpointed(), reason)))

    def _maybe_checkpoint(self) -> None:
        if self.checkpoints.due(self.learner.updates):
            try:
                self.checkpoint_now("periodic")
            except Exception as exc:  # disk full, read-only, ...: counted, in health, retried next time
                self.checkpoints.failed_periodic(self.learner.updates, exc)

    def replan(self, *, force: bool = False, reason: str = "headroom") -> dict[str, Any]:
        """Check the budget and apply a new plan at a safe point if the planner finds one."""
        return self._plan_changed(self.replanner.replan(self.trainer, force=force, reason=reason))

    def set_budget(self, budget_bytes: int) -> dict[str, Any]:
        """``ferretctl budget``: an absolute cap on the plan's memory (0 clears it), then re-plan."""
        return self._plan_changed(self.replanner.set_budget(self.trainer, budget_bytes))

    def _plan_changed(self, result: dict[str, Any]) -> dict[str, Any]:
        if result["changed"]:
            self.notifier.status(self.status_line())
        return result

    def snapshot_now(self) -> concurrent.futures.Future[Any]:
        """Hand a consistent copy of the weights to the exporter, bypassing the promotion gate."""
        return self.snapshots.now()

    # ------------------------------------------------------------------ shutdown

    def _score_the_last_outcomes(self) -> None:
        """Samples the closing learner gave up (a flush that timed out) still get their one score."""
        try:
            self.score.record_predicted()
        except Exception as exc:  # the learner is closed: what it cannot predict stays unscored
            log.warning("final_scoring_failed", error=f"{type(exc).__name__}: {exc}"[:200])

    def shutdown(self, final_snapshot: bool = True) -> int:
        """Stop accepting, train what is queued, final checkpoint and snapshot, close: all within
        ``[daemon] shutdown_timeout_s`` (shares in :class:`ferretd.shutdown.ShutdownBudget`). Returns
        the exit code: ``EXIT_CHECKPOINT_FAILED`` when the final checkpoint could not be written."""
        self.state = "stopping"
        self.notifier.stopping("stopping: draining queue")
        self.ingest.stop()
        budget = ShutdownBudget(time.monotonic(), self.config.daemon.shutdown_timeout_s)
        dropped = drain(
            self.queue,
            self.trainer,
            self.score,
            microbatch=self.config.training.microbatch,
            wait_s=TICK_S,
            process=self._process,
            between=self._handle_events,
            until=budget.drain_until,
        )
        self.trainer.flush(budget.left(budget.flush_until))
        self.score.record_predicted()
        code = EXIT_OK
        if final_snapshot:
            try:
                self.checkpoint_now("shutdown", flush_timeout=0.0)
            except Exception as exc:
                code = EXIT_CHECKPOINT_FAILED
                log.error("final_checkpoint_failed", error=f"{type(exc).__name__}: {exc}", exit_code=code)
            self.snapshots.final(budget.snapshot_until)
        self.snapshots.stop_exporter(timeout=max(0.1, budget.left(budget.deadline)))
        self._handle_events()
        self.control.stop()
        self.snapshots.close_sockets()
        if self.authenticator is not None:
            self.authenticator.stop()
        self.trainer.close()
        self._score_the_last_outcomes()
        log.info(
            "ferretd_stopped",
            dropped_at_shutdown=dropped,
            shutdown_s=round(time.monotonic() - budget.started, 3),
            exit_code=code,
            **self.queue.snapshot().to_dict(),
            **self.score.summary(),
        )
        self.state = "stopped"
        self.notifier.close()
        self.instance_lock.release()
        return code
