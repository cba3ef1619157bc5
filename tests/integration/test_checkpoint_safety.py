"""Checkpoints are data, not code: a planted pickle never runs, a checkpoint that does not fit the
configured model is set aside (no crash loop), ``--check-config`` says so first, and health tells
why the daemon started from an older checkpoint or from scratch."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from ferretd import lifecycle
from ferretd.checkpoint import CHECKPOINT_VERSION
from ferretd.snapshot.manifest import sha256_hex
from tests.integration.harness import ROOT, ThreadedDaemon, child_env, config_from, digits, wait_for, write_config
from transports.client import SamplePublisher


class Planted:
    """Unpickling this runs a shell command (what a hostile checkpoint would do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(directory, seq: int, payload: object) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    (directory / f"ckpt-{seq:08d}.pt").write_bytes(data)
    meta = {"seq": seq, "file": f"ckpt-{seq:08d}.pt", "sha256": sha256_hex(data), "size_bytes": len(data)}
    (directory / f"ckpt-{seq:08d}.json").write_text(json.dumps(meta))


def train(config, n: int, device: str = "dev") -> None:
    x, y = digits(n)
    with SamplePublisher(config.ingest.endpoint, device) as publisher:
        for features, label in zip(x, y, strict=True):
            publisher.publish(features, int(label))


def check_config(path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferretd", "--check-config", "--config", str(path)],
        capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=120,
    )  # fmt: skip


def health_reasons(td: ThreadedDaemon) -> list[str]:
    return lifecycle.health(td.daemon)["reasons"]


def test_planted_pickle_never_runs_and_the_older_checkpoint_is_resumed(ipc_dir, tmp_path):
    config = config_from(write_config(ipc_dir))
    with ThreadedDaemon(config) as td:
        train(config, 40)
        wait_for(lambda: td.settled(40), what="first run trained")
    assert td.exit_code == 0
    checkpoints = config.state_dir / "checkpoints"
    marker = tmp_path / "pwned"
    plant(checkpoints, 2, {"checkpoint_version": CHECKPOINT_VERSION, "learner": Planted(str(marker))})

    with ThreadedDaemon(config) as td2:
        assert not marker.exists()
        assert td2.daemon.resumed_from == 1
        assert td2.daemon.queue.snapshot().trained == 40
        (reason,) = [r for r in health_reasons(td2) if "older checkpoint" in r]
        assert "checkpoint 2 unusable" in reason
        assert td2.daemon.status()["checkpoint"]["resumed_from"] == 1
    assert not marker.exists()


def test_all_checkpoints_unusable_starts_from_scratch_and_health_says_so(ipc_dir, tmp_path):
    config = config_from(write_config(ipc_dir))
    checkpoints = config.state_dir / "checkpoints"
    checkpoints.mkdir(parents=True)
    marker = tmp_path / "pwned"
    plant(checkpoints, 1, {"checkpoint_version": CHECKPOINT_VERSION, "x": Planted(str(marker))})
    plant(checkpoints, 2, Planted(str(marker)))
    with ThreadedDaemon(config) as td:
        assert td.daemon.resumed_from is None
        assert any("resumed from scratch" in r for r in health_reasons(td))
        assert lifecycle.health(td.daemon)["status"] == "degraded"
        train(config, 20)
        wait_for(lambda: td.settled(20), what="trains from scratch")
    assert not marker.exists()


def test_incompatible_checkpoint_is_refused_by_check_config_then_set_aside_at_start(ipc_dir):
    first = write_config(ipc_dir, model={"hidden": [32, 16]})
    config = config_from(first)
    with ThreadedDaemon(config) as td:
        train(config, 30)
        wait_for(lambda: td.settled(30), what="first run trained")
    assert td.exit_code == 0

    changed = write_config(ipc_dir, model={"hidden": [24]})
    checked = check_config(changed)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert len(checked.stderr.strip().splitlines()) == 1
    assert "does not fit [model]" in checked.stderr

    config2 = config_from(changed)
    with ThreadedDaemon(config2) as td2:
        assert td2.daemon.resumed_from is None
        checkpoints = config2.state_dir / "checkpoints"
        assert (checkpoints / "ckpt-00000001.pt.incompatible").exists()
        assert not (checkpoints / "ckpt-00000001.json").exists()
        assert any("does not fit the config and was set aside" in r for r in health_reasons(td2))
        train(config2, 20, device="dev-2")
        wait_for(lambda: td2.settled(20), what="trains with the new model")
    assert td2.exit_code == 0
    assert check_config(changed).returncode == 0  # the new model's own checkpoint fits


def test_check_config_refuses_a_factory_that_cannot_build_the_model(ipc_dir):
    """The module imports (the config loader checks that much) but building the model fails."""
    (Path(ipc_dir) / "broken_factory.py").write_text(
        "import missing_dependency_of_the_factory\n\ndef build(config):\n    return None\n"
    )
    path = write_config(ipc_dir, model={"name": "custom", "factory": "broken_factory:build", "factory_path": ipc_dir})
    checked = check_config(path)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert checked.stderr.count("\n") == 1
    assert "broken_factory" in checked.stderr


def test_a_checkpoint_that_fits_but_cannot_be_resumed_is_set_aside_cleanly(ipc_dir):
    """Weights fit, the rest is garbage: the half-done resume is undone and the older one used."""
    from ferretd.checkpoint import CheckpointStore

    config = config_from(write_config(ipc_dir))
    with ThreadedDaemon(config) as td:
        train(config, 40)
        wait_for(lambda: td.settled(40), what="first run trained")
    store = CheckpointStore(config.state_dir / "checkpoints")
    state = store.load(1)
    state["ledger"]["received"] = 10**6  # restored first, then the invalid counts fail half-way
    state["ledger"]["invalid"] = {"malformed": "lots"}
    store.save(state)

    with ThreadedDaemon(config) as td2:
        assert td2.daemon.resumed_from == 1
        ledger = td2.daemon.queue.snapshot()
        assert (ledger.received, ledger.trained) == (40, 40) and ledger.balanced
        assert (config.state_dir / "checkpoints" / "ckpt-00000002.pt.incompatible").exists()
        assert any("cannot be resumed" in r for r in health_reasons(td2))
        train(config, 10, device="dev-2")
        wait_for(lambda: td2.settled(50), what="trains on")
