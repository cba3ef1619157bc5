"""The daemon on the Ferret pipeline engine (P=2 stages, N=2 workers, iter_fisher): counters add
up, the snapshot equals the engine's weights, and status shows per-stage staleness and lambda."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import torch

from tests.integration.harness import ROOT, ThreadedDaemon, child_env, config_from, digits, wait_for, write_config
from transports.client import SamplePublisher
from transports.zmq_control import ControlClient


def test_pipeline_engine_in_the_daemon(ipc_dir):
    path = write_config(ipc_dir, pipeline={"stages": 2, "workers": 2}, compensation={"method": "iter_fisher"})
    config = config_from(path)
    x, y = digits(400)
    with ThreadedDaemon(config) as td:
        assert td.daemon.plan.num_stages == 2 and len(td.daemon.plan.workers) == 2
        with SamplePublisher(config.ingest.endpoint, "dev") as publisher:
            for features, label in zip(x, y, strict=True):
                publisher.publish(features, int(label))
        wait_for(lambda: td.settled(400), what="all samples trained")
        ledger = td.daemon.queue.snapshot()
        assert ledger.trained == 400 and ledger.balanced

        with ControlClient(config.control.endpoint, timeout_s=30) as ctl:
            status = ctl.call("status").result
            manifest = ctl.call("snapshot").result["manifest"]
        engine = status["engine"]
        assert engine["engine"] == "pipeline" and engine["stages"] == 2
        assert engine["max_staleness"][0] >= 1, "stage 0 applies stale gradients with 2 stages"
        assert set(engine["compensator"]) == {"0", "1"}
        assert status["plan"]["partition"] == [2]  # 3 blocks cut evenly into 2 stages

        _, data = td.daemon.store.read(manifest["seq"])
        session = ort.InferenceSession(data)
        module = td.daemon.learner.export_module()
        with torch.no_grad():
            expected = torch.softmax(module(torch.from_numpy(x[:16])), 1).numpy()
        (served,) = session.run(["probabilities"], {"x": x[:16]})
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)

        table = subprocess.run(
            [sys.executable, "-m", "ferretd.control.ferretctl", "--config", str(path), "status"],
            capture_output=True, text=True, env=child_env(), cwd=ROOT,
        )  # fmt: skip
        assert table.returncode == 0, table.stderr
        assert re.search(r"stage 1\s+staleness max \d+", table.stdout), table.stdout
        assert "lambda" in table.stdout and "lane utilisation" in table.stdout
    assert td.exit_code == 0


def test_accumulation_beyond_the_stage_count_still_trains_everything(ipc_dir):
    """The in-flight cap must let an accumulation window (a=4 > P=2) fill, or training stalls."""
    config = config_from(write_config(ipc_dir, pipeline={"stages": 2, "workers": 2, "accumulation": 4}))
    x, y = digits(200)
    with ThreadedDaemon(config) as td:
        with SamplePublisher(config.ingest.endpoint, "dev") as publisher:
            for features, label in zip(x, y, strict=True):
                publisher.publish(features, int(label))
        wait_for(lambda: td.daemon.queue.snapshot().received == 200, what="all received")
        wait_for(lambda: td.daemon.queue.snapshot().waiting == 0, what="queue drained into the engine")
    final = td.daemon.queue.snapshot()
    assert td.exit_code == 0 and final.balanced and final.trained + sum(final.dropped.values()) == 200
    assert final.trained >= 190, "partial windows are applied on shutdown; nothing is stuck"
