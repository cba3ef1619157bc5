"""Health as a pure function of a status snapshot: each degraded or down condition, one at a
time, from a :class:`HealthSnapshot` alone (no daemon, no threads, no sockets)."""

from __future__ import annotations

import dataclasses

import pytest

from ferretd import health
from ferretd.health import HealthSnapshot, Liveness, assess

HEALTHY = HealthSnapshot(state="running")


def test_a_running_daemon_with_nothing_wrong_is_healthy():
    assert assess(HEALTHY) == {"code": 0, "status": "healthy", "reasons": []}


@pytest.mark.parametrize("state", ["stopping", "stopped"])
def test_stopping_or_stopped_is_down(state):
    verdict = assess(dataclasses.replace(HEALTHY, state=state, balanced=False))
    assert verdict == {"code": 2, "status": "down", "reasons": [f"daemon is {state}"]}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"balanced": False}, "counters do not add up"),
        ({"loop_idle_s": health.STALL_S + 1}, "loop has not turned for"),
        ({"paused": True}, "training is paused"),
        ({"queued": 5, "since_progress_s": health.STALL_S + 1}, "5 samples queued but none trained for"),
        ({"export_failed": True}, "the last snapshot export failed"),
        ({"checkpoint_error": "OSError: disk full"}, "the last checkpoint write failed (OSError: disk full)"),
        ({"drop_share": 0.75, "drop_window_samples": 40, "max_drop_share": 0.5}, "75% of the last 40 valid"),
        ({"issues": ("resumed from scratch: checkpoint 3 unusable",)}, "resumed from scratch"),
        ({"since_divergence_s": 5.0}, "a training update diverged 5 s ago"),
    ],
)
def test_each_condition_alone_makes_health_degraded(change, reason):
    verdict = assess(dataclasses.replace(HEALTHY, **change))
    assert verdict["code"] == 1 and verdict["status"] == "degraded"
    assert len(verdict["reasons"]) == 1 and verdict["reasons"][0].startswith(reason), verdict


@pytest.mark.parametrize(
    "change",
    [
        {"loop_idle_s": health.STALL_S - 1},
        {"queued": 5, "since_progress_s": health.STALL_S - 1},
        {"queued": 0, "since_progress_s": health.STALL_S + 100},
        {"drop_share": 0.5, "drop_window_samples": 40, "max_drop_share": 0.5},
        {"since_divergence_s": health.DIVERGED_RECENT_S + 1},
    ],
)
def test_below_each_threshold_stays_healthy(change):
    assert assess(dataclasses.replace(HEALTHY, **change))["status"] == "healthy"


def test_paused_is_one_reason_even_with_a_stalled_queue():
    verdict = assess(dataclasses.replace(HEALTHY, paused=True, queued=9, since_progress_s=health.STALL_S + 1))
    assert verdict["reasons"] == ["training is paused"]


def test_the_stall_limit_is_read_when_assessing(monkeypatch):
    monkeypatch.setattr(health, "STALL_S", 1.0)
    assert assess(dataclasses.replace(HEALTHY, loop_idle_s=2.0))["status"] == "degraded"


def test_liveness_counts_progress_only_when_trained_moves_or_nothing_waits():
    liveness = Liveness()
    assert liveness.progressing(trained=0, queued=0, paused=False)
    liveness.last_progress_at -= health.STALL_S + 1  # as if the last progress were long ago
    assert not liveness.progressing(trained=0, queued=3, paused=False), "samples wait, none trained"
    assert liveness.progressing(trained=1, queued=3, paused=False), "trained moved"
    liveness.last_progress_at -= health.STALL_S + 1
    assert liveness.progressing(trained=1, queued=3, paused=True), "paused on purpose"
