"""A rogue snapshot publisher (real PUB/ROUTER sockets on the daemon's endpoints) cannot make
ferret-infer serve anything else, read outside its snapshot directory, stop its loader, or hide
the real daemon's later snapshots behind a huge sequence number."""

from __future__ import annotations

import pathlib
import threading

import numpy as np
import zmq

from ferretd.inference.server import InferenceServer
from ferretd.models import mlp
from ferretd.snapshot.manifest import model_name, sha256_hex
from ferretd.snapshot.store import SnapshotStore
from ferretd.snapshot.to_onnx import export_onnx
from tests.integration.harness import config_from, wait_for, write_config
from tests.integration.test_infer_bad_snapshot import manifest_for
from transports.client import InferenceClient
from transports.zmq_snapshots import SnapshotService

HUGE = 2**62
FIELDS = dict(
    created_at=0.0,
    opset=17,
    input_name="x",
    input_shape=[64],
    input_dtype="float32",
    output_names=["logits", "probabilities"],
    classes=10,
    updates=1,
    samples_trained=1,
    online_accuracy=None,
    model="mlp",
)


class Publisher:
    """A snapshot service the test drives: what it announces and what ``fetch`` returns."""

    def __init__(self, context: zmq.Context, config) -> None:
        self.published: dict[int, tuple[dict, bytes]] = {}
        self.latest: list[dict] = []
        self.service = SnapshotService(
            context,
            config.snapshot.announce_endpoint,
            config.snapshot.latest_endpoint,
            latest=lambda: self.latest[-1] if self.latest else None,
            fetch=lambda seq: self.published.get(seq),
        )
        self.service.start()

    def publish(self, manifest: dict, data: bytes) -> None:
        if isinstance(manifest.get("seq"), int):
            self.published[manifest["seq"]] = (manifest, data)
        self.latest.append(manifest)
        self.service.announce(manifest)

    def stop(self) -> None:
        self.service.stop()


