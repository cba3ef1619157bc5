"""The ingest socket in its own process (``[ingest] decode_in = "process"``), with real processes
and sockets: a clean stop delivers every frame the child received, a killed child is restarted
and samples flow again, a bind failure is a clear error, and a daemon decoding in the child
trains and counts as before."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import psutil
import pytest
import zmq

from ferretd.messages import RejectReason, Sample
from tests.contracts.test_transports import free_port
from tests.integration.harness import config_from, digits, start_process, stop_process, wait_for, write_config
from transports.client import SamplePublisher
from transports.wire import pack
from transports.zmq_control import ControlClient
from transports.zmq_ingest_process import DecodeSpec, IngestProcess, IngestStartError

SPEC = DecodeSpec((4,), 3, 4096)


class Collector:
    """What the ingest process handed over, as the daemon's ingest component would see it."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.rejected: list[RejectReason] = []
        self.lock = threading.Lock()

    def on_samples(self, samples: list[Sample]) -> None:
        with self.lock:
            self.samples.extend(samples)

    def on_reject(self, reason: RejectReason, detail: str) -> None:
        with self.lock:
            self.rejected.append(reason)

    def count(self) -> int:
        with self.lock:
            return len(self.samples) + len(self.rejected)


def start(endpoint: str, got: Collector) -> IngestProcess:
    ingest = IngestProcess(endpoint, got.on_samples, got.on_reject, spec=SPEC)
    ingest.start()
    return ingest


def test_a_clean_stop_delivers_every_frame_the_child_received(ipc_dir: str) -> None:
    got = Collector()
    endpoint = f"ipc://{ipc_dir}/ingest.sock"
    ingest = start(endpoint, got)
    features = np.arange(4, dtype=np.float32)
    with SamplePublisher(endpoint, "dev", send_timeout_ms=10_000) as publisher:
        for i in range(3000):
            publisher.publish(features + i, i % 3)
        publisher.send_raw(b"\xc1garbage")
        wait_for(lambda: ingest.frames > 0, what="the first batch")
        ingest.stop()  # while frames are still on their way
    assert ingest.child_frames is not None, "the child did not stop cleanly"
    assert ingest.frames == ingest.child_frames > 0, "a frame the child took was lost on stop"
    assert got.count() == ingest.frames
    for sample in got.samples:  # each sample's own values, in order
        np.testing.assert_array_equal(sample.features, features + sample.seq)
        assert sample.label == sample.seq % 3


def test_a_killed_child_is_restarted_and_samples_flow_again(ipc_dir: str) -> None:
    got = Collector()
    endpoint = f"ipc://{ipc_dir}/ingest.sock"
    ingest = start(endpoint, got)
    try:
        with SamplePublisher(endpoint, "dev", send_timeout_ms=10_000) as publisher:
            assert publisher.publish(np.zeros(4, np.float32), 1)
            wait_for(lambda: got.count() == 1, what="the first sample")
            first = ingest.pid
            os.kill(first, signal.SIGKILL)
            wait_for(lambda: ingest.restarts == 1, timeout=30, what="the restart")
            assert ingest.pid != first

            def delivered() -> bool:  # the device reconnects to the new socket by itself
                publisher.publish(np.ones(4, np.float32), 2)
                return len(got.samples) > 1

            wait_for(delivered, timeout=30, interval=0.2, what="a sample through the new child")
        assert got.samples[-1].label == 2
    finally:
        ingest.stop()


def test_a_bind_failure_is_a_clear_error() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    context = zmq.Context()
    taken = context.socket(zmq.PULL)
    taken.bind(endpoint)
    try:
        with pytest.raises(IngestStartError, match=r"ingest bind failed on tcp://127\.0\.0\.1"):
            IngestProcess(endpoint, lambda s: None, lambda r, d: None, spec=SPEC)
    finally:
        taken.close(linger=0)
        context.term()


def test_a_daemon_decoding_in_a_child_trains_and_its_counters_add_up(ipc_dir: str, tmp_path) -> None:
    path = write_config(ipc_dir, ingest={"decode_in": "process"})
    config = config_from(path)
    proc = start_process("ferretd", path, tmp_path / "ferretd.log")
    try:
        wait_for(lambda: os.path.exists(config.control.endpoint[6:]), what="control socket")
        x, y = digits(300)
        with SamplePublisher(config.ingest.endpoint, "dev", send_timeout_ms=10_000) as publisher:
            for i in range(300):
                publisher.publish(x[i], int(y[i]))
            publisher.send_raw(pack({"v": 1}))

        def status() -> dict:
            with ControlClient(config.control.endpoint, timeout_s=10) as ctl:
                reply = ctl.call("status")
            assert reply.ok
            return reply.result

        counters = wait_for(
            lambda: (c := status()["counters"])["received"] == 301 and c["queued"] == 0 and c, what="every frame"
        )
        assert counters["trained"] == 300
        assert counters["invalid"] == {"malformed": 1}
        assert counters["balanced"]
        assert status()["sockets"]["ingest_restarts"] == 0

        # The child dies (a decoder crash, the OOM killer): the daemon restarts it and trains on.
        (child,) = [c for c in psutil.Process(proc.pid).children() if "zmq_ingest_process" in " ".join(c.cmdline())]
        child.kill()
        wait_for(lambda: status()["sockets"]["ingest_restarts"] == 1, timeout=30, what="the restart")
        with SamplePublisher(config.ingest.endpoint, "dev-2", send_timeout_ms=10_000) as publisher:

            def trained_again() -> bool:
                publisher.publish(x[0], int(y[0]))
                return status()["counters"]["trained"] > 300

            wait_for(trained_again, timeout=30, interval=0.2, what="training after the restart")
        assert status()["counters"]["balanced"]
    finally:
        assert stop_process(proc) == 0
