"""ferret-infer's loader without sockets: any announcement is refused or installed, the newest-seen
sequence goes back to the serving model after a refusal, and the thread body outlives errors."""

from __future__ import annotations

import threading

import pytest

from ferretd.config import load_config
from ferretd.inference.loader import SnapshotLoader
from ferretd.inference.session import ModelSlot
from ferretd.snapshot.manifest import sha256_hex


class FakeSubscriber:
    def __init__(self, data: dict[int, bytes] | None = None) -> None:
        self.last_seq = -1
        self.data = data or {}

    def fetch(self, seq: int):
        return ({}, self.data[seq]) if seq in self.data else None


def manifest(seq: int, data: bytes, **overrides: object) -> dict:
    fields = dict(
        seq=seq, created_at=0.0, file=f"model-{seq:08d}.onnx", sha256=sha256_hex(data), size_bytes=len(data),
        opset=17, input_name="x", input_shape=[4], input_dtype="float32", output_names=["logits", "probabilities"],
        classes=3, updates=1, samples_trained=1, online_accuracy=None, model="mlp",
    )  # fmt: skip
    fields.update(overrides)
    return fields


@pytest.fixture
def loader(tmp_path):
    config = load_config(None, env={"RUNTIME_DIRECTORY": str(tmp_path / "run"), "STATE_DIRECTORY": str(tmp_path)})
    return SnapshotLoader(config, context=None, slot=ModelSlot(), stop_event=threading.Event())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "raw",
    [None, [], "x", 7, {}, {"seq": 2**62}, manifest(2**62, b"x", file=None), manifest(5, b"x", input_shape=[2**40])],
)
def test_hostile_announcements_are_counted_and_reset_the_newest_seen(loader, raw):
    sub = FakeSubscriber()
    sub.last_seq = 2**62  # what the subscriber recorded when it accepted the announcement
    assert loader.install(raw, sub) is False
    assert loader.slot.rejected_by["manifest_invalid"] == 1
    assert sub.last_seq == -1  # nothing served: any real snapshot is newer


def test_transport_and_snapshot_failures_are_told_apart(loader):
    sub = FakeSubscriber({7: b"garbage", 8: b"short"})
    assert not loader.install(manifest(6, b"absent"), sub)  # nothing to fetch
    assert not loader.install(manifest(7, b"other bytes"), sub)  # fetched bytes differ
    assert not loader.install(manifest(8, b"short"), sub)  # right bytes, not a model
    assert not loader.install(manifest(8, b"short"), sub)  # the same refused snapshot: not retried
    assert dict(loader.slot.rejected_by) == {
        "transport_unavailable": 1,
        "transport_corrupt": 1,
        "unloadable": 1,
    }


def test_the_thread_body_survives_an_unexpected_error(loader, monkeypatch):
    calls = []

    def session(first: bool) -> None:
        calls.append(first)
        if len(calls) == 1:
            raise RuntimeError("boom")
        loader.stop_event.set()

    monkeypatch.setattr(loader, "_session", session)
    monkeypatch.setattr("ferretd.inference.loader.RESTART_PAUSE_S", 0.0)
    loader.run()
    assert calls == [True, False]
    assert loader.errors == 1 and loader.slot.rejected_by["loader_error"] == 1
