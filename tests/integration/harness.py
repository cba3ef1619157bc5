"""Helpers for integration tests: configs in a tmp dir, the daemon in a thread or a process,
ferret-infer as a real process, and waiting on conditions with a deadline."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ferretd.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]


def write_config(directory: str | Path, **sections: dict[str, Any]) -> Path:
    """A TOML config whose runtime and state dirs live in ``directory``."""
    directory = Path(directory)
    base: dict[str, dict[str, Any]] = {
        "daemon": {"runtime_dir": str(directory / "run"), "state_dir": str(directory / "state")},
        "snapshot": {"every_updates": 100, "every_seconds": 0.0},
        # The tests were written for the one-lane plan the [pipeline] keys give; a test of the
        # embedded default (plan = "auto", which re-plans once the arrival rate is measured) asks for it.
        "pipeline": {"plan": "manual"},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    lines = []
    for name, values in base.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, str):
                lines.append(f'{key} = "{value}"')
            elif isinstance(value, list | tuple):
                lines.append(f"{key} = {list(value)}")
            else:
                lines.append(f"{key} = {value}")
    path = directory / "ferretd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def config_from(path: Path) -> Config:
    return load_config(path, env={})


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")


def digits(n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    x = (data.data[order] / 16.0).astype(np.float32)
    y = data.target[order].astype(int)
    return (x[:n], y[:n]) if n else (x, y)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def ferretctl(config_path: str | Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``ferretctl --config config_path argv...`` as an operator would, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "ferretd.control.ferretctl", "--config", str(config_path), *argv],
        capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=timeout,
    )  # fmt: skip


def start_process(module: str, config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        [sys.executable, "-m", module, "--config", str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=child_env(),
        cwd=ROOT,
    )


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            raise
    return proc.returncode


class ThreadedDaemon:
    """Runs :class:`ferretd.daemon.Daemon` on a thread so a test can look inside it."""

    def __init__(self, config: Config, **kwargs: Any) -> None:
        from ferretd.daemon import Daemon

        self.daemon = Daemon(config, **kwargs)
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, name="daemon-under-test", daemon=True)

    def _run(self) -> None:
        self.exit_code = self.daemon.run()

    def __enter__(self) -> ThreadedDaemon:
        self._thread.start()
        wait_for(lambda: self.daemon.state == "running", what="daemon running")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 30.0) -> int | None:
        if self._thread.is_alive():
            self.daemon.request_stop("test")
            self._thread.join(timeout)
        return self.exit_code

    def settled(self, expected: int) -> bool:
        ledger = self.daemon.queue.snapshot()
        return ledger.received >= expected and ledger.queued == 0
