"""The whole product path with real sockets, real torch and a real ferret-infer process:
publish -> learn -> snapshot -> announce -> hot-swap in ferret-infer -> predictions."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from tests.integration.harness import (
    ThreadedDaemon,
    config_from,
    digits,
    start_process,
    stop_process,
    wait_for,
    write_config,
)
from transports.client import InferenceClient, SamplePublisher, SnapshotSubscriber
from transports.zmq_control import ControlClient

N_SAMPLES = 600


@pytest.fixture
def config(ipc_dir):
    return config_from(write_config(ipc_dir))


def test_publish_learn_snapshot_and_hot_swap(config, ipc_dir, tmp_path):
    x, y = digits(N_SAMPLES + 50)
    with ThreadedDaemon(config) as td:
        daemon = td.daemon
        subscriber = SnapshotSubscriber(config.snapshot.announce_endpoint, config.snapshot.latest_endpoint)
        infer = start_process("ferretd.inference.server", ipc_dir + "/ferretd.toml", tmp_path / "infer.log")
        try:
            with SamplePublisher(config.ingest.endpoint, "device-a") as publisher:
                for features, label in zip(x[:N_SAMPLES], y[:N_SAMPLES], strict=True):
                    assert publisher.publish(features, int(label))
            wait_for(lambda: td.settled(N_SAMPLES), what="all samples trained")

            ledger = daemon.queue.snapshot()
            assert ledger.received == N_SAMPLES
            assert ledger.trained == N_SAMPLES
            assert ledger.dropped == {} and ledger.invalid == {}
            assert ledger.queued == 0 and ledger.balanced
            assert daemon.learner.updates == N_SAMPLES

            announced = wait_for(lambda: subscriber.poll(100), what="a snapshot announcement")
            assert announced["seq"] >= 1 and announced["updates"] >= 100

            client = InferenceClient(config.inference.endpoint, timeout_ms=5000)
            wait_for(lambda: client.info().get("model_seq"), what="ferret-infer serving a model")

            # Hot swap under load: a client hammers ferret-infer while new snapshots land.
            failures: list[str] = []
            seen_seqs: set[int] = set()
            stop = threading.Event()

            def hammer() -> None:
                with InferenceClient(config.inference.endpoint, timeout_ms=5000) as c:
                    i = 0
                    while not stop.is_set():
                        try:
                            seen_seqs.add(c.predict(x[i % len(x)]).model_seq)
                        except Exception as exc:  # any failed request fails the test
                            failures.append(repr(exc))
                        i += 1

            thread = threading.Thread(target=hammer)
            thread.start()
            with ControlClient(config.control.endpoint, timeout_s=30) as ctl:
                for round_ in range(3):
                    with SamplePublisher(config.ingest.endpoint, "device-b") as publisher:
                        for features, label in zip(x[N_SAMPLES:], y[N_SAMPLES:], strict=True):
                            publisher.publish(features, int(label))
                    wait_for(lambda r=round_: td.settled(N_SAMPLES + 50 * (r + 1)), what="extra samples trained")
                    reply = ctl.call("snapshot")
                    assert reply.ok, reply.error
                    target = reply.result["manifest"]["seq"]
                    wait_for(lambda t=target: client.info()["model_seq"] == t, what=f"swap to snapshot {target}")
            stop.set()
            thread.join(10)
            assert failures == []
            assert len(seen_seqs) >= 3, seen_seqs

            # The served model is the torch model: no training happened since the last snapshot.
            torch_model = daemon.learner.export_module()
            latest = daemon.store.latest()
            assert client.info()["model_seq"] == latest.seq
            for features in x[:20]:
                served = client.predict(features)
                with torch.no_grad():
                    expected = torch.softmax(torch_model(torch.from_numpy(features[None])), dim=1)[0].numpy()
                np.testing.assert_allclose(served.probabilities, expected, rtol=1e-5, atol=1e-5)
                assert served.label == int(np.argmax(expected))
                assert served.model_seq == latest.seq
            client.close()
        finally:
            subscriber.close()
            assert stop_process(infer) == 0
    assert td.exit_code == 0
    final = td.daemon.queue.snapshot()
    assert final.balanced and final.trained == final.received == N_SAMPLES + 150
