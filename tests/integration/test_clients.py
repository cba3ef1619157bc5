"""The client library as a device developer meets it (issue 14): ``SnapshotSubscriber`` catches
up on start without being told to and is a context manager; ``SamplePublisher.publish`` says
False when no daemon listens (tcp and ipc), True when one does; ``transports.client`` imports
without torch or the daemon's heavy dependencies. Real daemon, real sockets."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import zmq

from tests.integration.harness import ROOT, ThreadedDaemon, child_env, config_from, digits, wait_for, write_config
from transports.client import SamplePublisher, SnapshotSubscriber
from transports.codec import pack
from transports.zmq_snapshots import TOPIC


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_subscriber_catches_up_on_start_even_before_the_daemon_is_up(ipc_dir):
    config = config_from(write_config(ipc_dir))
    with ThreadedDaemon(config) as td:
        first = td.daemon.call_in_loop(td.daemon.snapshot_now).result(60)
        # No catch_up() call: constructing it asks for the latest, and poll() hands it out.
        with SnapshotSubscriber(config.snapshot.announce_endpoint, config.snapshot.latest_endpoint) as sub:
            manifest = sub.poll(10_000)
            assert manifest is not None and manifest["seq"] == first["seq"]
            assert sub.poll(200) is None, "the same snapshot is not handed out twice"
            fetched = sub.fetch(first["seq"])
            assert fetched is not None and fetched[0]["sha256"] == first["sha256"]
        assert sub._sub.closed and sub._req.closed

    # A subscriber that starts while the daemon is down gets the current snapshot once it is up.
    with SnapshotSubscriber(config.snapshot.announce_endpoint, config.snapshot.latest_endpoint) as sub:
        assert sub.poll(100) is None
        with ThreadedDaemon(config):
            manifest = wait_for(lambda: sub.poll(200), what="the latest manifest after the daemon started")
            assert manifest["seq"] >= first["seq"]


def test_publish_is_false_without_a_daemon_and_true_with_one(ipc_dir):
    x, y = digits(3)
    port = free_tcp_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    with SamplePublisher(endpoint, "dev", send_timeout_ms=200) as pub:
        assert pub.publish(x[0], int(y[0])) is False, "nothing listens on tcp: not sent"
        assert (pub.sent, pub.unsent) == (0, 1)
    with SamplePublisher(f"ipc://{ipc_dir}/nobody.sock", "dev", send_timeout_ms=200) as pub:
        assert pub.publish(x[0], int(y[0])) is False, "nothing listens on ipc: not sent"

    config = config_from(write_config(ipc_dir, ingest={"endpoint": endpoint}, security={"insecure": True}))
    with ThreadedDaemon(config) as td, SamplePublisher(endpoint, "dev", send_timeout_ms=5000) as pub:
        assert all(pub.publish(features, int(label)) for features, label in zip(x, y, strict=True))
        wait_for(lambda: td.daemon.queue.snapshot().received == 3, what="three samples received")
        assert (pub.sent, pub.unsent) == (3, 0)


BLOCKER = """
import sys
HEAVY = {"torch", "onnx", "onnxruntime", "psutil", "sklearn", "matplotlib"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError("device client must not import " + name)
sys.meta_path.insert(0, Block())
from transports.client import InferenceClient, SamplePublisher, SnapshotSubscriber
import numpy as np
with SamplePublisher("ipc:///nonexistent/x.sock", "dev", send_timeout_ms=10) as pub:
    print(pub.publish(np.zeros(4, np.float32), 1))
print(sorted(m for m in sys.modules if m.startswith("ferretd")))
"""


def test_the_device_client_imports_without_torch_or_the_daemon():
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER], capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == "False"
    assert set(eval(out[1])) <= {"ferretd", "ferretd.messages", "ferretd.logs"}, out[1]


@pytest.mark.parametrize("garbage", [[TOPIC, b"\xc1"], [TOPIC], [TOPIC, b"a", b"b"], [TOPIC, pack([1, 2])]])
def test_subscriber_ignores_garbage_announcements(ipc_dir, garbage):
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.bind(f"ipc://{ipc_dir}/ann.sock")
    try:
        with SnapshotSubscriber(f"ipc://{ipc_dir}/ann.sock", f"ipc://{ipc_dir}/latest.sock") as sub:

            def garbage_then_good() -> dict | None:
                pub.send_multipart(garbage)
                pub.send_multipart([TOPIC, pack({"seq": 4})])
                return sub.poll(50)

            assert wait_for(garbage_then_good, what="the good announcement")["seq"] == 4
    finally:
        pub.close(linger=0)
