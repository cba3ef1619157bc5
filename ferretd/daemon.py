"""ferretd's composition root and event loop: the only module that wires transports to the engine.

Threads and who owns what:

* ``ingest`` (transports.zmq_ingest) decodes frames and offers them to the :class:`SampleQueue`;
* ``control`` answers ``ferretctl``; read-only commands read thread-safe state, anything that
  changes state is enqueued as an event for the loop and the handler waits for its result;
* ``snapshots`` owns the PUB/ROUTER sockets; ``exporter`` turns a weight copy into ONNX on disk;
* the **main thread** runs the loop: signals and events, then samples (predict for online
  accuracy, then learn), then snapshot and watchdog timing. Signal handlers only append to a
  list the loop drains, and SIGTERM and ``ferretctl stop`` share :meth:`Daemon.request_stop`.
"""

from __future__ import annotations

import concurrent.futures
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
import zmq

from ferretd import __version__, lifecycle
from ferretd.checkpoint import CheckpointStore
from ferretd.config import Config, ConfigError
from ferretd.drift import DriftMonitor
from ferretd.engine.learner import LearnOutcome, OnlineLearner, PrequentialScore
from ferretd.engine.plan import Plan
from ferretd.history import History
from ferretd.ingest import SampleQueue
from ferretd.instance import InstanceLock, check_runtime_dir
from ferretd.learners import learner_kind, make_learner, plan_from_config
from ferretd.logs import RateLimitedLog
from ferretd.messages import DropReason, RejectReason
from ferretd.promotion import PromotionGate
from ferretd.replan import Replanner
from ferretd.snapshot.exporter import SnapshotExporter
from ferretd.snapshot.store import SnapshotStore
from ferretd.status import build_status, status_line
from ferretd.systemd import Notifier
from transports.codec import Rejected, SampleDecoder
from transports.security import KeyFileError, server_keys_from, start_authenticator
from transports.zmq_control import ControlServer
from transports.zmq_ingest import IngestServer
from transports.zmq_snapshots import SnapshotService

log = structlog.get_logger("ferretd")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_SOCKET = 0, 1, 2, 3
EXIT_ALREADY_RUNNING = 3  # another ferretd holds the runtime directory's lock
EXIT_CHECKPOINT_FAILED = 4  # stopped, but the final checkpoint could not be written


