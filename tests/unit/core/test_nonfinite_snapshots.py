"""A snapshot with non-finite weights is never exported, and ferret-infer names the real cause."""

from __future__ import annotations

import time

import pytest
import torch

from ferretd.config import Config, ModelConfig
from ferretd.inference.session import SnapshotRejected, build_model
from ferretd.models import mlp
from ferretd.snapshot.export_worker import NonFiniteWeights, SnapshotExporter
from ferretd.snapshot.store import SnapshotStore
from ferretd.snapshot.to_onnx import INPUT_NAME, OUTPUT_NAMES, export_onnx


def nan_model() -> torch.nn.Module:
    model = mlp((4,), 3, (5,))
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    return model.eval()


def test_exporter_refuses_non_finite_weights_and_counts_it(tmp_path):
    store = SnapshotStore(tmp_path / "snapshots")
    saved: list[dict] = []
    config = Config(model=ModelConfig(input_shape=(4,), num_classes=3, hidden=(5,)))
    exporter = SnapshotExporter(store, config, on_saved=saved.append)
    exporter.start()
    try:
        with pytest.raises(NonFiniteWeights, match="non-finite weights in"):
            exporter.submit(nan_model(), updates=1).result(timeout=30)
        assert exporter.refused_nonfinite == 1 and store.sequences() == [] and saved == []
        good = exporter.submit(mlp((4,), 3, (5,)).eval(), updates=2).result(timeout=30)
        assert good["seq"] == 1 and exporter.refused_nonfinite == 1
    finally:
        exporter.stop()


def test_ferret_infer_warm_up_names_non_finite_output(tmp_path):
    data = export_onnx(nan_model(), (4,))
    store = SnapshotStore(tmp_path / "snapshots")
    manifest = store.save(
        data,
        created_at=time.time(),
        opset=17,
        input_name=INPUT_NAME,
        input_shape=[4],
        input_dtype="float32",
        output_names=list(OUTPUT_NAMES),
        classes=3,
        updates=1,
        samples_trained=1,
        online_accuracy=None,
        model="mlp",
    )
    with pytest.raises(SnapshotRejected, match="non-finite output") as caught:
        build_model(manifest, data)
    assert caught.value.reason == "warmup"
