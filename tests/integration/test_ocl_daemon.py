"""Every OCL method through the real daemon: selected by ``[ocl] method``, trains what ZeroMQ
delivers with the ledger balanced, shows its state in status, exports a snapshot, and resumes its
state (replay buffer, old model, importances) from the shutdown checkpoint."""

from __future__ import annotations

import pytest
import torch

from tests.integration.harness import ThreadedDaemon, config_from, digits, wait_for, write_config
from transports.client import SamplePublisher

METHODS = ["er", "mir", "lwf", "mas"]
N = 240


def publish(config, x, y, device: str, until) -> None:
    with SamplePublisher(config.ingest.endpoint, device) as publisher:
        for features, label in zip(x, y, strict=True):
            publisher.publish(features, int(label))
        wait_for(until, timeout=60, what="samples settled")  # keep the publisher open until delivered


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_exports_and_resumes_in_the_daemon(ipc_dir, method: str) -> None:
    ocl = {"method": method, "lwf_refresh": 100, "mas_refresh": 100, "replay_bytes": 64 * 4 * 100}
    config = config_from(write_config(ipc_dir, ocl=ocl, snapshot={"every_updates": 100, "every_seconds": 0.0}))
    x, y = digits(N)
    with ThreadedDaemon(config) as td:
        assert td.daemon.config.ocl.method == method
        publish(config, x, y, "dev", lambda: td.settled(N))
        ledger = td.daemon.queue.snapshot()
        assert ledger.trained == N and ledger.balanced
        status = td.daemon.learner.status()
        assert status["ocl"]["method"] == method
        wait_for(lambda: td.daemon.store.latest() is not None, what="a snapshot")
        weights = td.daemon.learner.export_module().state_dict()
        assert all(bool(torch.isfinite(t).all()) for t in weights.values())
    assert td.exit_code == 0
    before = td.daemon.learner.ocl.stats()  # type: ignore[attr-defined]
    assert before.get("bytes", 0) > 0  # the method holds something after 240 samples

    with ThreadedDaemon(config) as td2:
        assert td2.daemon.learner.ocl.stats() == before  # type: ignore[attr-defined]
        publish(config, x[:40], y[:40], "dev-2", lambda: td2.settled(N + 40))
        assert td2.daemon.queue.snapshot().balanced
    assert td2.exit_code == 0
