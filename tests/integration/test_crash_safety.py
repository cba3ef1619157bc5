"""Crash safety: 20 runs of a real ferretd killed with SIGKILL at random moments while samples
stream in, checkpoints and snapshots being written every few updates (and each write held open
a little by fault injection, so kills land mid-write). After every kill: no torn snapshot or
checkpoint is visible to a reader, the restart resumes from the newest valid checkpoint, and the
resumed counters never go backwards and still add up."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ferretd.checkpoint import CheckpointStore
from ferretd.snapshot.store import SnapshotStore
from tests.integration.harness import ROOT, child_env, config_from, digits, wait_for, write_config
from transports.client import SamplePublisher

RUNS = 20


def visible_state_is_whole(state_dir: Path) -> None:
    """Read every snapshot and checkpoint a reader can see; each must match its manifest."""
    snapshots = SnapshotStore(state_dir / "snapshots")
    for seq in snapshots.sequences():
        snapshots.read(seq)  # raises on a torn or mismatched model
    checkpoints = CheckpointStore(state_dir / "checkpoints")
    for seq in checkpoints.sequences():
        checkpoints.load(seq)  # raises on a torn or mismatched checkpoint


def test_sigkill_at_random_moments_never_tears_state(ipc_dir, tmp_path):
    path = write_config(
        ipc_dir,
        snapshot={"every_updates": 15, "every_seconds": 0.0},
        checkpoint={"every_updates": 10, "every_seconds": 0.0},
    )
    config = config_from(path)
    state_dir = Path(config.state_dir)
    env = {**child_env(), "FERRETD_FAULT_WRITE_DELAY_S": "0.03"}
    rng = random.Random(20261121)
    x, y = digits(400)
    previous = {"received": 0, "trained": 0, "updates": 0}
    resumed_runs = mid_write_kills = 0
    for run in range(RUNS):
        log_path = tmp_path / f"run-{run}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ferretd", "--config", str(path)],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )  # fmt: skip
        stop = threading.Event()

        def stream(device: str = f"dev-{run}", stop: threading.Event = stop) -> None:
            with SamplePublisher(config.ingest.endpoint, device, send_timeout_ms=100) as publisher:
                i = 0
                while not stop.is_set():
                    publisher.publish(x[i % len(x)], int(y[i % len(y)]))
                    i += 1
                    time.sleep(0.002)

        try:
            wait_for(lambda p=log_path: "ferretd_ready" in p.read_text(), timeout=60, what=f"run {run} ready")
            sender = threading.Thread(target=stream)
            sender.start()
            time.sleep(rng.uniform(0.2, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            stop.set()
            if proc.poll() is None:
                proc.kill()
        sender.join(10)
        temps = list(state_dir.rglob(".*.tmp"))
        mid_write_kills += bool(temps)
        visible_state_is_whole(state_dir)

        lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
        resumed = [e for e in lines if e["event"] == "resumed_from_checkpoint"]
        skipped = [e for e in lines if e["event"] == "checkpoint_skipped"]
        assert not skipped, f"run {run}: a visible checkpoint was damaged: {skipped}"
        if run > 0 and resumed:
            resumed_runs += 1
            now = resumed[0]
            assert now["received"] >= previous["received"], f"run {run}: received went backwards"
            assert now["trained"] >= previous["trained"], f"run {run}: trained went backwards"
            assert now["updates"] >= previous["updates"], f"run {run}: updates went backwards"
            previous = {k: now[k] for k in previous}

    # A final clean start resumes from the newest valid checkpoint and its counters add up.
    store = CheckpointStore(state_dir / "checkpoints")
    newest = store.sequences()[-1]
    final_log = tmp_path / "final.log"
    with open(final_log, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ferretd", "--config", str(path)],
            env=child_env(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    try:
        wait_for(lambda: "ferretd_ready" in final_log.read_text(), timeout=60, what="final start")
        from transports.zmq_control import ControlClient

        with ControlClient(config.control.endpoint, timeout_s=10) as ctl:
            status = ctl.call("status").result
        assert status["counters"]["balanced"]
        assert status["counters"]["received"] >= previous["received"]
        resumed = [json.loads(line) for line in final_log.read_text().splitlines() if "resumed_from_checkpoint" in line]
        assert resumed and resumed[0]["seq"] == newest
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert resumed_runs >= RUNS // 2, f"only {resumed_runs} of {RUNS} restarts resumed from a checkpoint"
    assert mid_write_kills >= 1, "no kill landed during a write; the fault-injection window is too small"
    print(f"crash test: {resumed_runs} resumed restarts, {mid_write_kills} kills mid-write")  # shown with -s