def test_rogue_publisher_is_refused_and_real_snapshots_still_swap_in(ipc_dir):
    config = config_from(write_config(ipc_dir))
    pathlib.Path(config.runtime_dir).mkdir(parents=True, exist_ok=True)
    # The real daemon's snapshot 1 is on disk; a secret lies outside the snapshot directory.
    real = export_onnx(mlp((64,), 10, (16,)).eval(), (64,))
    store = SnapshotStore(config.inference.snapshot_dir)
    assert store.save(real, **FIELDS).seq == 1
    secret = pathlib.Path(ipc_dir) / "state" / "secret.onnx"
    secret.write_bytes(real + b"\0" * 4321)  # size 4321 + len(real): must never show up anywhere
    secret_size = str(secret.stat().st_size)
    garbage = b"\x08\x07" * 500

    context = zmq.Context()
    rogue = Publisher(context, config)  # binds the daemon's endpoints first
    poison = [
        manifest_for(HUGE, secret.read_bytes(), file="../secret.onnx"),
        manifest_for(HUGE, secret.read_bytes(), file=str(secret)),
        manifest_for(HUGE - 1, real, file=model_name(1)),  # our own file under a huge seq
        manifest_for(HUGE - 2, garbage, file="model-x.onnx"),  # fetched: not an ONNX model
        {**manifest_for(HUGE - 3, garbage), "file": None},
        {**manifest_for(HUGE - 4, garbage), "input_shape": [2**40, 2**40]},
        {**manifest_for(HUGE - 5, garbage), "seq": "many"},
        {**manifest_for(HUGE - 6, garbage), "manifest_version": True},
        ["not", "a", "mapping"],
    ]
    rogue.published[HUGE - 1] = (poison[2], garbage)  # and what it serves for it is garbage
    rogue.published[HUGE - 2] = (poison[3], garbage)
    rogue.latest.append(poison[0])

    server = InferenceServer(config, context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = InferenceClient(config.inference.endpoint, timeout_ms=5000, context=context)
    x = np.random.default_rng(0).random(64).astype(np.float32)
    try:
        wait_for(lambda: client.info()["model_seq"] == 1, timeout=30, what="disk fallback to the real snapshot 1")
        for manifest in poison:
            rogue.service.announce(manifest)
        wait_for(lambda: client.info()["rejected"] >= len(poison), timeout=30, what="every poison refused")
        info = client.info()
        assert info["model_seq"] == 1
        assert client.predict(x).model_seq == 1
        assert info["rejected_by"]["manifest_invalid"] >= 6
        assert info["rejected_by"].get("unloadable", 0) + info["rejected_by"].get("transport_corrupt", 0) >= 2
        assert secret_size not in str(info["last_error"])
        assert server._loader.is_alive()

        # The rogue goes away and the real daemon binds the endpoints: its next snapshot swaps in,
        # although the rogue announced far higher sequence numbers.
        rogue.stop()
        genuine = Publisher(context, config)
        try:
            better = export_onnx(mlp((64,), 10, (16,)).eval(), (64,))
            manifest = store.save(better, **FIELDS).to_dict()
            assert manifest["seq"] == 2
            wait_for(lambda: genuine.service.requests > 0, timeout=30, what="ferret-infer reconnected")
            genuine.publish(manifest, better)
            wait_for(lambda: client.info()["model_seq"] == 2, timeout=30, what="real snapshot 2 swapped in")
            assert client.predict(x).model_seq == 2
            assert sha256_hex(better) == manifest["sha256"]
        finally:
            genuine.stop()
    finally:
        server.stop_event.set()
        thread.join(10)
        client.close()
        rogue.stop()
        context.term()


def test_disk_fallback_serves_the_newest_snapshot_that_loads(ipc_dir, monkeypatch):
    """No daemon: snapshot 3 has a ``file: null`` manifest, 2 has a valid sha256 but is not a model,
    a stale temp file sits in a directory the reader may not write: snapshot 1 is served."""
    import json

    from ferretd.snapshot import store as store_module
    from ferretd.snapshot.manifest import manifest_name

    config = config_from(write_config(ipc_dir))
    pathlib.Path(config.runtime_dir).mkdir(parents=True, exist_ok=True)
    store = SnapshotStore(config.inference.snapshot_dir)
    store.save(export_onnx(mlp((64,), 10, (16,)).eval(), (64,)), **FIELDS)
    store.save(b"valid sha256, not a model", **FIELDS)
    store.save(b"third", **FIELDS)
    directory = pathlib.Path(config.inference.snapshot_dir)
    third = json.loads((directory / manifest_name(3)).read_text())
    (directory / manifest_name(3)).write_text(json.dumps({**third, "file": None}))
    (directory / ".model-00000004.onnx.x.tmp").write_bytes(b"stale")

    def read_only(*_args: object) -> int:
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(store_module, "remove_stale_temps", read_only)
    context = zmq.Context()
    server = InferenceServer(config, context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = InferenceClient(config.inference.endpoint, timeout_ms=5000, context=context)
    try:
        wait_for(lambda: client.info()["model_seq"] == 1, timeout=30, what="snapshot 1 from disk")
        assert client.predict(np.zeros(64, dtype=np.float32)).model_seq == 1
        assert server._loader.is_alive()
    finally:
        server.stop_event.set()
        thread.join(10)
        client.close()
        context.term()


def test_a_fresh_ferret_infer_fetches_an_older_snapshot_when_the_newest_will_not_load(ipc_dir):
    """No files on this box: the daemon's newest snapshot has a valid sha256 but is not a model,
    so the one before it is fetched and served."""
    config = config_from(write_config(ipc_dir))
    pathlib.Path(config.runtime_dir).mkdir(parents=True, exist_ok=True)
    context = zmq.Context()
    daemon = Publisher(context, config)
    good = export_onnx(mlp((64,), 10, (16,)).eval(), (64,))
    bad = b"valid sha256, not a model"
    daemon.published = {1: (manifest_for(1, good), good), 2: (manifest_for(2, bad), bad)}
    daemon.latest.append(manifest_for(2, bad))  # not announced: only "latest" and "fetch" answer
    server = InferenceServer(config, context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = InferenceClient(config.inference.endpoint, timeout_ms=5000, context=context)
    try:
        wait_for(lambda: client.info()["model_seq"] == 1, timeout=30, what="the older snapshot fetched")
        assert client.info()["rejected_by"] == {"unloadable": 1}
    finally:
        server.stop_event.set()
        thread.join(10)
        client.close()
        daemon.stop()
        context.term()
