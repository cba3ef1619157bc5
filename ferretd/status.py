"""What ``ferretctl status`` and the systemd STATUS line report, assembled from thread-safe reads.

The daemon passes its components in (:class:`StatusSources`); nothing here knows the daemon.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psutil

from ferretd import __version__
from ferretd.health import HealthIssues, HealthSnapshot, Liveness

if TYPE_CHECKING:
    from ferretd.components.checkpoints import CheckpointComponent
    from ferretd.components.control import ControlComponent
    from ferretd.components.ingest import IngestComponent
    from ferretd.components.score import ScoreComponent
    from ferretd.components.snapshots import SnapshotComponent
    from ferretd.components.trainer import Trainer
    from ferretd.ingest import LedgerSnapshot


def memory_report() -> dict[str, Any]:
    process = psutil.Process(os.getpid())
    return {
        "rss_bytes": process.memory_info().rss,
        "available_bytes": psutil.virtual_memory().available,
    }


def plain(value: Any) -> Any:
    """JSON/msgpack-safe copy: string keys, builtin numbers (numpy and torch scalars converted)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    return str(value)


@dataclass(frozen=True)
class StatusSources:
    """The components a status report reads (all of them thread-safe to read)."""

    ingest: IngestComponent
    trainer: Trainer
    score: ScoreComponent
    snapshots: SnapshotComponent
    checkpoints: CheckpointComponent
    control: ControlComponent
    model_name: str


def accuracy_report(score: ScoreComponent, ingest: IngestComponent, ledger: LedgerSnapshot) -> dict[str, Any]:
    """Online accuracy over every valid arrival (trained, dropped or queued), and how many were trained.

    ``samples`` counts the arrivals scored so far (a dropped sample is scored when the loop gets to
    it); ``scored`` those predicted, ``estimated`` dropped ones left out of the random sample scored
    under overload (``[metrics] drop_scoring_share``; their hits are estimated by the sampled ones');
    ``unscored`` those dropped beyond what the queue could keep aside for scoring;
    ``trained_share`` is trained / valid arrivals.
    """
    report = score.summary()
    arrivals = ledger.received - sum(ledger.invalid.values())
    report["arrivals"] = arrivals
    report["unscored"] = ingest.queue.unscored
    report["trained_share"] = ledger.trained / arrivals if arrivals else None
    return report


def socket_report(parts: StatusSources) -> dict[str, Any]:
    """Requests refused by each server socket (answered ``ok: false``), handler errors on ingest,
    and how often the ingest process was lost and restarted."""
    return {
        "control_errors": parts.control.errors,
        "snapshot_errors": parts.snapshots.errors,
        "ingest_handler_errors": parts.ingest.handler_errors,
        "ingest_restarts": parts.ingest.restarts,
    }


def build_status(parts: StatusSources, *, state: str, started_at: float, resumed_from: int | None) -> dict[str, Any]:
    ledger = parts.ingest.queue.snapshot()
    trainer = parts.trainer
    return plain({
        "version": __version__,
        "pid": os.getpid(),
        "state": state,
        "uptime_s": round(time.time() - started_at, 1),
        "counters": ledger.to_dict(),
        "accuracy": accuracy_report(parts.score, parts.ingest, ledger),
        "drift": parts.score.drift.status(),
        "training": {
            "updates": trainer.updates,
            "mean_delay_s": trainer.mean_delay_s(),
            "model": parts.model_name,
        },
        "snapshot": parts.snapshots.status(),
        "checkpoint": parts.checkpoints.status(resumed_from),
        "sockets": socket_report(parts),
        "memory": memory_report(),
        "engine": trainer.learner.status(),
        "plan": trainer.plan.to_dict(),
    })


def status_line(parts: StatusSources, state: str) -> str:
    """One line for systemd's STATUS= and the journal."""
    ledger = parts.ingest.queue.snapshot()
    acc = parts.score.summary()["online_accuracy"]
    acc_text = f"{acc:.3f}" if acc is not None else "n/a"
    return (
        f"{state}: received {ledger.received}, trained {ledger.trained}, "
        f"queued {ledger.queued}, oacc {acc_text} (all arrivals), updates {parts.trainer.updates}"
    )


def snapshot_meta(parts: StatusSources) -> dict[str, Any]:
    """What a snapshot's manifest records about learning when its weights are handed over."""
    return {
        "updates": parts.trainer.updates,
        "samples_trained": parts.ingest.queue.snapshot().trained,
        "online_accuracy": parts.score.summary()["online_accuracy"],
    }


def health_snapshot(
    parts: StatusSources, *, state: str, paused: bool, liveness: Liveness, issues: HealthIssues, max_drop_share: float
) -> HealthSnapshot:
    """What :func:`ferretd.health.assess` judges, read from the components now."""
    now = time.monotonic()
    ledger = parts.ingest.queue.snapshot()
    drop = parts.ingest.drop_window.share()
    record = parts.checkpoints.record
    diverged_at = parts.trainer.last_divergence_at
    return HealthSnapshot(
        state=state,
        balanced=ledger.balanced,
        queued=ledger.queued,
        paused=paused,
        loop_idle_s=now - liveness.heartbeat,
        since_progress_s=now - liveness.last_progress_at,
        export_failed=parts.snapshots.exporter.last_failed,
        checkpoint_error=record.last_error if record.last_failed else None,
        drop_share=drop[0] if drop else None,
        drop_window_samples=drop[1] if drop else 0,
        max_drop_share=max_drop_share,
        issues=tuple(issues.reasons()),
        since_divergence_s=None if diverged_at is None else now - diverged_at,
    )
