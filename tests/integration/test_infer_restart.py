"""ferret-infer restarts without waiting for the next snapshot; ferretd exits 0 on SIGTERM,
with every sample accounted for."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.integration.harness import config_from, digits, start_process, stop_process, wait_for, write_config
from transports.client import InferenceClient, SamplePublisher
from transports.zmq_control import ControlClient


@pytest.fixture
def running(ipc_dir, tmp_path):
    path = write_config(ipc_dir, snapshot={"every_updates": 0, "every_seconds": 0.0})
    config = config_from(path)
    daemon = start_process("ferretd", path, tmp_path / "ferretd.log")
    wait_for(lambda: os.path.exists(config.control.endpoint[6:]), what="control socket")
    yield path, config, daemon
    stop_process(daemon)


def _status(config):
    with ControlClient(config.control.endpoint, timeout_s=10) as ctl:
        return ctl.call("status").result


def _train_and_snapshot(config, n: int) -> tuple:
    """Publish ``n`` digits, wait until trained, force a snapshot; returns (x, its seq)."""
    x, y = digits(n)
    with SamplePublisher(config.ingest.endpoint, "dev") as publisher:
        for features, label in zip(x, y, strict=True):
            publisher.publish(features, int(label))
    wait_for(lambda: _status(config)["counters"]["trained"] == n, what="training")
    with ControlClient(config.control.endpoint, timeout_s=30) as ctl:
        return x, ctl.call("snapshot").result["manifest"]["seq"]


def test_restarted_infer_loads_latest_without_a_new_snapshot(running, tmp_path):
    path, config, _daemon = running
    x, seq = _train_and_snapshot(config, 150)

    infer = start_process("ferretd.inference.server", path, tmp_path / "infer1.log")
    client = InferenceClient(config.inference.endpoint, timeout_ms=3000)
    wait_for(lambda: client.info()["model_seq"] == seq, what="first ferret-infer serving")
    infer.send_signal(signal.SIGKILL)
    infer.wait(10)

    started = time.monotonic()
    infer = start_process("ferretd.inference.server", path, tmp_path / "infer2.log")
    try:
        wait_for(lambda: client.info()["model_seq"] == seq, timeout=15, what="restarted ferret-infer serving")
        assert time.monotonic() - started < 15
        assert _status(config)["snapshot"]["seq"] == seq, "no new snapshot was needed"
        assert client.predict(x[0]).model_seq == seq
    finally:
        client.close()
        assert stop_process(infer) == 0


def test_sigterm_with_queued_samples_exits_zero_and_accounts_for_all(running, tmp_path):
    _path, config, daemon = running
    x, y = digits(400)
    with SamplePublisher(config.ingest.endpoint, "dev") as publisher:
        for features, label in zip(x, y, strict=True):
            publisher.publish(features, int(label))
    wait_for(lambda: _status(config)["counters"]["received"] == 400, what="all received")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    log_text = (tmp_path / "ferretd.log").read_text()
    import json

    stopped = [json.loads(line) for line in log_text.splitlines() if '"ferretd_stopped"' in line]
    assert len(stopped) == 1
    final = stopped[0]
    assert final["balanced"] and final["queued"] == 0
    assert final["trained"] + final["dropped_total"] == 400


def test_infer_keeps_serving_while_the_trainer_restarts(running, tmp_path):
    path, config, daemon = running
    x, seq = _train_and_snapshot(config, 100)
    infer = start_process("ferretd.inference.server", path, tmp_path / "infer.log")
    client = InferenceClient(config.inference.endpoint, timeout_ms=3000)
    try:
        wait_for(lambda: client.info()["model_seq"] == seq, what="serving")
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        for features in x[:50]:  # the trainer is gone: predictions continue from the last good model
            assert client.predict(features).model_seq == seq
        restarted = start_process("ferretd", path, tmp_path / "ferretd-2.log")
        try:
            wait_for(lambda: _status(config)["state"] == "running", what="trainer back")
            with ControlClient(config.control.endpoint, timeout_s=30) as ctl:
                newer = ctl.call("snapshot").result["manifest"]["seq"]
            assert newer > seq, "snapshot numbers continue across restarts"
            wait_for(lambda: client.info()["model_seq"] == newer, what="infer follows the restarted trainer")
        finally:
            assert stop_process(restarted) == 0
    finally:
        client.close()
        assert stop_process(infer) == 0
