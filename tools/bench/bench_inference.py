"""ferret-infer latency: p50/p99 of predict round trips in steady state and during hot swaps.

ferret-infer runs as a real process; this process plays the daemon's snapshot service (real
PUB/ROUTER sockets) and a client. The "during swaps" phase announces a new snapshot every
``swap_every_s`` while the client keeps asking, and counts failed requests (must be zero).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from ferretd.config import load_config
from ferretd.messages import SnapshotManifest
from ferretd.models import mlp
from ferretd.snapshot.manifest import sha256_hex
from ferretd.snapshot.to_onnx import export_onnx
from transports.client import InferenceClient
from transports.zmq_snapshots import SnapshotService

ROOT = Path(__file__).resolve().parents[2]


def _manifest(seq: int, data: bytes) -> dict[str, Any]:
    return SnapshotManifest(
        seq=seq, created_at=time.time(), file=f"bench-{seq}.onnx", sha256=sha256_hex(data), size_bytes=len(data),
        opset=17, input_name="x", input_shape=[64], input_dtype="float32", output_names=["logits", "probabilities"],
        classes=10, updates=seq, samples_trained=seq, online_accuracy=None, model="mlp",
    ).to_dict()  # fmt: skip


def _percentiles(samples: list[float]) -> dict[str, float]:
    arr = np.asarray(samples) * 1e3
    return {"n": len(arr), "p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    requests = 2000 if quick else 10000
    swap_every_s = 0.1
    models = [export_onnx(mlp((64,), 10, (128, 64)).eval(), (64,)) for _ in range(4)]
    with tempfile.TemporaryDirectory(prefix="fi-", dir="/tmp") as d:
        toml = Path(d) / "c.toml"
        toml.write_text(f'[daemon]\nruntime_dir = "{d}/run"\nstate_dir = "{d}/state"\n')
        config = load_config(toml, env={})
        Path(config.runtime_dir).mkdir(parents=True)
        context = zmq.Context()
        kept: dict[int, tuple[dict[str, Any], bytes]] = {}
        service = SnapshotService(
            context,
            config.snapshot.announce_endpoint,
            config.snapshot.latest_endpoint,
            latest=lambda: kept[max(kept)][0] if kept else None,
            fetch=lambda seq: kept.get(seq),
        )
        service.start()

        def publish(seq: int) -> None:
            data = models[seq % len(models)]
            kept[seq] = (_manifest(seq, data), data)
            service.announce(kept[seq][0])

        publish(1)
        proc = subprocess.Popen(
            [sys.executable, "-m", "ferretd.inference.server", "--config", str(toml)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        x = np.random.default_rng(0).random(64).astype(np.float32)
        try:
            with InferenceClient(config.inference.endpoint, timeout_ms=5000, context=context) as client:
                deadline = time.monotonic() + 60
                while client.info().get("model_seq") != 1 and time.monotonic() < deadline:
                    time.sleep(0.05)
                for _ in range(200):  # warm-up
                    client.predict(x)
                steady = []
                for _ in range(requests):
                    t = time.perf_counter()
                    client.predict(x)
                    steady.append(time.perf_counter() - t)
                swapping, failures, seq, seqs_seen = [], 0, 1, set()
                next_swap = time.monotonic()
                for _ in range(requests):
                    if time.monotonic() >= next_swap:
                        seq += 1
                        publish(seq)
                        next_swap += swap_every_s
                    t = time.perf_counter()
                    try:
                        seqs_seen.add(client.predict(x).model_seq)
                    except Exception:
                        failures += 1
                    swapping.append(time.perf_counter() - t)
                swaps = client.info()["swaps"]
        finally:
            proc.terminate()
            proc.wait(30)
            service.stop()
            context.term()
    s, w = _percentiles(steady), _percentiles(swapping)
    markdown = "\n".join(
        [
            f"MLP 64-128-64-10, one sample per request over ipc, {requests:,} requests per phase.",
            "",
            "| phase | p50 | p99 | failed requests |",
            "|---|---:|---:|---:|",
            f"| steady state | {s['p50_ms']:.3f} ms | {s['p99_ms']:.3f} ms | 0 |",
            f"| during swaps (a new snapshot every {swap_every_s * 1000:.0f} ms; {swaps - 1} swaps, "
            f"{len(seqs_seen)} models served) | {w['p50_ms']:.3f} ms | {w['p99_ms']:.3f} ms | {failures} |",
        ]
    )
    return {
        "title": "ferret-infer latency, steady state and during hot swaps",
        "markdown": markdown,
        "data": {"steady": s, "swapping": w, "failures": failures, "swaps": swaps, "models_served": len(seqs_seen)},
    }