class Daemon:
    def __init__(
        self,
        config: Config,
        context: zmq.Context | None = None,
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
            self._init_parts(config, context, config_path, notifier)
        except BaseException:
            self.instance_lock.release()
            raise

    def _init_parts(
        self, config: Config, context: zmq.Context | None, config_path: str | None, notifier: Notifier | None
    ) -> None:
        self.context = context or zmq.Context()
        self.started_at = time.time()
        self.state = "starting"
        torch.set_num_threads(config.daemon.torch_threads)
        self.queue = SampleQueue(config.ingest.queue_capacity, config.ingest.overflow, config.ingest.max_devices)
        self.decoder = SampleDecoder(
            config.model.input_shape, config.model.num_classes, config.ingest.max_message_bytes
        )
        try:  # CURVE keys for tcp endpoints (transports.security); a bad key file is a config error
            self.server_keys = server_keys_from(config.security)
        except KeyFileError as exc:
            raise ConfigError(f"[security] {exc}") from None
        self.authenticator: Any = None
        self.replanner = Replanner(config, arrival_fn=self.queue.arrival_interval_s)
        self.plan = self.replanner.initial_plan() if self.replanner.auto else plan_from_config(config)
        self.learner: OnlineLearner = make_learner(config, self.plan)
        self.score = PrequentialScore(config.metrics.window)
        self.history = History(config.metrics.history_every_s, config.metrics.history_points)
        self.gate = PromotionGate(config.snapshot.gate_window, config.snapshot.gate_tolerance)
        self.score_lock = threading.Lock()
        self.drift = DriftMonitor.from_config(config, learner=lambda: self.learner)
        self.store = SnapshotStore(Path(config.state_dir) / "snapshots", keep=config.snapshot.keep)
        self.exporter = SnapshotExporter(self.store, config, on_saved=self._snapshot_saved)
        self.checkpoints = CheckpointStore(Path(config.state_dir) / "checkpoints", keep=config.checkpoint.keep)
        self.notifier = notifier or Notifier()
        self.bad_input = RateLimitedLog(log)
        self.health_issues = lifecycle.HealthIssues()
        self.checkpoint_record = lifecycle.CheckpointRecord()
        self.drop_window = lifecycle.DropWindow(config.metrics.drop_window_s)
        self._next_drop_observe = 0.0
        self.events: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.Queue()
        self._signals: list[int] = []
        self._stop_requested = False
        self.snapshot_cadence = lifecycle.Cadence()
        self.checkpoint_cadence = lifecycle.Cadence()
        self._delay_lock = threading.Lock()  # engines settle samples from their own threads
        self._delay_sum = 0.0
        self._delay_count = 0
        self.paused = False
        self.loop_heartbeat = time.monotonic()
        self.last_progress_at = time.monotonic()
        self.last_divergence_at: float | None = None
        self._last_trained = 0
        self.ingest: IngestServer | None = None
        self.control: ControlServer | None = None
        self.metrics_endpoint: Any = None  # ferretd.exposition.MetricsEndpoint when [metrics] listen is set
        self.snapshots: SnapshotService | None = None
        self.resumed_from = lifecycle.resume_newest(self)
        if self.resumed_from is not None:
            self.snapshot_cadence.mark(self.learner.updates)
            self.checkpoint_cadence.mark(self.learner.updates)
            self._last_trained = self.queue.snapshot().trained

    def model_template(self) -> torch.nn.Module:
        """A freshly built configured model (to check a checkpoint's shapes); leaves the RNGs alone."""
        from ferretd.models import build_model

        with torch.random.fork_rng(devices=[]):
            return build_model(self.config.model)

    def reset_learning_state(self) -> None:
        """Back to a fresh start after a resume that failed half-way (``__init__`` only)."""
        self.learner.close()
        self.learner = make_learner(self.config, self.plan)
        self.score = PrequentialScore(self.config.metrics.window)
        self.drift = DriftMonitor.from_config(self.config, learner=lambda: self.learner)
        cfg = self.config.ingest
        self.queue = SampleQueue(cfg.queue_capacity, cfg.overflow, cfg.max_devices)
        old = self.replanner
        self.replanner = Replanner(self.config, arrival_fn=self.queue.arrival_interval_s)
        self.replanner.headroom = old.headroom  # what the running plan was made for

    def observe_drops(self) -> None:
        """Feed the health check's recent-drop window (about once a second, loop thread)."""
        now = time.monotonic()
        if now < self._next_drop_observe:
            return
        self._next_drop_observe = now + self.drop_window.every_s
        ledger = self.queue.snapshot()
        accepted = ledger.received - sum(ledger.invalid.values())
        self.drop_window.observe(now, accepted, sum(ledger.dropped.values()))

    # ------------------------------------------------------------------ ingest thread

    def handle_frame(self, frame: bytes | None, received_at: float) -> None:
        if frame is None:
            self._reject(RejectReason.MALFORMED, "multipart message")
            return
        try:
            sample = self.decoder.decode(frame, received_at)
        except Rejected as exc:
            self._reject(exc.reason, exc.detail)
            return
        if not self.queue.offer(sample):
            self.bad_input.warning(
                "queue_full", "sample_dropped", reason=DropReason.QUEUE_FULL.value, policy=self.config.ingest.overflow
            )

    def _reject(self, reason: RejectReason, detail: str) -> None:
        self.queue.reject(reason)
        self.bad_input.warning(f"invalid:{reason.value}", "sample_rejected", reason=reason.value, detail=detail)

    # ------------------------------------------------------------------ control (any thread)

    def call_in_loop(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run ``fn`` on the loop thread and wait for its result (how control mutates state)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.events.put((fn, future))
        return future.result(timeout=timeout or self.config.control.timeout_s)

    def request_stop(self, reason: str) -> None:
        if not self._stop_requested:
            log.info("stop_requested", reason=reason)
        self._stop_requested = True

    def status(self) -> dict[str, Any]:
        return build_status(self)

    def score_summary(self) -> dict[str, Any]:
        with self.score_lock:
            return self.score.summary()

    def score_state(self) -> dict[str, Any]:
        with self.score_lock:
            return self.score.state_dict()

    def load_score_state(self, state: dict[str, Any]) -> None:
        with self.score_lock:
            self.score.load_state_dict(state)

    def mean_train_delay_s(self) -> float | None:
        return self._delay_sum / self._delay_count if self._delay_count else None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        cfg = self.config
        Path(cfg.runtime_dir).mkdir(parents=True, exist_ok=True, mode=0o750)
        Path(cfg.state_dir).mkdir(parents=True, exist_ok=True, mode=0o750)
        from ferretd.control.commands import make_handler

        keys = self.server_keys
        if keys is not None:  # ZAP must run before the first CURVE server socket binds
            self.authenticator = start_authenticator(self.context, cfg.security.authorized_keys_dir)
        self.snapshots = SnapshotService(
            self.context,
            cfg.snapshot.announce_endpoint,
            cfg.snapshot.latest_endpoint,
            latest=self._latest_manifest,
            fetch=self._fetch_snapshot,
            max_request_bytes=cfg.snapshot.max_request_bytes,
            rcvhwm=cfg.snapshot.rcvhwm,
            curve=keys,
        )
        self.control = ControlServer(
            self.context,
            cfg.control.endpoint,
            make_handler(self),
            max_request_bytes=cfg.control.max_request_bytes,
            rcvhwm=cfg.control.rcvhwm,
            curve=keys,
        )
        self.ingest = IngestServer(
            self.context,
            cfg.ingest.endpoint,
            self.handle_frame,
            max_message_bytes=cfg.ingest.max_message_bytes,
            rcvhwm=cfg.ingest.rcvhwm,
            curve=keys,
        )
        self.exporter.start()
        self.snapshots.start()
        self.control.start()
        if cfg.metrics.listen:  # OpenMetrics over HTTP; prometheus_client is imported only then
            from ferretd.exposition import MetricsEndpoint

            self.metrics_endpoint = MetricsEndpoint(cfg.metrics.listen, self.status)
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
        self.notifier.ready(status_line(self))

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, _frame: self._signals.append(signum))

    def run(self) -> int:
        """The loop. Returns the process exit code."""
        self.start()
        try:
            while not self._stop_requested:
                self.loop_heartbeat = time.monotonic()
                self.observe_drops()
                self._drain_signals()
                self._drain_events()
                if self.paused:
                    self._score_dropped()
                    time.sleep(0.05)
                else:
                    batch = self.queue.take(
                        self.config.training.microbatch, timeout=0.05, max_in_flight=self.in_flight_cap()
                    )
                    for sample in batch:
                        self._process(sample)
                    self._score_dropped()
                self._maybe_snapshot()
                self._maybe_checkpoint()
                self.history.maybe_record(self)
                if self.replanner.due():
                    self.replan(reason="headroom")
                if self._training_progressing() and self.notifier.maybe_ping():
                    self.notifier.status(status_line(self))
            return self.shutdown()
        except Exception:
            log.exception("ferretd_failed")
            self.shutdown(final_snapshot=False)
            return EXIT_FAILURE

    def in_flight_cap(self) -> int:
        """Samples the engine may hold: enough to keep every active lane busy, no more.

        Beyond that, samples would only grow older inside the engine; held back, they wait in the
        bounded queue where the overflow policy drops the stalest. The pipeline engine knows its
        own depth (workers x microbatch x max(P, accumulation): an accumulation window must fill
        before its samples complete); the sequential learner holds one microbatch.
        """
        capacity = getattr(self.learner, "in_flight_capacity", None)
        return max(1, capacity()) if capacity is not None else self.config.training.microbatch

    def _training_progressing(self) -> bool:
        """For the watchdog: trained moved, or there is nothing to train, or we are paused on purpose."""
        ledger = self.queue.snapshot()
        now = time.monotonic()
        if ledger.trained != self._last_trained or ledger.queued == 0 or self.paused:
            self._last_trained = ledger.trained
            self.last_progress_at = now
            return True
        return now - self.last_progress_at < lifecycle.STALL_S

    def _drain_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGHUP:
                try:
                    self.reload()
                except ConfigError as exc:
                    log.error("reload_failed", error=str(exc))
            else:
                self.request_stop(signal.Signals(signum).name)

    # ------------------------------------------------------------------ operator actions (loop thread)

    def reload(self) -> dict[str, Any]:
        self.notifier.reloading()
        try:
            return lifecycle.reload_config(self, self.config_path)
        finally:
            self.notifier.ready(status_line(self))

    def set_paused(self, paused: bool) -> dict[str, Any]:
        if paused != self.paused:
            self.paused = paused
            if paused:
                self.learner.flush(timeout=self.config.daemon.shutdown_timeout_s)
            self.state = "paused" if paused else "running"
            log.info("training_paused" if paused else "training_resumed")
            self.notifier.status(status_line(self))
        return {"state": self.state}

    def checkpoint_now(self, reason: str, flush_timeout: float | None = None) -> str:
        """Flush the engine and write the full learning state (loop thread only)."""
        self.learner.flush(timeout=self.config.daemon.shutdown_timeout_s if flush_timeout is None else flush_timeout)
        try:
            path = self.checkpoints.save(lifecycle.checkpoint_state(self, reason))
        except Exception as exc:
            self.checkpoint_record.error(exc)
            raise
        self.checkpoint_record.ok()
        self.checkpoint_cadence.mark(self.learner.updates)
        log.info("checkpoint_saved", path=path.name, updates=self.learner.updates, reason=reason)
        return str(path)

    def _maybe_checkpoint(self) -> None:
        cfg = self.config.checkpoint
        if self.checkpoint_cadence.due(self.learner.updates, cfg.every_updates, cfg.every_seconds):
            try:
                self.checkpoint_now("periodic")
            except Exception as exc:  # disk full, read-only, ...: counted, in health, retried next time
                self.checkpoint_cadence.mark(self.learner.updates)
                self.bad_input.warning("checkpoint_failed", "checkpoint_failed", error=str(exc))

    def _drain_events(self) -> None:
        while True:
            try:
                fn, future = self.events.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)

    def _process(self, sample: Any) -> None:
        self._score(sample)
        if self.gate.pending and (released := self.gate.observe(sample.features, sample.label)):
            self.exporter.submit(released[0], **released[1])  # promoted on a held-back window
        received_at = sample.received_at
        self.learner.learn_one(sample.features, sample.label, lambda outcome: self._settle(outcome, received_at))

    def _score(self, sample: Any) -> None:
        """Test-then-train: predict one arrival with the current model and score it (once)."""
        self._record_scores([sample], self.learner.predict_one(sample.features)[None, :])

    def _record_scores(self, samples: list[Any], probabilities: np.ndarray) -> None:
        predicted = np.argmax(probabilities, axis=1)
        for sample, guess in zip(samples, predicted, strict=True):
            with self.score_lock:
                hit = self.score.record(int(guess), sample.label)
            if self.drift.update(not hit):  # Page-Hinkley on the online 0/1 error: one log line per detection
                drift = self.drift.status()
                log.warning(
                    "drift_detected",
                    detections=drift["detections"],
                    at_sample=drift["last_at_sample"],
                    reaction=drift["reaction"],
                    window_accuracy=self.score_summary()["window_accuracy"],
                )

    def _score_dropped(self, until: float | None = None) -> None:
        """Score the samples the queue dropped (overflow, shutdown): every arrival is predicted once.

        Dropped samples are predicted in batches of up to 256 with one forward each: under
        overload most arrivals are dropped, and one forward per dropped sample used to take the
        CPU that training needed. Samples whose shape does not stack (a custom model with
        variable input) fall back to one forward each.
        ``until`` (shutdown): stop at that monotonic time; what is left stays unscored."""
        while batch := self.queue.take_dropped(256):
            try:
                features = np.stack([sample.features for sample in batch])
            except ValueError:
                for sample in batch:
                    self._score(sample)
            else:
                self._record_scores(batch, self.learner.predict_many(features))
            if until is not None and time.monotonic() >= until:
                return

    def _settle(self, outcome: LearnOutcome, received_at: float) -> None:
        if outcome.reason.startswith("diverged"):
            self.last_divergence_at = time.monotonic()
            self.bad_input.warning("diverged", "update_refused", reason=outcome.reason)
        self.queue.settle(outcome.trained, outcome.reason or DropReason.ENGINE.value)
        if outcome.trained and received_at:
            delay = time.monotonic() - received_at
            with self._delay_lock:
                self._delay_sum += delay
                self._delay_count += 1

    # ------------------------------------------------------------------ planning (loop thread)

    def replan(self, *, force: bool = False, reason: str = "headroom") -> dict[str, Any]:
        """Check the budget and apply a new plan at a safe point if the planner finds one."""
        try:
            new = self.replanner.check(self.plan, force=force, reason=reason)
        except ValueError as exc:  # manual plan, or budget below the smallest feasible plan
            if force:
                raise
            self.bad_input.warning("replan_failed", "replan_failed", error=str(exc))
            return {"changed": False, "error": str(exc)}
        if new is None:
            return {"changed": False, "plan": self.plan.to_dict()}
        if not self._apply_plan(new):
            log.error("replan_not_applied", detail="in-flight microbatches did not drain in time")
            return {"changed": False, "error": "could not drain in-flight work in time"}
        self.plan = new
        self.notifier.status(status_line(self))
        return {"changed": True, "plan": new.to_dict(), "describe": new.describe()}

    def _apply_plan(self, new: Plan) -> bool:
        """Switch the engine to ``new`` at a safe point; swap learners when the kind changes."""
        timeout = self.config.daemon.shutdown_timeout_s
        kind = learner_kind(new, self.config)
        if kind == learner_kind(self.plan, self.config) and kind == "pipeline":
            return self.learner.apply_plan(new, timeout=timeout)  # type: ignore[attr-defined]
        if not self.learner.flush(timeout=timeout):
            return False
        state = self.learner.state_dict()
        replacement = make_learner(self.config, new)
        replacement.load_state_dict(lifecycle.adapt_learner_state(state, self.plan, new, kind))
        self.learner.close()
        self.learner = replacement
        return True

    def set_budget(self, budget_bytes: int) -> dict[str, Any]:
        """``ferretctl budget``: an absolute cap on the plan's memory (0 clears it), then re-plan."""
        previous = self.replanner.override_bytes
        self.replanner.override_bytes = budget_bytes or None
        try:
            return self.replan(force=True, reason=f"ferretctl budget {budget_bytes}")
        except ValueError:
            self.replanner.override_bytes = previous
            raise

    # ------------------------------------------------------------------ snapshots

    def _maybe_snapshot(self) -> None:
        cfg = self.config.snapshot
        if not self.exporter.busy and self.snapshot_cadence.due(
            self.learner.updates, cfg.every_updates, cfg.every_seconds
        ):
            if not self.gate.enabled:
                self.snapshot_now()
                return
            self.snapshot_cadence.mark(self.learner.updates)
            released = self.gate.hold(self.learner.export_module(), self._snapshot_meta())
            if released is not None:
                self.exporter.submit(released[0], **released[1])

    def snapshot_now(self) -> concurrent.futures.Future[Any]:
        """Hand a consistent copy of the weights to the exporter (loop thread only); explicit
        snapshots bypass the promotion gate and become what it compares the next one with."""
        self.snapshot_cadence.mark(self.learner.updates)
        module = self.learner.export_module()
        if self.gate.enabled:
            self.gate.serving(module)
        return self.exporter.submit(module, **self._snapshot_meta())

    def _snapshot_meta(self) -> dict[str, Any]:
        return {
            "updates": self.learner.updates,
            "samples_trained": self.queue.snapshot().trained,
            "online_accuracy": self.score_summary()["online_accuracy"],
        }

    def _snapshot_saved(self, manifest: dict[str, Any]) -> None:
        if self.snapshots is not None:
            self.snapshots.announce(manifest)

    def _latest_manifest(self) -> dict[str, Any] | None:
        latest = self.store.latest()
        return latest.to_dict() if latest else None

    def _fetch_snapshot(self, seq: int) -> tuple[dict[str, Any], bytes] | None:
        try:
            manifest, data = self.store.read(seq)
        except (OSError, ValueError):
            return None
        return manifest.to_dict(), data

    # ------------------------------------------------------------------ shutdown

    # Shares of ``shutdown_timeout_s``: draining the queue ends at DRAIN, the engine flush at FLUSH;
    # the checkpoint comes next (always attempted: it is the state), then the snapshot only if the
    # time left covers its expected export time; CLOSE is kept back for closing the sockets.
    SHUTDOWN_DRAIN, SHUTDOWN_FLUSH, SHUTDOWN_CLOSE = 0.4, 0.5, 0.1
    FIRST_EXPORT_GUESS_S = 1.0

    def shutdown(self, final_snapshot: bool = True) -> int:
        """Stop accepting, train what is queued, final checkpoint and snapshot, close: all within
        ``[daemon] shutdown_timeout_s`` (see the SHUTDOWN_* shares). Returns the exit code:
        ``EXIT_CHECKPOINT_FAILED`` when the final checkpoint could not be written."""
        self.state = "stopping"
        self.notifier.stopping("stopping: draining queue")
        if self.ingest is not None:
            self.ingest.stop()
        started = time.monotonic()
        budget = self.config.daemon.shutdown_timeout_s
        deadline = started + budget
        drain_until = started + self.SHUTDOWN_DRAIN * budget
        while time.monotonic() < drain_until and len(self.queue):
            self._drain_events()
            for sample in self.queue.take(
                self.config.training.microbatch, timeout=0.05, max_in_flight=self.in_flight_cap()
            ):
                self._process(sample)
        dropped = self.queue.drop_waiting(DropReason.SHUTDOWN)
        self._score_dropped(until=started + self.SHUTDOWN_DRAIN * budget)
        self.learner.flush(timeout=max(0.0, started + self.SHUTDOWN_FLUSH * budget - time.monotonic()))
        code = EXIT_OK
        if final_snapshot:
            try:
                self.checkpoint_now("shutdown", flush_timeout=0.0)
            except Exception as exc:
                code = EXIT_CHECKPOINT_FAILED
                log.error("final_checkpoint_failed", error=f"{type(exc).__name__}: {exc}", exit_code=code)
        self._final_snapshot(final_snapshot, deadline - self.SHUTDOWN_CLOSE * budget)
        self.exporter.stop(timeout=max(0.1, deadline - time.monotonic()))
        self._drain_events()
        for service in (self.control, self.snapshots):
            if service is not None:
                service.stop()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        if self.authenticator is not None:
            self.authenticator.stop()
        self.learner.close()
        ledger = self.queue.snapshot()
        log.info(
            "ferretd_stopped",
            dropped_at_shutdown=dropped,
            shutdown_s=round(time.monotonic() - started, 3),
            exit_code=code,
            **ledger.to_dict(),
            **self.score_summary(),
        )
        self.state = "stopped"
        self.notifier.close()
        self.instance_lock.release()
        return code

    def _final_snapshot(self, wanted: bool, until: float) -> None:
        """Export the last weights if they are new and the time left (to ``until``) allows it."""
        if not wanted or self.learner.updates <= self.snapshot_cadence.last_updates:
            return
        left = until - time.monotonic()
        expected = self.exporter.last_export_s or self.FIRST_EXPORT_GUESS_S
        if left < expected:
            log.warning("final_snapshot_skipped", seconds_left=round(left, 2), expected_s=round(expected, 2))
            return
        try:
            self.snapshot_now().result(timeout=left)
        except concurrent.futures.TimeoutError:
            log.warning("final_snapshot_skipped", reason="export did not finish within the shutdown timeout")
        except Exception as exc:
            log.error("final_snapshot_failed", error=f"{type(exc).__name__}: {exc}")
