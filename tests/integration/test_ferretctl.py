"""Every ferretctl command against a live ferretd process, as table and as JSON; health exit
codes (0 healthy, 1 degraded, 2 down); reload; stop; and SIGTERM with a full queue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.harness import (
    ROOT,
    child_env,
    config_from,
    digits,
    ferretctl,
    start_process,
    stop_process,
    wait_for,
    write_config,
)
from transports.client import SamplePublisher

ctl = ferretctl


@pytest.fixture
def live(ipc_dir, tmp_path, request):
    capacity = getattr(request, "param", 4096)
    path = write_config(ipc_dir, ingest={"queue_capacity": capacity})
    config = config_from(path)
    proc = start_process("ferretd", path, tmp_path / "ferretd.log")
    wait_for(lambda: os.path.exists(config.control.endpoint[6:]), what="control socket")
    yield path, config, proc
    stop_process(proc)


def test_every_command_against_a_live_daemon(live):
    path, config, proc = live
    x, y = digits(60)
    with SamplePublisher(config.ingest.endpoint, "dev") as publisher:
        for features, label in zip(x, y, strict=True):
            publisher.publish(features, int(label))
    wait_for(lambda: json.loads(ctl(path, "--json", "status").stdout)["counters"]["trained"] == 60, what="training")

    for command in ("status", "stats", "plan", "snapshot", "checkpoint", "version", "help", "health"):
        table = ctl(path, command)
        assert table.returncode == 0, (command, table.stderr)
        assert table.stdout.strip(), command
        as_json = ctl(path, "--json", command)
        assert as_json.returncode == 0, (command, as_json.stderr)
        json.loads(as_json.stdout)
    assert "ferretctl 0.1.0" in ctl(path, "version").stdout
    assert json.loads(ctl(path, "--json", "snapshot").stdout)["manifest"]["seq"] >= 1
    assert ctl(path, "--json", "checkpoint").stdout.count("ckpt-") == 1

    # Manual plans refuse re-planning with a clear error (exit 1).
    for argv in (["replan"], ["budget", "64M"]):
        refused = ctl(path, *argv)
        assert refused.returncode == 1 and "manual" in refused.stderr

    # stats --watch refreshes until interrupted.
    watch = subprocess.Popen(
        [sys.executable, "-m", "ferretd.control.ferretctl", "--config", str(path), "stats", "--watch", "0.3"],
        stdout=subprocess.PIPE, text=True, env=child_env(), cwd=ROOT,
    )  # fmt: skip
    time.sleep(2.5)
    watch.send_signal(signal.SIGINT)
    out, _ = watch.communicate(10)
    assert out.count("online accuracy") >= 2

    # pause -> degraded (exit 1) and samples queue up; resume -> healthy (exit 0) and they train.
    assert ctl(path, "pause").returncode == 0
    health = ctl(path, "health")
    assert health.returncode == 1 and "training is paused" in health.stdout
    with SamplePublisher(config.ingest.endpoint, "dev") as publisher:
        for features, label in zip(x[:20], y[:20], strict=True):
            publisher.publish(features, int(label))
    wait_for(lambda: json.loads(ctl(path, "--json", "status").stdout)["counters"]["waiting"] == 20, what="queued")
    assert json.loads(ctl(path, "--json", "status").stdout)["state"] == "paused"
    assert ctl(path, "resume").returncode == 0
    wait_for(lambda: json.loads(ctl(path, "--json", "status").stdout)["counters"]["trained"] == 80, what="resumed")
    assert ctl(path, "health").returncode == 0

    # reload: live keys applied, the rest reported as needing a restart.
    text = path.read_text().replace("every_updates = 100", "every_updates = 7")
    path.write_text(text + "\n[model]\nhidden = [32]\n")
    reloaded = json.loads(ctl(path, "--json", "reload").stdout)
    assert "[snapshot]" in reloaded["applied"]
    assert "[model] hidden" in reloaded["needs_restart"]
    good_text = path.read_text()
    path.write_text("[ingest]\nqueue_capacity = -1\n")
    bad = ctl(path, "--endpoint", config.control.endpoint, "reload")  # ferretctl itself skips the bad file
    assert bad.returncode == 2 and "queue_capacity" in bad.stderr, "ferretctl validates --config too"
    bad = subprocess.run(
        [sys.executable, "-m", "ferretd.control.ferretctl", "--endpoint", config.control.endpoint, "reload"],
        capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1 and "queue_capacity" in bad.stderr
    path.write_text(good_text)
    assert ctl(path, "health").returncode == 0, "a bad reload changes nothing"

    # stop: same path as SIGTERM, exit 0; afterwards health says down (exit 2).
    assert ctl(path, "stop").returncode == 0
    assert proc.wait(60) == 0
    down = ctl(path, "health")
    assert down.returncode == 2 and "down" in down.stdout
    assert ctl(path, "status").returncode == 3


@pytest.mark.parametrize("live", [50], indirect=True)
def test_sigterm_with_a_full_queue_accounts_for_every_sample(live, tmp_path):
    path, config, proc = live
    assert ctl(path, "pause").returncode == 0
    x, y = digits(300)
    with SamplePublisher(config.ingest.endpoint, "dev") as publisher:
        for features, label in zip(x, y, strict=True):
            publisher.publish(features, int(label))
    status = wait_for(
        lambda: (s := json.loads(ctl(path, "--json", "status").stdout))["counters"]["received"] == 300 and s,
        what="all received",
    )
    assert status["counters"]["waiting"] == 50, "the queue is full"
    assert status["counters"]["dropped"] == {"queue_full": 250}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    stopped = [
        json.loads(line) for line in (tmp_path / "ferretd.log").read_text().splitlines() if '"ferretd_stopped"' in line
    ]
    final = stopped[0]
    assert final["balanced"] and final["queued"] == 0
    assert final["trained"] == 50 and final["dropped"] == {"queue_full": 250}

