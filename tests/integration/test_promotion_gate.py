"""A live daemon with the promotion gate on: periodic snapshots wait for a held-back window,
each decision is counted, and only promoted snapshots are exported and announced."""

from __future__ import annotations

from tests.integration.harness import ThreadedDaemon, config_from, digits, wait_for, write_config
from tests.integration.test_metrics import free_port, scrape
from transports.client import SamplePublisher


def test_a_daemon_with_the_gate_exports_only_what_it_promotes(ipc_dir):
    port = free_port()
    config = config_from(write_config(ipc_dir, snapshot={"every_updates": 40, "every_seconds": 0.0,
                                                         "gate_window": 20, "gate_tolerance": 0.02},
                                      metrics={"listen": f"127.0.0.1:{port}"}))  # fmt: skip
    x, y = digits(400)
    with ThreadedDaemon(config) as td, SamplePublisher(config.ingest.endpoint, "dev") as pub:
        sent = 0

        def decided_twice():
            # Feed 20 arrivals at a time until two candidates were judged (a candidate taken late
            # in a batch needs the next arrivals to fill its window).
            nonlocal sent
            gate = td.daemon.status()["snapshot"]["gate"]
            if gate["promoted"] + gate["held_back"] >= 2:
                return gate
            for features, label in zip(x[sent : sent + 20], y[sent : sent + 20], strict=True):
                pub.publish(features, int(label))
            sent += 20
            wait_for(lambda: td.settled(sent), what="trained")
            return None

        gate = wait_for(decided_twice, timeout=60, interval=0.0, what="two gate decisions")
        assert sent <= 400
        wait_for(lambda: not td.daemon.exporter.busy, what="exports done")
        assert gate["last"]["window"] == 20 and gate["last"]["decision"] in ("promoted", "held_back")
        assert td.daemon.exporter.exported == gate["promoted"], "only promoted snapshots are exported"
        assert len(td.daemon.store.sequences()) == gate["promoted"]
        m = scrape(port)
        assert m[("ferretd_snapshot_gate_decisions_total", (("decision", "promoted"),))] == gate["promoted"]
        assert m[("ferretd_snapshot_gate_decisions_total", (("decision", "held_back"),))] == gate["held_back"]
