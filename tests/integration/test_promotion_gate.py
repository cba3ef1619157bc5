"""A live daemon with the promotion gate on: periodic snapshots wait for a held-back window,
each decision is counted, and only promoted snapshots are exported and announced."""

from __future__ import annotations

from tests.integration.harness import ThreadedDaemon, config_from, digits, wait_for, write_config
from transports.client import SamplePublisher


def test_a_daemon_with_the_gate_exports_only_what_it_promotes(ipc_dir):
    config = config_from(write_config(ipc_dir, snapshot={"every_updates": 40, "every_seconds": 0.0,
                                                         "gate_window": 20, "gate_tolerance": 0.02}))  # fmt: skip
    x, y = digits(100)
    with ThreadedDaemon(config) as td:
        with SamplePublisher(config.ingest.endpoint, "dev") as pub:
            for features, label in zip(x, y, strict=True):
                pub.publish(features, int(label))
        wait_for(lambda: td.settled(100), what="trained")
        gate = wait_for(lambda: (g := td.daemon.status()["snapshot"]["gate"]) and not g["pending"]
                        and g["promoted"] + g["held_back"] == 2 and g, what="two gate decisions")  # fmt: skip
        wait_for(lambda: not td.daemon.exporter.busy, what="exports done")
        assert gate["last"]["window"] == 20 and gate["last"]["updates"] == 80
        assert td.daemon.exporter.exported == gate["promoted"], "only promoted snapshots are exported"
        assert len(td.daemon.store.sequences()) == gate["promoted"]
