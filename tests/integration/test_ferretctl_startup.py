"""ferretctl starts fast because it imports only what a command needs (issue 15): a fresh
interpreter that imports it, or runs a command that needs no daemon, has loaded none of the heavy
or daemon-side modules. Not a timing test: README "ferretctl" has the measured import time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.harness import ROOT, child_env

FORBIDDEN = (
    "numpy",
    "structlog",
    "torch",
    "zmq",
    "msgpack",
    "psutil",
    "onnxruntime",
    "ferretd.config",
    "ferretd.daemon",
)
"""Top-level packages (and ferretd subpackages) ferretctl must not load at import time."""

PROGRAM = """
import json, sys
import ferretd.control.ferretctl as ctl
argv = json.loads(sys.argv[1])
if argv:
    sys.stdout = open("/dev/null", "w")
    sys.stderr = sys.stdout
    ctl.main(argv)
    sys.stdout = sys.__stdout__
print(json.dumps(sorted(sys.modules)))
"""


def loaded_modules(argv: list[str]) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, json.dumps(argv)],
        capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def forbidden_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


@pytest.mark.parametrize(
    "argv",
    [[], ["help"], ["help", "budget"], ["--endpoint", "ipc:///nonexistent/ferretd/control.sock", "status"]],
    ids=["import", "help", "help-topic", "not-running"],
)
def test_ferretctl_loads_no_heavy_module(argv: list[str]) -> None:
    modules = loaded_modules(argv)
    assert "ferretd.control.ferretctl" in modules
    assert forbidden_in(modules) == []


def test_talking_to_the_daemon_loads_zmq_and_the_control_client_but_no_structlog_or_numpy(tmp_path) -> None:
    """zmq comes in only when a command talks to a socket (here one that never answers), and the
    control client it uses needs neither structlog nor numpy (nor the config package)."""
    import socket

    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()
        modules = loaded_modules(["--endpoint", f"ipc://{path}", "--timeout", "0.2", "status"])
    assert {"zmq", "msgpack", "transports.control_client"} <= modules
    assert [m for m in forbidden_in(modules) if m.split(".")[0] not in ("zmq", "msgpack")] == []
