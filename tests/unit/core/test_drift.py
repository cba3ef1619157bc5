"""Page-Hinkley on the online error: quiet on a stationary stream, detects a rise, agrees with River."""

from __future__ import annotations

import dataclasses
import random
from types import SimpleNamespace

import pytest

from ferretd.config import Config, ConfigError, DriftConfig
from ferretd.drift import DriftMonitor, PageHinkley


def bernoulli(rate: float, n: int, rng: random.Random) -> list[float]:
    return [1.0 if rng.random() < rate else 0.0 for _ in range(n)]


def test_quiet_on_a_stationary_error_stream() -> None:
    ph = PageHinkley()
    stream = bernoulli(0.15, 20_000, random.Random(0))
    assert not any(ph.update(x) for x in stream)


def test_detects_a_rise_of_the_error_soon_after_it_happens() -> None:
    ph = PageHinkley()
    rng = random.Random(1)
    assert not any(ph.update(x) for x in bernoulli(0.1, 3000, rng))
    after = [ph.update(x) for x in bernoulli(0.6, 1000, rng)]
    assert any(after)
    assert after.index(True) < 200  # ~0.5 excess error per sample against a threshold of 50


def test_a_falling_error_is_not_a_drift() -> None:
    ph = PageHinkley()
    rng = random.Random(2)
    stream = bernoulli(0.6, 2000, rng) + bernoulli(0.1, 3000, rng)
    assert not any(ph.update(x) for x in stream)


def test_agrees_with_rivers_page_hinkley_sample_by_sample() -> None:
    river_drift = pytest.importorskip("river.drift")
    rng = random.Random(3)
    stream = []
    for rate in (0.1, 0.5, 0.2, 0.8, 0.3):
        stream += bernoulli(rate, 1500, rng)
    ours, theirs = PageHinkley(), river_drift.PageHinkley(mode="up")
    mine, ref = [], []
    for x in stream:
        mine.append(ours.update(x))
        theirs.update(x)
        ref.append(theirs.drift_detected)
    assert sum(ref) >= 2 and mine == ref


def daemon_config(**drift: object) -> Config:
    return dataclasses.replace(Config(), drift=DriftConfig(**drift))  # type: ignore[arg-type]


def test_monitor_counts_detections_and_reports_state() -> None:
    monitor = DriftMonitor.from_config(daemon_config())
    assert monitor.status()["state"] == "warming_up"
    rng = random.Random(4)
    for x in bernoulli(0.1, 2000, rng):
        monitor.update(bool(x))
    assert monitor.status()["state"] == "stable" and monitor.detections == 0
    hits = [monitor.update(bool(x)) for x in bernoulli(0.7, 300, rng)]
    status = monitor.status()
    assert sum(hits) == status["detections"] >= 1
    assert status["last_at"] is not None and status["last_at_sample"] == 2000 + hits.index(True) + 1


def test_off_detector_never_fires() -> None:
    monitor = DriftMonitor.from_config(daemon_config(detector="none"))
    assert not any(monitor.update(True) for _ in range(1000))
    assert monitor.status()["state"] == "off"


def test_norm_decay_reaction_raises_then_restores_the_normaliser_decay() -> None:
    learner = SimpleNamespace(norm=SimpleNamespace(decay=0.0))
    monitor = DriftMonitor.from_config(
        daemon_config(reaction="norm_decay", reaction_decay=0.05, reaction_samples=100), learner=lambda: learner
    )
    rng = random.Random(5)
    for x in bernoulli(0.1, 1000, rng):
        monitor.update(bool(x))
    assert learner.norm.decay == 0.0
    for x in bernoulli(0.9, 300, rng):
        if monitor.update(bool(x)):
            break
    assert learner.norm.decay == 0.05 and monitor.status()["state"] == "reacting"
    for _ in range(100):
        monitor.update(False)
    assert learner.norm.decay == 0.0


def test_config_rejects_bad_drift_keys() -> None:
    with pytest.raises(ConfigError, match=r"\[drift\] reaction"):
        DriftConfig(reaction="panic").check()
    with pytest.raises(ConfigError, match=r"\[drift\] threshold"):
        DriftConfig(threshold=0).check()
