"""architecture.md's dependency rules, checked on what actually gets imported (transitively).

1. messages, config and snapshot/manifest import only the standard library.
2. transports never import torch or the engine.
3. the training core never imports zmq.
4. inference never imports torch; ferretctl imports only control client code (no torch).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
THIRD_PARTY = {"torch", "zmq", "numpy", "onnxruntime", "onnx", "msgpack", "psutil", "structlog", "sklearn"}


def loaded_after_import(module: str) -> set[str]:
    code = (
        "import sys, json; before = set(sys.modules); import " + module + "; "
        "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module", ["ferretd.messages", "ferretd.config", "ferretd.snapshot.manifest"])
def test_plain_data_modules_are_stdlib_only(module):
    assert loaded_after_import(module) & THIRD_PARTY == set()


@pytest.mark.parametrize(
    "module", ["transports.codec", "transports.client", "transports.zmq_ingest", "transports.zmq_control"]
)
def test_transports_never_import_torch(module):
    loaded = loaded_after_import(module)
    assert "torch" not in loaded
    assert not any(m.startswith("ferretd.engine") for m in loaded)


@pytest.mark.parametrize(
    "module",
    [
        "ferretd.engine.pipeline",
        "ferretd.engine.sequential",
        "ferretd.compensation.iter_fisher",
        "ferretd.planner.planning",
        "ferretd.ocl.er",
        "ferretd.snapshot.export",
    ],
)
def test_training_core_never_imports_zmq(module):
    assert "zmq" not in loaded_after_import(module)


@pytest.mark.parametrize("module", ["ferretd.inference.server", "ferretd.control.ferretctl"])
def test_inference_and_ferretctl_never_import_torch(module):
    assert "torch" not in loaded_after_import(module)
