"""Resume across restarts: the full state comes back (weights, counters, online accuracy), also
when the restart runs a different engine or partition (weights carry over by parameter name)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.integration.harness import ThreadedDaemon, config_from, digits, wait_for, write_config
from transports.client import SamplePublisher


def train(config, n, device="dev"):
    x, y = digits(n)
    with SamplePublisher(config.ingest.endpoint, device) as publisher:
        for features, label in zip(x, y, strict=True):
            publisher.publish(features, int(label))


def outputs(daemon) -> np.ndarray:
    x, _ = digits(32)
    with torch.no_grad():
        return daemon.learner.export_module()(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"stages": 1, "workers": 1}, {"stages": 1, "workers": 1}),
        ({"stages": 2, "workers": 2}, {"stages": 2, "workers": 2}),
        ({"stages": 2, "workers": 2}, {"stages": 1, "workers": 1}),
        ({"stages": 1, "workers": 1}, {"stages": 3, "workers": 1}),
    ],
)
def test_restart_resumes_weights_counters_and_accuracy(ipc_dir, first, second):
    config = config_from(write_config(ipc_dir, pipeline=first))
    with ThreadedDaemon(config) as td:
        train(config, 200)
        wait_for(lambda: td.settled(200), what="first run trained")
    assert td.exit_code == 0
    before_out, before_score = outputs(td.daemon), td.daemon.score_summary()
    before_ledger = td.daemon.queue.snapshot()

    config2 = config_from(write_config(ipc_dir, pipeline=second))
    with ThreadedDaemon(config2) as td2:
        ledger = td2.daemon.queue.snapshot()
        assert (ledger.received, ledger.trained) == (before_ledger.received, before_ledger.trained)
        assert td2.daemon.score_summary() == before_score
        np.testing.assert_allclose(outputs(td2.daemon), before_out, rtol=1e-6, atol=1e-6)
        train(config2, 50, device="dev-2")
        wait_for(lambda: td2.settled(250), what="second run trained")
        assert td2.daemon.queue.snapshot().balanced
    assert td2.exit_code == 0
