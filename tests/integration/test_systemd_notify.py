"""The test plays systemd: it owns a NOTIFY_SOCKET datagram socket and watches what ferretd says.

READY once sockets are bound, periodic WATCHDOG, STATUS lines, RELOADING then READY around a
reload, STOPPING on SIGTERM; and WATCHDOG stops while the engine is stalled.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from ferretd import health as health_rules
from ferretd.systemd import Notifier
from tests.integration.harness import ThreadedDaemon, child_env, config_from, digits, wait_for, write_config
from transports.client import SamplePublisher
from transports.zmq_control import ControlClient


class FakeSystemd:
    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def collect(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str) -> list[dict[str, str]]:
        return [m for _, m in self.messages if key in m]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd(ipc_dir):
    fake = FakeSystemd(os.path.join(ipc_dir, "notify.sock"))
    yield fake
    fake.close()


def test_ready_watchdog_status_reloading_stopping(ipc_dir, systemd, tmp_path):
    path = write_config(ipc_dir)
    config = config_from(path)
    env = {**child_env(), "NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "600000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferretd", "--config", str(path)],
        env=env, stdout=open(tmp_path / "log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not systemd.with_key("READY") and time.monotonic() < deadline:
            systemd.collect(0.2)
        ready = systemd.with_key("READY")[0]
        assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid)
        assert os.path.exists(config.control.endpoint[6:]), "READY only after the sockets are bound"
        systemd.collect(2.0)
        pings = [t for t, m in systemd.messages if m.get("WATCHDOG") == "1"]
        assert len(pings) >= 4, "half of a 0.6 s watchdog interval is a ping every 0.3 s"
        assert systemd.with_key("STATUS"), "a one-line STATUS accompanies the pings"
        assert "received" in systemd.with_key("STATUS")[-1]["STATUS"]

        proc.send_signal(signal.SIGHUP)
        systemd.collect(1.5)
        kinds = [k for _, m in systemd.messages for k in m if k in ("RELOADING", "READY")]
        assert kinds.count("RELOADING") == 1 and kinds[-1] == "READY", kinds

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        systemd.collect(0.5)
        assert systemd.with_key("STOPPING")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_watchdog_stops_while_the_engine_is_stalled(ipc_dir, systemd, monkeypatch):
    """The pipeline engine hangs in its lanes while the loop thread keeps turning: pings must stop
    once nothing was trained for STALL_S although the loop itself is alive, and resume after."""
    monkeypatch.setattr(health_rules, "STALL_S", 1.0)
    config = config_from(write_config(ipc_dir, pipeline={"plan": "manual", "stages": 2, "workers": 1}))
    notifier = Notifier({"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "400000"})
    with ThreadedDaemon(config, notifier=notifier) as td:
        daemon = td.daemon
        assert daemon.learner.status()["engine"] == "pipeline", "the stall must be in the engine's own threads"
        systemd.collect(1.0)
        assert sum(m.get("WATCHDOG") == "1" for _, m in systemd.messages) >= 3

        release = threading.Event()
        executor = daemon.learner.executor

        def stall(action):  # the executor's per-action hook: every lane hangs before its next action
            release.wait(30)

        executor.jitter = stall
        x, y = digits(5)
        with SamplePublisher(config.ingest.endpoint, "dev") as publisher:
            for features, label in zip(x, y, strict=True):
                publisher.publish(features, int(label))
        try:
            wait_for(lambda: daemon.queue.snapshot().received == 5, what="the samples arrive")
            time.sleep(health_rules.STALL_S + 0.3)
            systemd.collect(0.3)  # datagrams sent before the stall was noticed
            systemd.messages.clear()
            systemd.collect(1.5)
            assert time.monotonic() - daemon.liveness.heartbeat < 0.5, "the loop thread keeps turning"
            assert [m for _, m in systemd.messages if m.get("WATCHDOG")] == [], "no pings while stalled"
            with ControlClient(config.control.endpoint, timeout_s=10) as ctl:
                health = ctl.call("health").result
            assert health["status"] == "degraded", health
            assert any("none trained" in reason for reason in health["reasons"]), health
        finally:
            executor.jitter = None
            release.set()

        wait_for(lambda: td.settled(5), what="training resumes")
        systemd.messages.clear()
        systemd.collect(1.0)
        assert sum(m.get("WATCHDOG") == "1" for _, m in systemd.messages) >= 2, "pings resume"
        with ControlClient(config.control.endpoint, timeout_s=10) as ctl:
            assert ctl.call("health").result["status"] == "healthy"
