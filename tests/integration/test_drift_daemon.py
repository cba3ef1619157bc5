"""Drift is visible in the real daemon: a concept change in a stream published over ZeroMQ is
detected after it happens (never before), counted in status, logged once per detection, and the
optional normaliser reaction runs."""

from __future__ import annotations

import re

import numpy as np
from structlog.testing import capture_logs

from ferretd.control.render import render_status
from tests.integration.harness import ThreadedDaemon, config_from, wait_for, write_config
from transports.client import SamplePublisher
from transports.zmq_control import ControlClient

CHANGE_AT = 800
TOTAL = 1500


def stream(seed: int = 0) -> list[tuple[np.ndarray, int]]:
    """Two Gaussian classes; from CHANGE_AT on the labels are swapped and 40% of them flipped.

    A clean swap alone is re-learned within ~20 samples (too few errors for any detector to tell
    from noise); the noise keeps the error up after the change, like a degraded sensor."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(TOTAL):
        c = int(rng.integers(2))
        x = (np.array([3.0, -3.0, 0.0, 1.0]) * (1 if c else -1) + rng.normal(0, 1, 4)).astype(np.float32)
        noisy = i >= CHANGE_AT and rng.random() < 0.4
        out.append((x, c if i < CHANGE_AT else (c if noisy else 1 - c)))
    return out


def test_a_concept_change_is_detected_counted_and_logged(ipc_dir):
    path = write_config(
        ipc_dir,
        model={"input_shape": [4], "num_classes": 2, "hidden": [16]},
        drift={"reaction": "norm_decay", "reaction_samples": 200},
    )
    config = config_from(path)
    with capture_logs() as logs, ThreadedDaemon(config) as td:
        with SamplePublisher(config.ingest.endpoint, "dev") as publisher:
            for features, label in stream():
                publisher.publish(features, label)
            wait_for(lambda: td.settled(TOTAL), timeout=60, what="all samples settled")  # publisher open till then
        with ControlClient(config.control.endpoint, timeout_s=30) as ctl:
            status = ctl.call("status").result
    drift = status["drift"]
    detected = [e for e in logs if e.get("event") == "drift_detected"]
    assert drift["detector"] == "page_hinkley" and drift["samples"] == TOTAL
    assert drift["detections"] >= 1 and len(detected) == drift["detections"]
    assert all(e["at_sample"] > CHANGE_AT for e in detected), "a detection before the change is a false alarm"
    assert detected[0]["at_sample"] < CHANGE_AT + 300  # the error jumps from ~0 to ~1
    assert drift["last_at"] is not None and drift["reaction"] == "norm_decay"
    assert status["accuracy"]["window_accuracy"] > 0.5  # it re-learned the swapped concept (0.6 at best, 0.4 if not)
    shown = r"^drift\s+\w+, [1-9]\d* detection\(s\), last .* ago .*\(arrival \d+\)$"
    assert re.search(shown, render_status(status), re.M)  # what `ferretctl status` prints
    assert td.exit_code == 0
