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


def test_ferret_infer_metrics_with_a_latency_histogram(ipc_dir, tmp_path):
    from tests.integration.harness import start_process, stop_process
    from transports.client import InferenceClient

    port = free_port()
    path = write_config(ipc_dir, inference={"metrics_listen": f"127.0.0.1:{port}"})
    config = config_from(path)
    x, _ = digits(5)
    with ThreadedDaemon(config) as td:
        manifest = td.daemon.call_in_loop(td.daemon.snapshot_now).result(60)
        infer = start_process("ferretd.inference.server", path, tmp_path / "infer.log")
        try:
            with InferenceClient(config.inference.endpoint, timeout_ms=5000) as client:
                wait_for(lambda: client.info().get("model_seq") == manifest["seq"], timeout=60, what="model served")
                for features in x:
                    assert client.predict(features).model_seq == manifest["seq"]
                with pytest.raises(Exception, match="input shape"):
                    client.predict(x[0][:10])
            m = scrape(port)
            assert m[("ferret_infer_predict_latency_seconds_count", ())] == 5, "one observation per prediction"
            assert m[("ferret_infer_predict_latency_seconds_bucket", (("le", "+Inf"),))] == 5
            assert m[("ferret_infer_requests_failed_total", (("reason", "bad_request"),))] == 1
            assert m[("ferret_infer_requests_total", ())] >= 7  # info polls + 5 predictions + the bad one
            assert m[("ferret_infer_model_seq", ())] == manifest["seq"]
            assert m[("ferret_infer_model_age_seconds", ())] >= 0
            om = scrape(port, openmetrics=True)
            assert om[("ferret_infer_predict_latency_seconds_count", ())] == 5
        finally:
            assert stop_process(infer) == 0
