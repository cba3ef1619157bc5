"""Prequential score, rate-limited log, sd_notify datagrams, ferretctl rendering, plan data."""

from __future__ import annotations

import socket

import pytest

from ferretd.control.ferretctl import main as ferretctl_main
from ferretd.engine.learner import PrequentialScore
from ferretd.logs import RateLimitedLog
from ferretd.systemd import Notifier


def test_prequential_score_and_baselines():
    score = PrequentialScore(window=2)
    for predicted, label in [(0, 0), (1, 0), (1, 1), (1, 1)]:
        score.record(predicted, label)
    summary = score.summary()
    assert summary["online_accuracy"] == 0.75
    assert summary["window_accuracy"] == 1.0
    assert summary["nochange_accuracy"] == 0.5  # labels 0,0,1,1: hits at 2nd and 4th
    assert summary["majority_accuracy"] == 0.25  # majority is 0 from the 1st label on: hits the 2nd only
    restored = PrequentialScore(window=2)
    restored.load_state_dict(score.state_dict())
    assert restored.summary() == summary


class Recorder:
    def __init__(self):
        self.lines = []

    def warning(self, event, **fields):
        self.lines.append((event, fields))


def test_rate_limited_log_writes_first_then_summarises():
    rec = Recorder()
    limited = RateLimitedLog(rec, interval_s=3600)
    assert limited.warning("a", "bad") and not limited.warning("a", "bad") and limited.warning("b", "bad")
    assert len(rec.lines) == 2
    limited._last["a"] = -1e9  # the interval has passed
    limited.warning("a", "bad")
    assert rec.lines[-1][1]["suppressed"] == 1


def test_notifier_sends_datagrams_and_is_noop_without_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(2)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    assert notifier.ready("up")
    assert b"READY=1" in server.recv(1024)
    assert notifier.watchdog_interval() == 1.0
    assert notifier.maybe_ping() and server.recv(1024) == b"WATCHDOG=1"
    assert not notifier.maybe_ping()  # not yet half an interval later
    assert notifier.stopping() and b"STOPPING=1" in server.recv(1024)
    server.close()
    assert not Notifier({}).ready()


def test_ferretctl_reports_daemon_not_running(tmp_path, capsys):
    code = ferretctl_main(["--endpoint", f"ipc://{tmp_path}/nothing.sock", "status"])
    assert code == 3
    assert "ferretd is not running" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["bogus"], []])
def test_ferretctl_usage_errors_exit_2(argv, capsys):
    assert ferretctl_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ferretctl: ") and err.count("\n") == 1, err


def test_cadence_every_k_updates_or_s_seconds_with_new_updates():
    from ferretd.lifecycle import Cadence

    cadence = Cadence()
    assert not cadence.due(0, 5, 0.0), "no new updates, never due"
    assert not cadence.due(4, 5, 0.0) and cadence.due(5, 5, 0.0)
    cadence.mark(5)
    assert not cadence.due(9, 5, 0.0) and not cadence.due(9, 0, 3600.0)
    cadence.last_time -= 3601
    assert cadence.due(6, 0, 3600.0), "time-based, once there is a new update"
    assert not cadence.due(5, 0, 3600.0)
