"""The OpenMetrics endpoint of a real daemon, scraped over HTTP and read with prometheus_client's
own parsers (Prometheus text and OpenMetrics): the ledger adds up in the metrics, drops and
rejections carry their reason, accuracy, per-stage staleness, plan and snapshot age are there."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from ferretd.config import ConfigError
from tests.integration.harness import ThreadedDaemon, config_from, digits, wait_for, write_config
from transports.client import SamplePublisher


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int, openmetrics: bool = False) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if openmetrics:
        request.add_header("Accept", "application/openmetrics-text; version=1.0.0")
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
        kind = response.headers["Content-Type"]
    assert ("openmetrics" in kind) == openmetrics, kind
    families = parse_openmetrics(text) if openmetrics else parse_prometheus(text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_metrics_endpoint_scraped_with_the_real_parsers(ipc_dir):
    port = free_port()
    config = config_from(write_config(
        ipc_dir, metrics={"listen": f"127.0.0.1:{port}"}, ingest={"queue_capacity": 20},
        pipeline={"plan": "manual", "stages": 2, "workers": 2},
    ))  # fmt: skip
    x, y = digits(30)
    with ThreadedDaemon(config) as td:
        daemon = td.daemon
        daemon.call_in_loop(lambda: daemon.set_paused(True))
        with SamplePublisher(config.ingest.endpoint, "dev") as pub:
            for features, label in zip(x, y, strict=True):
                pub.publish(features, int(label))
            pub.send_raw(b"\xc1 not msgpack")
        wait_for(lambda: daemon.queue.snapshot().received == 31, what="all frames counted")
        daemon.call_in_loop(lambda: daemon.set_paused(False))
        wait_for(lambda: td.settled(31), what="queue drained")
        daemon.call_in_loop(daemon.snapshot_now).result(60)

        m = scrape(port)
        received = m[("ferretd_samples_received_total", ())]
        trained = m[("ferretd_samples_trained_total", ())]
        dropped = m[("ferretd_samples_dropped_total", (("reason", "queue_full"),))]
        invalid = m[("ferretd_samples_invalid_total", (("reason", "malformed"),))]
        queued = sum(v for (name, _), v in m.items() if name == "ferretd_samples_queued")
        assert (received, trained, dropped, invalid, queued) == (31, 20, 10, 1, 0)
        assert received == trained + dropped + invalid + queued and m[("ferretd_ledger_balanced", ())] == 1
        assert 0 <= m[("ferretd_online_accuracy", (("scope", "all"),))] <= 1
        assert m[("ferretd_plan_stages", ())] == 2
        assert ("ferretd_stage_staleness", (("stage", "1"), ("stat", "max"))) in m
        assert m[("ferretd_snapshot_seq", ())] >= 1 and m[("ferretd_snapshot_age_seconds", ())] >= 0
        assert m[("ferretd_updates_total", ())] >= 1
        assert m[("ferretd_build_info", (("model", "mlp"), ("state", "running"), ("version", "0.1.0")))] == 1

        om = scrape(port, openmetrics=True)
        assert om[("ferretd_samples_received_total", ())] == 31
        assert om[("ferretd_samples_dropped_total", (("reason", "queue_full"),))] == 10
    with pytest.raises(OSError):
        scrape(port)  # closed with the daemon


def test_metrics_listen_is_validated():
    with pytest.raises(ConfigError, match=r"\[metrics\] listen"):
        config_from_listen("localhost")


def config_from_listen(listen: str):
    from ferretd.config import load_config

    return load_config(None, env={}, overrides={"metrics": {"listen": listen}})
