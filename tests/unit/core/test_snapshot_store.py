"""Snapshot store: atomic numbered snapshots, keep N, sequence continues, damaged ones skipped."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ferretd.models import convnet, mlp
from ferretd.snapshot.store import SnapshotStore
from ferretd.snapshot.to_onnx import export_onnx

FIELDS = dict(
    created_at=0.0,
    opset=17,
    input_name="x",
    input_shape=[4],
    input_dtype="float32",
    output_names=["logits", "probabilities"],
    classes=3,
    updates=1,
    samples_trained=1,
    online_accuracy=0.5,
    model="mlp",
)


def test_keeps_last_n_and_sequence_survives_restart(tmp_path):
    store = SnapshotStore(tmp_path, keep=2)
    seqs = [store.save(f"model {i}".encode(), **FIELDS).seq for i in range(4)]
    assert seqs == [1, 2, 3, 4]
    assert store.sequences() == [3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model-00000003.json",
        "model-00000003.onnx",
        "model-00000004.json",
        "model-00000004.onnx",
    ]
    again = SnapshotStore(tmp_path, keep=2)
    assert again.latest().seq == 4
    assert again.save(b"next", **FIELDS).seq == 5


def test_damaged_snapshot_is_skipped_and_temps_removed(tmp_path):
    store = SnapshotStore(tmp_path, keep=5)
    store.save(b"good", **FIELDS)
    store.save(b"will be damaged", **FIELDS)
    (tmp_path / "model-00000002.onnx").write_bytes(b"torn")
    (tmp_path / ".model-00000003.onnx.abc.tmp").write_bytes(b"half")
    reopened = SnapshotStore(tmp_path, keep=5)
    assert reopened.latest().seq == 1
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError):
        reopened.read(2)


@pytest.mark.parametrize(
    "model_fn, shape", [(lambda: mlp((4,), 3, (8,)), (4,)), (lambda: convnet((1, 8, 8), 3, (4,)), (1, 8, 8))]
)
def test_onnx_export_matches_torch(model_fn, shape):
    torch.manual_seed(0)
    model = model_fn().eval()
    session = ort.InferenceSession(export_onnx(model, shape))
    x = np.random.default_rng(0).random((5, *shape)).astype(np.float32)
    logits, probabilities = session.run(None, {"x": x})
    with torch.no_grad():
        expected = model(torch.from_numpy(x))
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probabilities, torch.softmax(expected, 1).numpy(), rtol=1e-5, atol=1e-6)
