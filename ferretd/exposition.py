"""The OpenMetrics / Prometheus endpoint (``[metrics] listen = "127.0.0.1:9108"``; off when empty).

A :class:`StatusCollector` turns the same status mapping that ``ferretctl status --json`` shows
into metric families at scrape time, so there is no second set of counters to keep in step:
the ledger (received, trained, queued, dropped and invalid by reason), online accuracy (all
arrivals and the window) with its baselines, train delay, updates, per-stage staleness, live
versions and compensation lambda, the plan (stages, active workers, budget, predicted memory),
memory, snapshot sequence and age, checkpoints and drift. The HTTP server is
``prometheus_client``'s own, on a daemon thread; ``prometheus_client`` is imported only when the
endpoint is on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog

log = structlog.get_logger(__name__)

Status = Callable[[], dict[str, Any]]


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9108"``, ``"[::1]:9108"`` or ``":9108"`` (all interfaces) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class StatusCollector:
    """A custom collector: every scrape reads ``status()`` once and yields families from it."""

    def __init__(self, status: Status, prefix: str = "ferretd") -> None:
        self._status = status
        self._p = prefix

    def describe(self) -> list[Any]:
        return []  # families depend on the status (e.g. one series per stage): no fixed description

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        s = self._status()
        p = self._p
        c, a, t = s["counters"], s["accuracy"], s["training"]
        snap, mem, plan = s.get("snapshot") or {}, s.get("memory") or {}, s.get("plan") or {}

        def gauge(name: str, doc: str, value: Any, unit: str = "") -> Iterator[Any]:
            if isinstance(value, int | float) and not isinstance(value, bool):
                yield GaugeMetricFamily(f"{p}_{name}", doc, value=float(value), unit=unit)

        yield InfoMetricFamily(
            f"{p}_build", "ferretd version, state and model", value={
                "version": str(s.get("version")), "state": str(s.get("state")), "model": str(t.get("model")),
            },
        )  # fmt: skip
        yield from gauge("uptime_seconds", "seconds since the daemon started", s.get("uptime_s"))
        for key, doc in (("received", "samples received"), ("trained", "samples trained")):
            yield CounterMetricFamily(f"{p}_samples_{key}", doc, value=c[key])
        for key, doc in (("dropped", "samples dropped, by reason"), ("invalid", "frames rejected, by reason")):
            family = CounterMetricFamily(f"{p}_samples_{key}", doc, labels=["reason"])
            for reason, n in sorted((c.get(key) or {}).items()):
                family.add_metric([reason], n)
            yield family
        queued = GaugeMetricFamily(f"{p}_samples_queued", "samples queued (waiting + in flight)", labels=["where"])
        queued.add_metric(["waiting"], c["waiting"])
        queued.add_metric(["in_flight"], c["in_flight"])
        yield queued
        yield from gauge("ledger_balanced", "1: received = trained + dropped + invalid + queued", int(c["balanced"]))
        accuracy = GaugeMetricFamily(f"{p}_online_accuracy", "prequential online accuracy", labels=["scope"])
        for scope, key in (("all", "online_accuracy"), ("window", "window_accuracy"),
                           ("nochange_baseline", "nochange_accuracy"), ("majority_baseline", "majority_accuracy")):
            if a.get(key) is not None:
                accuracy.add_metric([scope], a[key])
        yield accuracy  # fmt: skip
        yield CounterMetricFamily(f"{p}_updates", "optimizer updates", value=t["updates"])
        yield from gauge("train_delay_seconds", "mean arrival-to-training delay", t.get("mean_delay_s"))
        yield from stage_families(p, s.get("engine") or {})
        yield from gauge("plan_stages", "pipeline stages of the running plan", len(plan.get("partition") or []) + 1)
        workers = [w for w in plan.get("workers") or [] if w.get("active")]
        yield from gauge("plan_active_workers", "active workers of the running plan", len(workers))
        yield from gauge("plan_budget_bytes", "memory budget the plan was made for", plan.get("budget_bytes"))
        yield from gauge("plan_predicted_memory_bytes", "predicted peak memory", plan.get("predicted_memory_bytes"))
        yield from gauge("memory_rss_bytes", "resident set size", mem.get("rss_bytes"))
        yield from gauge("memory_available_bytes", "memory available on the box", mem.get("available_bytes"))
        yield from gauge("snapshot_seq", "sequence of the newest snapshot", snap.get("seq"))
        if snap.get("created_at") is not None:
            yield from gauge("snapshot_age_seconds", "age of the newest snapshot", time.time() - snap["created_at"])
        yield CounterMetricFamily(f"{p}_snapshots_exported", "snapshots exported", value=snap.get("exported", 0))
        yield CounterMetricFamily(f"{p}_snapshots_failed", "snapshot exports failed", value=snap.get("failed", 0))
        gate = snap.get("gate")
        if gate:
            decisions = CounterMetricFamily(f"{p}_snapshot_gate_decisions", "promotion gate decisions",
                                            labels=["decision"])  # fmt: skip
            decisions.add_metric(["promoted"], gate["promoted"])
            decisions.add_metric(["held_back"], gate["held_back"])
            yield decisions
        checkpoint = s.get("checkpoint") or {}
        if checkpoint:
            yield CounterMetricFamily(f"{p}_checkpoints_saved", "checkpoints written", value=checkpoint.get("saved", 0))
            yield CounterMetricFamily(f"{p}_checkpoints_failed", "checkpoint writes failed",
                                      value=checkpoint.get("failed", 0))  # fmt: skip
        drift = s.get("drift") or {}
        if "detections" in drift:
            yield CounterMetricFamily(f"{p}_drift_detections", "concept drifts detected", value=drift["detections"])


def stage_families(p: str, engine: dict[str, Any]) -> Iterator[Any]:
    """Per pipeline stage: staleness (max, mean), live weight versions, compensation lambda."""
    from prometheus_client.core import GaugeMetricFamily

    stages = engine.get("stage") or []
    if not stages:
        return
    staleness = GaugeMetricFamily(f"{p}_stage_staleness", "gradient staleness per stage", labels=["stage", "stat"])
    versions = GaugeMetricFamily(f"{p}_stage_live_versions", "weight versions alive per stage", labels=["stage"])
    lam = GaugeMetricFamily(f"{p}_stage_compensation_lambda", "compensation lambda per stage", labels=["stage"])
    compensator = engine.get("compensator") or {}
    for stage in stages:
        j = str(stage.get("stage"))
        for stat in ("max", "mean"):
            value = stage.get(f"{stat}_staleness")
            if isinstance(value, int | float):
                staleness.add_metric([j, stat], value)
        if isinstance(stage.get("live_versions"), int | float):
            versions.add_metric([j], stage["live_versions"])
        value = (compensator.get(j) or {}).get("lambda")
        if isinstance(value, int | float):
            lam.add_metric([j], value)
    yield from (staleness, versions, lam)


class MetricsEndpoint:
    """``prometheus_client``'s HTTP server for one collector, on its own registry."""

    def __init__(self, listen: str, status: Status, prefix: str = "ferretd") -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        host, port = parse_listen(listen)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(status, prefix))
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = self._server.server_port
        log.info("metrics_listening", address=f"{host}:{self.port}", path="/metrics")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class InferenceCollector:
    """ferret-infer's state at scrape time: requests, failures by reason, swaps, refused
    snapshots by reason, the served snapshot's sequence, age and manifest accuracy."""

    def __init__(self, server: Any, prefix: str = "ferret_infer") -> None:
        self._server = server
        self._p = prefix

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        info, p = self._server.info(), self._p
        yield CounterMetricFamily(f"{p}_requests", "requests answered", value=info["requests"])
        failed = CounterMetricFamily(f"{p}_requests_failed", "requests refused, by reason", labels=["reason"])
        for reason, n in sorted((info.get("bad_requests") or {}).items()):
            failed.add_metric([reason], n)
        yield failed
        yield CounterMetricFamily(f"{p}_model_swaps", "models swapped in", value=info.get("swaps", 0))
        refused = CounterMetricFamily(f"{p}_snapshots_refused", "snapshots refused, by reason", labels=["reason"])
        for reason, n in sorted((info.get("rejected_by") or {}).items()):
            refused.add_metric([reason], n)
        yield refused
        model = self._server.slot.current
        if model is not None:
            manifest = model.manifest
            yield GaugeMetricFamily(f"{p}_model_seq", "sequence of the served snapshot", value=model.seq)
            yield GaugeMetricFamily(f"{p}_model_age_seconds", "age of the served snapshot",
                                    value=max(0.0, time.time() - manifest.created_at))  # fmt: skip
            if manifest.online_accuracy is not None:
                yield GaugeMetricFamily(f"{p}_model_online_accuracy", "online accuracy in the served manifest",
                                        value=manifest.online_accuracy)  # fmt: skip


class InferenceMetrics:
    """ferret-infer's endpoint (``[inference] metrics_listen``) with a predict-latency histogram."""

    BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

    def __init__(self, listen: str, server: Any) -> None:
        from prometheus_client import CollectorRegistry, Histogram, start_http_server

        host, port = parse_listen(listen)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(InferenceCollector(server))
        self.latency = Histogram(
            "ferret_infer_predict_latency_seconds", "time to answer one predict request (decode, run, encode)",
            buckets=self.BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = self._server.server_port
        log.info("metrics_listening", address=f"{host}:{self.port}", path="/metrics")

    def observe(self, seconds: float) -> None:
        self.latency.observe(seconds)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
