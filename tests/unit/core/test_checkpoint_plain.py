"""Checkpoint files hold data only: numpy state round-trips through weights_only loading, and
a checkpoint whose JSON or array entries are off is refused as a ValueError (skipped, not run)."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch

from ferretd.checkpoint import CHECKPOINT_VERSION, CheckpointStore, model_fit_error, restore_rng, rng_state
from ferretd.snapshot.manifest import sha256_hex


def test_numpy_state_round_trips_through_weights_only_loading(tmp_path):
    store = CheckpointStore(tmp_path)
    state = {
        "normalizer": {"mean": np.arange(4, dtype=np.float64), "count": np.int64(7)},
        "flags": (np.array([True, False]), [np.float32(0.5)]),
        "weights": {"w": torch.ones(2, 2)},
    }
    store.save(state)
    seq, loaded = store.newest_valid()
    assert seq == 1
    np.testing.assert_array_equal(loaded["normalizer"]["mean"], np.arange(4, dtype=np.float64))
    assert loaded["normalizer"]["mean"].dtype == np.float64
    assert loaded["normalizer"]["count"] == 7 and type(loaded["normalizer"]["count"]) is int
    np.testing.assert_array_equal(loaded["flags"][0], [True, False])
    assert torch.equal(loaded["weights"]["w"], torch.ones(2, 2))


def test_rng_state_is_plain_and_restores_exactly(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    store = CheckpointStore(tmp_path)
    store.save({"rng": rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng(store.load(1)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def plant(directory, seq: int, payload: object, **meta_overrides: object) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    (directory / f"ckpt-{seq:08d}.pt").write_bytes(data)
    meta = {"seq": seq, "file": f"ckpt-{seq:08d}.pt", "sha256": sha256_hex(data), "size_bytes": len(data)}
    meta.update(meta_overrides)
    (directory / f"ckpt-{seq:08d}.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("payload", "meta"),
    [
        ({"checkpoint_version": CHECKPOINT_VERSION, "x": {"__ndarray__": torch.zeros(2), "dtype": "|O"}}, {}),
        ({"checkpoint_version": CHECKPOINT_VERSION, "x": {"__ndarray__": [1, 2], "dtype": "<f4"}}, {}),
        ({"checkpoint_version": CHECKPOINT_VERSION}, {"size_bytes": 2**60}),
        ({"checkpoint_version": CHECKPOINT_VERSION}, {"size_bytes": True}),
        ({"checkpoint_version": 1}, {}),
        ([1, 2, 3], {}),
    ],
)
def test_off_checkpoints_are_a_value_error(tmp_path, payload, meta):
    plant(tmp_path, 1, payload, **meta)
    with pytest.raises(ValueError):
        CheckpointStore(tmp_path).load(1)


def test_the_json_must_name_its_own_checkpoint_file(tmp_path):
    """A JSON pointing at a (valid) checkpoint elsewhere is refused, wherever that file is."""
    (tmp_path / "checkpoints").mkdir()
    plant(tmp_path, 9, {"checkpoint_version": CHECKPOINT_VERSION, "planted": True})
    outside = (tmp_path / "ckpt-00000009.pt").read_bytes()
    meta = {"file": "../ckpt-00000009.pt", "sha256": sha256_hex(outside), "size_bytes": len(outside)}
    (tmp_path / "checkpoints" / "ckpt-00000001.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="own file"):
        CheckpointStore(tmp_path / "checkpoints").load(1)


def test_model_fit_error_names_the_mismatch():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    assert model_fit_error(model.state_dict(), model) is None
    other = torch.nn.Sequential(torch.nn.Linear(4, 5)).state_dict()
    assert "0.weight has shape (5, 4)" in model_fit_error(other, model)
    assert "missing" in model_fit_error({}, model)
    assert model_fit_error(None, model) == "the checkpoint holds no model weights"
