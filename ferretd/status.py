"""What ``ferretctl status`` and the systemd STATUS line report, assembled from thread-safe reads."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import psutil

from ferretd import __version__

if TYPE_CHECKING:
    from ferretd.daemon import Daemon


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


def accuracy_report(daemon: Daemon, ledger: Any) -> dict[str, Any]:
    """Online accuracy over every valid arrival (trained, dropped or queued), and how many were trained.

    ``samples`` counts the arrivals scored so far (a dropped sample is scored when the loop gets to
    it); ``unscored`` those dropped beyond what the queue could keep aside for scoring;
    ``trained_share`` is trained / valid arrivals.
    """
    report = daemon.score_summary()
    arrivals = ledger.received - sum(ledger.invalid.values())
    report["arrivals"] = arrivals
    report["unscored"] = daemon.queue.unscored
    report["trained_share"] = ledger.trained / arrivals if arrivals else None
    return report


def socket_report(daemon: Daemon) -> dict[str, Any]:
    """Requests refused by each server socket (answered ``ok: false``), and handler errors on ingest."""
    return {
        "control_errors": getattr(daemon.control, "errors", 0),
        "snapshot_errors": getattr(daemon.snapshots, "errors", 0),
        "ingest_handler_errors": getattr(daemon.ingest, "handler_errors", 0),
    }


def build_status(daemon: Daemon) -> dict[str, Any]:
    ledger = daemon.queue.snapshot()
    latest = daemon.store.latest()
    return plain({
        "version": __version__,
        "pid": os.getpid(),
        "state": daemon.state,
        "uptime_s": round(time.time() - daemon.started_at, 1),
        "counters": ledger.to_dict(),
        "accuracy": accuracy_report(daemon, ledger),
        "drift": daemon.drift.status(),
        "training": {
            "updates": daemon.learner.updates,
            "mean_delay_s": daemon.mean_train_delay_s(),
            "model": daemon.config.model.name,
        },
        "snapshot": {
            "seq": latest.seq if latest else None,
            "created_at": latest.created_at if latest else None,
            "exported": daemon.exporter.exported,
            "failed": daemon.exporter.failed,
            "refused_nonfinite": daemon.exporter.refused_nonfinite,
            "weights": daemon.config.snapshot.export,
            "last_export_s": daemon.exporter.last_export_s,
            "gate": daemon.gate.status() if daemon.gate.enabled else None,
        },
        "checkpoint": {**daemon.checkpoint_record.to_dict(), "resumed_from": daemon.resumed_from},
        "sockets": socket_report(daemon),
        "memory": memory_report(),
        "engine": daemon.learner.status(),
        "plan": daemon.plan.to_dict(),
    })


def status_line(daemon: Daemon) -> str:
    """One line for systemd's STATUS= and the journal."""
    ledger = daemon.queue.snapshot()
    acc = daemon.score_summary()["online_accuracy"]
    acc_text = f"{acc:.3f}" if acc is not None else "n/a"
    return (
        f"{daemon.state}: received {ledger.received}, trained {ledger.trained}, "
        f"queued {ledger.queued}, oacc {acc_text} (all arrivals), updates {daemon.learner.updates}"
    )
