"""Raw sensor scales and diverging updates through the real daemon (real sockets, torch, onnxruntime).

(a) Features spanning 1e-3..1e6 with the default config: no NaN anywhere, online accuracy well
above the majority baseline, and the served ONNX model equals the torch model (normalisation
included) to 1e-5. (b) A diverging update injected on purpose (a huge learning rate for one
sample): refused and counted, health degraded, no NaN snapshot, training recovers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import torch

from ferretd.config import Config
from ferretd.engine.optim import DIVERGED_EXPLODING, DIVERGED_NONFINITE
from ferretd.lifecycle import health
from tests.integration.harness import ThreadedDaemon, config_from, digits, wait_for, write_config
from transports.client import SamplePublisher
from transports.zmq_control import ControlClient

SCALES = np.logspace(-3, 6, 64).astype(np.float32)  # feature j spans 1e-3 .. 1e6


def raw_digits(n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The shipped digits as a raw sensor would send them: every feature on its own scale and offset."""
    x, y = digits(n, seed=seed)
    return (x * SCALES + 2.0 * SCALES).astype(np.float32), y


def publish(td: ThreadedDaemon, endpoint: str, x: np.ndarray, y: np.ndarray, device: str, chunk: int = 50) -> None:
    """Publish in chunks, waiting for the daemon to receive each (keeps ZeroMQ's buffers small)."""
    start = td.daemon.queue.snapshot().received
    with SamplePublisher(endpoint, device) as pub:
        for i in range(0, len(x), chunk):
            for features, label in zip(x[i : i + chunk], y[i : i + chunk], strict=True):
                assert pub.publish(features, int(label))
            want = start + min(i + chunk, len(x))
            wait_for(lambda w=want: td.daemon.queue.snapshot().received >= w, what=f"{want} received")


def snapshot_now(config) -> dict:
    with ControlClient(config.control.endpoint, timeout_s=60) as ctl:
        reply = ctl.call("snapshot")
    assert reply.ok, reply.error
    return reply.result["manifest"]


def served_outputs(daemon, seq: int, x: np.ndarray) -> np.ndarray:
    _, data = daemon.store.read(seq)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(["probabilities"], {"x": x})[0]


def all_weights_finite(learner) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in learner.export_module().state_dict().values())


def test_raw_scales_default_config_no_nan_accuracy_and_served_model_equals_torch(ipc_dir):
    config = config_from(write_config(ipc_dir, pipeline={"plan": Config().pipeline.plan}))
    assert config.model == Config().model and config.pipeline == Config().pipeline  # the embedded defaults
    x, y = raw_digits()
    train_x, train_y, probe = x[:1400], y[:1400], x[1400:1464]
    with ThreadedDaemon(config) as td:
        daemon = td.daemon
        publish(td, config.ingest.endpoint, train_x, train_y, "raw-sensor")
        wait_for(lambda: td.settled(len(train_x)), timeout=120, what="all samples settled")
        ledger = daemon.queue.snapshot()
        assert ledger.balanced and ledger.trained == len(train_x), ledger.to_dict()
        assert all_weights_finite(daemon.learner)
        status = daemon.status()
        acc = status["accuracy"]
        assert acc["samples"] == len(train_x) and acc["trained_share"] == 1.0
        assert acc["online_accuracy"] > 0.6 and acc["online_accuracy"] > acc["majority_accuracy"] + 0.4, acc
        assert status["engine"]["guard"]["refused"] == {DIVERGED_NONFINITE: 0, DIVERGED_EXPLODING: 0}

        manifest = snapshot_now(config)
        served = served_outputs(daemon, manifest["seq"], probe)
        with torch.no_grad():
            torch_out = torch.softmax(daemon.learner.export_module()(torch.as_tensor(probe)), dim=1).numpy()
        assert np.isfinite(served).all()
        np.testing.assert_allclose(served, torch_out, atol=1e-5, rtol=0)
        if config.snapshot.export == "latest":  # the learner's own prediction path is the served transform
            own = np.stack([daemon.learner.predict_one(row) for row in probe])
            np.testing.assert_allclose(served, own, atol=1e-5, rtol=0)
        held_out = float(np.mean(served.argmax(1) == y[1400:1464]))
        assert held_out > 0.7, held_out


def _set_lr(learner, lr: float) -> None:
    """Change the learning rate the next update uses (sequential learner or pipeline core)."""
    learner.training = dataclasses.replace(learner.training, lr=lr)
    core = getattr(learner, "core", None)
    if core is not None:
        core.training = learner.training


def test_a_diverging_update_is_refused_counted_degrades_health_and_training_recovers(ipc_dir):
    config = config_from(write_config(ipc_dir, pipeline={"plan": Config().pipeline.plan}))
    x, y = digits()
    with ThreadedDaemon(config) as td:
        daemon = td.daemon
        publish(td, config.ingest.endpoint, x[:400], y[:400], "dev")
        wait_for(lambda: td.settled(400), timeout=60, what="warm-up trained")
        assert health(daemon)["code"] == 0
        good_lr = daemon.learner.training.lr
        for lr, reason, row in ((1e12, DIVERGED_EXPLODING, 400), (float("inf"), DIVERGED_NONFINITE, 401)):
            daemon.call_in_loop(lambda lr=lr: _set_lr(daemon.learner, lr))
            publish(td, config.ingest.endpoint, x[row : row + 1], y[row : row + 1], f"bad-{row}")
            wait_for(lambda r=row: td.settled(r + 1), what="the diverging sample settled")
            daemon.call_in_loop(lambda: _set_lr(daemon.learner, good_lr))
            assert daemon.queue.snapshot().dropped.get(reason) == 1, daemon.queue.snapshot().dropped
        state = health(daemon)
        assert state["code"] == 1 and any("diverged" in r for r in state["reasons"]), state
        assert daemon.status()["engine"]["guard"]["refused"] == {DIVERGED_EXPLODING: 1, DIVERGED_NONFINITE: 1}
        assert all_weights_finite(daemon.learner)

        trained_before = daemon.queue.snapshot().trained
        publish(td, config.ingest.endpoint, x[402:1200], y[402:1200], "dev-2")
        wait_for(lambda: td.settled(1200), timeout=120, what="recovery trained")
        ledger = daemon.queue.snapshot()
        assert ledger.balanced and ledger.trained == trained_before + 798
        assert daemon.status()["accuracy"]["window_accuracy"] > 0.8
        snapshot_now(config)
        probe = x[1200:1264]
        seqs = daemon.store.sequences()
        assert seqs
        for seq in seqs:  # no snapshot on disk ever held NaN weights
            assert np.isfinite(served_outputs(daemon, seq, probe)).all()
        assert daemon.exporter.refused_nonfinite == 0
        held_out = float(np.mean(served_outputs(daemon, seqs[-1], probe).argmax(1) == y[1200:1264]))
        assert held_out > 0.8, held_out
