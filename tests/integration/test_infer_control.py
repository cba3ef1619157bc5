"""ferret-infer's operator side against real processes: ``ferretctl infer status/health``,
batch predict, and pinning / rolling back to a snapshot and unpinning to the newest."""

from __future__ import annotations

import json

import numpy as np

from tests.integration.harness import (
    ThreadedDaemon,
    config_from,
    digits,
    ferretctl,
    start_process,
    stop_process,
    wait_for,
    write_config,
)
from transports.client import InferenceClient, SamplePublisher

ctl = ferretctl


def serving(path) -> int | None:
    result = ctl(path, "infer", "--json")
    snap = json.loads(result.stdout).get("snapshot") if result.returncode == 0 else None
    return snap["seq"] if snap else None


def test_infer_status_batch_pin_rollback_unpin(ipc_dir, tmp_path):
    path = write_config(ipc_dir)
    config = config_from(path)
    x, y = digits(90)
    with ThreadedDaemon(config) as td:
        daemon = td.daemon
        seqs = []
        with SamplePublisher(config.ingest.endpoint, "dev") as pub:
            for part in range(3):  # three snapshots of a model that keeps learning
                for features, label in zip(x[part * 30 : (part + 1) * 30], y[part * 30 : (part + 1) * 30], strict=True):
                    pub.publish(features, int(label))
                wait_for(lambda n=(part + 1) * 30: td.settled(n), what="trained")
                seqs.append(daemon.call_in_loop(daemon.snapshot_now).result(60)["seq"])
        infer = start_process("ferretd.inference.server", path, tmp_path / "infer.log")
        try:
            wait_for(lambda: serving(path) == seqs[-1], timeout=60, what="the newest snapshot served")
            with InferenceClient(config.inference.endpoint, timeout_ms=5000) as client:
                batch = client.predict_batch(x[:8])
                singles = [client.predict(row) for row in x[:8]]
                assert [p.label for p in batch] == [p.label for p in singles]
                np.testing.assert_allclose([p.probabilities for p in batch], [p.probabilities for p in singles],
                                           rtol=1e-5, atol=1e-6)  # fmt: skip
                assert {p.model_seq for p in batch} == {seqs[-1]}

            status = ctl(path, "infer", "status")
            assert status.returncode == 0, status.stderr
            assert f"snapshot {seqs[-1]}, created" in status.stdout and "s ago" in status.stdout
            assert "p99" in status.stdout and "9 failed" not in status.stdout
            raw = json.loads(ctl(path, "infer", "--json").stdout)
            assert raw["latency_s"]["count"] == 9 and raw["pinned"] is None and raw["snapshot"]["age_s"] >= 0
            health = ctl(path, "infer", "health")
            assert health.returncode == 0 and health.stdout.strip() == "healthy"

            # Roll back to the first snapshot; a newer one does not replace it while pinned.
            pinned = ctl(path, "infer", "pin", str(seqs[0]))
            assert pinned.returncode == 0 and f"serving snapshot {seqs[0]}" in pinned.stdout, pinned.stderr
            with InferenceClient(config.inference.endpoint, timeout_ms=5000) as client:
                assert client.predict(x[0]).model_seq == seqs[0]
            newest = daemon.call_in_loop(daemon.snapshot_now).result(60)["seq"]
            for _ in range(10):  # the announcement arrives within these polls; the pin holds
                assert serving(path) == seqs[0]
            assert json.loads(ctl(path, "infer", "--json").stdout)["pinned"] == seqs[0]
            unpinned = ctl(path, "infer", "unpin")
            assert unpinned.returncode == 0 and f"serving snapshot {newest}" in unpinned.stdout, unpinned.stdout

            missing = ctl(path, "infer", "pin", "999")
            assert missing.returncode == 1 and "not available" in missing.stderr
            usage = ctl(path, "infer", "pin")
            assert usage.returncode == 2 and len(usage.stderr.splitlines()) == 1
        finally:
            assert stop_process(infer) == 0
    down = ctl(path, "infer", "health")
    assert down.returncode == 2 and down.stdout.strip() == "down" and "ferret-infer is not running" in down.stderr
