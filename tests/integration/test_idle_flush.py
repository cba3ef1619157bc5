"""A stream that goes quiet gets its last partial microbatch trained (real daemon, real sockets).

Without the idle flush the learner would hold the remainder of a microbatch until more samples
came, so ``trained`` would stop short of ``received`` for as long as the devices are quiet."""

from __future__ import annotations

import time

import pytest

from tests.integration.harness import ThreadedDaemon, config_from, digits, wait_for, write_config
from transports.client import SamplePublisher

SAMPLES = 21  # two full microbatches of 8 and five samples left over


def _publish_burst(endpoint: str) -> None:
    x, y = digits(SAMPLES)
    with SamplePublisher(endpoint, "dev") as pub:
        for features, label in zip(x, y, strict=True):
            assert pub.publish(features, int(label))


@pytest.mark.parametrize("stages", [1, 2])  # the sequential learner, the pipeline engine
def test_the_remainder_of_a_microbatch_is_trained_once_the_stream_is_quiet(ipc_dir, stages):
    pipeline = {"plan": "manual", "stages": stages, "workers": 1}
    config = config_from(write_config(ipc_dir, training={"microbatch": 8}, pipeline=pipeline))
    with ThreadedDaemon(config) as td:
        daemon = td.daemon
        _publish_burst(config.ingest.endpoint)
        wait_for(lambda: daemon.queue.snapshot().received == 21, what="all received")
        wait_for(lambda: daemon.queue.snapshot().trained == 21, timeout=15, what="the remainder trained")
        ledger = daemon.queue.snapshot()
        assert ledger.balanced and ledger.in_flight == 0 and ledger.waiting == 0
        assert daemon.score.seen == 21


def test_idle_flush_off_keeps_the_remainder_for_the_next_samples(ipc_dir):
    """``[training] idle_flush_s = 0``: the learner waits for a full microbatch, as before the flush existed."""
    training = {"microbatch": 8, "idle_flush_s": 0.0}
    config = config_from(write_config(ipc_dir, training=training, pipeline={"plan": "manual"}))
    with ThreadedDaemon(config) as td:
        daemon = td.daemon
        _publish_burst(config.ingest.endpoint)
        wait_for(lambda: daemon.queue.snapshot().trained == 16, what="two full microbatches trained")
        time.sleep(2.0)  # twice the default quiet time
        ledger = daemon.queue.snapshot()
        assert ledger.trained == 16 and ledger.in_flight == 5 and ledger.balanced
