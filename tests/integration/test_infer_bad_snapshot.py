"""ferret-infer against a snapshot publisher the test controls (real PUB/ROUTER sockets):
bad snapshots are rejected and counted, the last good model keeps serving, a good one swaps."""

from __future__ import annotations

import pathlib
import threading

import numpy as np
import zmq

from ferretd.inference.server import InferenceServer
from ferretd.messages import SnapshotManifest
from ferretd.models import mlp
from ferretd.snapshot.manifest import sha256_hex
from ferretd.snapshot.to_onnx import export_onnx
from tests.integration.harness import config_from, wait_for, write_config
from transports.client import InferenceClient
from transports.zmq_snapshots import SnapshotService


def manifest_for(seq: int, data: bytes, **overrides) -> dict:
    fields = dict(
        seq=seq,
        created_at=0.0,
        file=f"not-on-disk-{seq}.onnx",
        sha256=sha256_hex(data),
        size_bytes=len(data),
        opset=17,
        input_name="x",
        input_shape=[64],
        input_dtype="float32",
        output_names=["logits", "probabilities"],
        classes=10,
        updates=seq,
        samples_trained=seq,
        online_accuracy=None,
        model="mlp",
    )
    fields.update(overrides)
    return SnapshotManifest(**fields).to_dict()


def test_bad_snapshots_are_rejected_and_last_good_keeps_serving(ipc_dir):
    config = config_from(write_config(ipc_dir))
    pathlib.Path(config.runtime_dir).mkdir(parents=True, exist_ok=True)
    context = zmq.Context()
    published: dict[int, tuple[dict, bytes]] = {}
    latest: list[dict] = []
    service = SnapshotService(
        context,
        config.snapshot.announce_endpoint,
        config.snapshot.latest_endpoint,
        latest=lambda: latest[-1] if latest else None,
        fetch=lambda seq: published.get(seq),
    )
    service.start()

    def publish(manifest: dict, data: bytes) -> None:
        published[manifest["seq"]] = (manifest, data)
        latest.append(manifest)
        service.announce(manifest)

    good = export_onnx(mlp((64,), 10, (16,)).eval(), (64,))
    publish(manifest_for(1, good), good)

    server = InferenceServer(config, context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = InferenceClient(config.inference.endpoint, timeout_ms=3000, context=context)
    try:
        wait_for(lambda: client.info()["model_seq"] == 1, what="first model")
        x = np.random.default_rng(0).random(64).astype(np.float32)
        before = client.predict(x).probabilities

        publish(manifest_for(2, good, sha256="0" * 64), good)  # checksum mismatch
        publish(manifest_for(3, b"not an onnx model"), b"not an onnx model")  # unloadable
        other = export_onnx(mlp((64,), 5, (16,)).eval(), (64,))
        publish(manifest_for(4, other), other)  # 5 classes, manifest says 10: warm-up check fails
        wait_for(lambda: client.info()["rejected"] == 3, what="three rejections")
        assert client.info()["model_seq"] == 1
        np.testing.assert_array_equal(client.predict(x).probabilities, before)

        better = export_onnx(mlp((64,), 10, (16,)).eval(), (64,))
        publish(manifest_for(5, better), better)
        wait_for(lambda: client.info()["model_seq"] == 5, what="swap to the next good snapshot")
        assert client.predict(x).model_seq == 5
        assert client.info()["failed"] == 0
    finally:
        server.stop_event.set()
        thread.join(10)
        client.close()
        service.stop()
        context.term()
