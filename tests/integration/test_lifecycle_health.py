"""Lifecycle against real daemons: a second ferretd on the same runtime directory exits 3 and
leaves the first alone; health turns degraded when checkpoint writes fail or most samples are
dropped; a failed final checkpoint is exit 4; SIGTERM finishes within ``shutdown_timeout_s``;
a hostile manifest in the snapshot directory does not stop ferretd from starting."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from ferretd import lifecycle
from ferretd.daemon import EXIT_CHECKPOINT_FAILED
from ferretd.snapshot.manifest import manifest_name
from tests.integration.harness import (
    ROOT,
    ThreadedDaemon,
    child_env,
    config_from,
    digits,
    start_process,
    stop_process,
    wait_for,
    write_config,
)
from transports.client import SamplePublisher


def train(config, n: int, device: str = "dev") -> None:
    x, y = digits(n)
    with SamplePublisher(config.ingest.endpoint, device) as publisher:
        for features, label in zip(x, y, strict=True):
            publisher.publish(features, int(label))


def test_second_daemon_on_the_same_runtime_directory_exits_3_and_the_first_keeps_working(ipc_dir):
    path = write_config(ipc_dir)
    config = config_from(path)
    with ThreadedDaemon(config) as td:
        second = subprocess.run(
            [sys.executable, "-m", "ferretd", "--config", str(path)],
            capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=120,
        )  # fmt: skip
        assert second.returncode == 3, second.stdout + second.stderr
        assert second.stderr.count("\n") == 1 and "another ferretd" in second.stderr
        assert f"pid {os.getpid()}" in second.stderr
        train(config, 30)
        wait_for(lambda: td.settled(30), what="the first daemon still receives and trains")
    assert td.exit_code == 0


def test_checkpoint_write_failure_is_degraded_health_and_exit_4(ipc_dir):
    config = config_from(write_config(ipc_dir, checkpoint={"every_updates": 0, "every_seconds": 0.0}))
    with ThreadedDaemon(config) as td:
        train(config, 20)
        wait_for(lambda: td.settled(20), what="trained")
        daemon = td.daemon
        assert lifecycle.health(daemon)["status"] == "healthy"
        checkpoints = config.state_dir / "checkpoints"
        shutil.rmtree(checkpoints)
        checkpoints.write_text("a file where the directory was: every write fails, also as root")
        try:
            daemon.call_in_loop(lambda: daemon.checkpoint_now("test"))
        except OSError:
            pass
        else:
            raise AssertionError("the checkpoint should have failed")
        health = lifecycle.health(daemon)
        assert health["status"] == "degraded"
        assert any("last checkpoint write failed" in r for r in health["reasons"])
        record = daemon.status()["checkpoint"]
        assert record["last_failed"] and record["failed"] == 1 and record["last_error"]
    assert td.exit_code == EXIT_CHECKPOINT_FAILED


def test_mostly_dropped_samples_make_health_degraded(ipc_dir):
    config = config_from(
        write_config(ipc_dir, ingest={"queue_capacity": 8}, metrics={"max_drop_share": 0.5, "drop_window_s": 30.0})
    )
    with ThreadedDaemon(config) as td:
        daemon = td.daemon
        daemon.call_in_loop(lambda: daemon.set_paused(True))
        time.sleep(1.2)  # a first point of the drop window before the flood (the loop samples once a second)
        train(config, 120)
        wait_for(lambda: daemon.queue.snapshot().received == 120, what="all received")

        def dropped_reason() -> list[str]:
            return [r for r in lifecycle.health(daemon)["reasons"] if "were dropped" in r]

        (reason,) = wait_for(dropped_reason, what="the drop share in health")
        assert "limit 50%" in reason
        daemon.call_in_loop(lambda: daemon.set_paused(False))


def test_a_null_file_manifest_in_the_snapshot_directory_does_not_stop_ferretd(ipc_dir):
    config = config_from(write_config(ipc_dir))
    snapshots = config.state_dir / "snapshots"
    snapshots.mkdir(parents=True)
    (snapshots / manifest_name(7)).write_text(json.dumps({"seq": 7, "file": None, "sha256": None}))
    with ThreadedDaemon(config) as td:
        assert td.daemon.store.latest() is None
        future = td.daemon.call_in_loop(td.daemon.snapshot_now)
        assert future.result(timeout=60).get("seq", 0) >= 8  # numbering continues past the bad one


def test_sigterm_finishes_within_the_shutdown_timeout(ipc_dir, tmp_path):
    """With a training backlog and a first (slow) snapshot export still due, the process exits
    within shutdown_timeout_s plus a generous margin for the interpreter's own teardown."""
    timeout_s, margin_s = 1.5, 1.5
    path = write_config(
        ipc_dir,
        daemon={"shutdown_timeout_s": timeout_s},
        model={"hidden": [256, 256]},
        snapshot={"every_updates": 0, "every_seconds": 0.0},
        ingest={"queue_capacity": 8192},
    )
    config = config_from(path)
    log_path = tmp_path / "ferretd.log"
    proc = start_process("ferretd", path, log_path)
    try:
        wait_for(lambda: os.path.exists(config.ingest.endpoint[6:]), timeout=60, what="ingest socket")
        x, y = digits()
        with SamplePublisher(config.ingest.endpoint, "dev") as publisher:
            for features, label in zip(x, y, strict=True):
                publisher.publish(features, int(label))
        time.sleep(1.0)  # a backlog is queued and training is under way
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout_s + 30)
        elapsed = time.monotonic() - sent
    finally:
        stop_process(proc)
    log = log_path.read_text()
    assert code == 0, log[-2000:]
    assert "checkpoint_saved" in log
    assert elapsed < timeout_s + margin_s, f"exit took {elapsed:.2f} s for a {timeout_s} s timeout\n{log[-3000:]}"
