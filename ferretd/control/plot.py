"""``ferretctl history --png FILE``: the learning curve (online accuracy, all arrivals and the
recent window, over time) above throughput and drops. matplotlib (the ``bench`` extra) is
imported here only, with the Agg backend, so neither ferretctl nor the daemon pays for it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ferretd.control.render import history_rows


class PlotError(RuntimeError):
    """The plot cannot be made (matplotlib missing, nothing to plot, unwritable file): one line."""


def write_learning_curve(result: dict[str, Any], path: str | Path) -> int:
    """Write the PNG; returns the number of points plotted."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("--png needs matplotlib: pip install matplotlib (or the [bench] extra)") from None
    rows = history_rows(result)
    if len(rows) < 2:
        raise PlotError(f"only {len(rows)} history point(s) so far; one is recorded every {result['every_s']:g} s")
    when = [datetime.fromtimestamp(r["t"], UTC) for r in rows]
    fig, (acc, rate) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=(2, 1))
    for key, label in (("online_accuracy", "online accuracy (all arrivals)"), ("window_accuracy", "recent window")):
        points = [(w, r[key]) for w, r in zip(when, rows, strict=True) if r[key] is not None]
        if points:
            acc.plot(*zip(*points, strict=True), label=label)
    acc.set_ylabel("accuracy")
    acc.set_ylim(0, 1)
    acc.grid(alpha=0.3)
    acc.legend(loc="lower right")
    acc.set_title("ferretd learning curve")
    for key, label in (("trained_per_s", "trained / s"), ("dropped_per_s", "dropped / s")):
        points = [(w, r[key]) for w, r in zip(when, rows, strict=True) if r[key] is not None]
        if points:
            rate.plot(*zip(*points, strict=True), label=label)
    rate.set_ylabel("samples / s")
    rate.set_xlabel("time (UTC)")
    rate.grid(alpha=0.3)
    rate.legend(loc="upper right")
    fig.autofmt_xdate()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise PlotError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return len(rows)
