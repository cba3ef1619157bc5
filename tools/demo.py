"""`make demo`: the daemon's main job on the embedded defaults, end to end, in about a minute.

Starts ferretd and ferret-infer (real processes, real sockets in a temp runtime dir), replays
the digits stream into ferretd, shows `ferretctl status`, measures the served ONNX model's
accuracy on held-out digits through ferret-infer, and shuts both down with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tools.streams import load_stream  # noqa: E402
from transports.client import InferenceClient  # noqa: E402
from transports.zmq_control import ControlClient  # noqa: E402

PASSES, RATE = 3, 300


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"demo: timed out waiting for {what}")


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="ferretd-demo-"))
    env = {
        **os.environ,
        "RUNTIME_DIRECTORY": str(base / "run"),
        "STATE_DIRECTORY": str(base / "state"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    py = sys.executable
    ctl = [py, "-m", "ferretd.control.ferretctl"]
    print(f"== ferretd demo (runtime and state under {base})")
    daemon_log = open(base / "ferretd.log", "wb")  # noqa: SIM115 - the child process writes it
    infer_log = open(base / "ferret-infer.log", "wb")  # noqa: SIM115
    daemon = subprocess.Popen([py, "-m", "ferretd"], env=env, stdout=daemon_log, stderr=subprocess.STDOUT)
    infer = subprocess.Popen(
        [py, "-m", "ferretd.inference.server"], env=env, stdout=infer_log, stderr=subprocess.STDOUT
    )
    control = f"ipc://{base}/run/control.sock"
    try:
        wait_for(lambda: (base / "run" / "control.sock").exists(), 60, "ferretd to start")
        stream = load_stream("digits", seed=0)
        total = PASSES * len(stream.y)
        print(
            f"== replaying {PASSES} shuffled passes over {len(stream.y)} training digits at {RATE} samples/s "
            f"({len(stream.y_test)} held out)"
        )
        subprocess.run(
            [py, "tools/replay.py", "--rate", str(RATE), "--passes", str(PASSES)], env=env, cwd=ROOT, check=True
        )
        with ControlClient(control, timeout_s=10) as client:
            wait_for(
                lambda: (c := client.call("status").result["counters"])["queued"] == 0
                and c["received"] >= total,
                60,
                "training to finish",
            )
            manifest = client.call("snapshot").result["manifest"]
        print("== ferretctl status")
        subprocess.run([*ctl, "status"], env=env, check=True)

        with InferenceClient(f"ipc://{base}/run/infer.sock", timeout_ms=5000) as infer_client:
            wait_for(lambda: infer_client.info().get("model_seq") == manifest["seq"], 30, "ferret-infer to swap")
            predictions = [infer_client.predict(x) for x in stream.x_test]
        accuracy = float(np.mean([p.label == y for p, y in zip(predictions, stream.y_test, strict=True)]))
        majority = float(np.mean(stream.y_test == np.bincount(stream.y).argmax()))
        print(
            f"== ferret-infer, snapshot {manifest['seq']}: held-out accuracy {accuracy:.3f} on "
            f"{len(stream.y_test)} digits (majority class: {majority:.3f}); "
            f"online accuracy at export {manifest['online_accuracy']:.3f}"
        )
    finally:
        for proc in (infer, daemon):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [infer.wait(60), daemon.wait(60)]
        print(f"== shut down cleanly: ferret-infer exit {codes[0]}, ferretd exit {codes[1]} (logs in {base})")
    return 0 if codes == [0, 0] and accuracy > 2 * majority else 1


if __name__ == "__main__":
    sys.exit(main())
