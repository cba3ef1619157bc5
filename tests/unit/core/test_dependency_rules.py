"""Every rule of architecture.md's "Dependency rules worth keeping", checked on every module.

The imports are read statically (``ast``) from every module of ``ferretd/`` and ``transports/``:
module-level imports and imports inside functions alike (a late import is still a dependency),
but not ``if TYPE_CHECKING:`` blocks (never executed). Importing ``a.b.c`` also runs the
packages ``a`` and ``a.b``. Rules are checked on the transitive closure over project modules, so
a rule cannot be dodged through a helper module. One fresh interpreter per rule group confirms
what really lands in ``sys.modules`` where that is the honest check (it sees dynamic imports).

The rules as the code keeps them (where architecture.md's wording is narrower, the docstrings of
the tests below say why):

1. ``messages``, the ``config`` package and ``snapshot/manifest`` need only the standard library
   (transitively: manifest uses the stdlib-only ``ferretd.fsutil`` and ``ferretd.messages``).
2. ``transports/`` imports zmq, msgpack and ``ferretd.messages``; numpy only in
   ``transports.arrays``; the three server modules also log through structlog and
   ``ferretd.logs``. Never torch, never another part of ferretd. What a device or a client
   imports (wire, arrays, client, control_client, security) needs no structlog.
3. The training core (engine, compensation, planner, ocl, snapshot/export) never imports zmq.
4. ``inference/`` never imports torch. ``ferretctl`` imports only control client code.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.import_graph import (
    PACKAGES,
    ROOT,
    STDLIB,
    all_modules,
    direct_imports,
    imports_in_source,
)

# --------------------------------------------------------------------------- rules over the graph


def closure(name: str, late: bool = True, top_level_only: frozenset[str] = frozenset()) -> set[str]:
    """Everything ``name`` imports, transitively through project modules. Modules in
    ``top_level_only`` contribute their module-level imports only."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        for target in direct_imports(current, late=late and current not in top_level_only):
            if target not in seen:
                seen.add(target)
                if target in all_modules():
                    todo.append(target)
    return seen


def external(names: set[str]) -> set[str]:
    return {n for n in names if n.split(".")[0] not in PACKAGES and n not in STDLIB}


def project(names: set[str]) -> set[str]:
    return {n for n in names if n.split(".")[0] in PACKAGES}


def under(prefix: str) -> list[str]:
    return sorted(m for m in all_modules() if m == prefix or m.startswith(prefix + "."))


def loaded_after_import(module: str) -> set[str]:
    """Module names a fresh interpreter holds after ``import module`` that it did not hold before."""
    code = (
        "import sys, json; before = set(sys.modules); import " + module + "; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(json.loads(out.stdout))


def tops(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


# --------------------------------------------------------------------------- the scanner itself


def test_the_scanner_sees_late_relative_and_package_imports() -> None:
    source = (
        "from __future__ import annotations\nimport os\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import torch\nelse:\n    import json\n"
        "try:\n    import zmq\nexcept ImportError:\n    import msgpack\n"
        "def late():\n    import numpy\n    from . import render\n"
        "class K:\n    import structlog\n"
    )
    got = imports_in_source("ferretd.control.x", source, is_package=False)
    assert {"os", "json", "zmq", "msgpack", "numpy", "ferretd.control.render", "structlog"} <= got
    assert "torch" not in got
    assert "numpy" not in imports_in_source("ferretd.control.x", source, is_package=False, late=False)
    assert len(all_modules()) > 60, "the walk must see the whole code base"


# --------------------------------------------------------------------------- rule 1


PLAIN_DATA = ["ferretd.messages", *under("ferretd.config"), "ferretd.snapshot.manifest"]


@pytest.mark.parametrize("module", PLAIN_DATA)
def test_plain_data_modules_need_only_the_standard_library(module: str) -> None:
    """Rule 1 says "import only the standard library"; config is a package now and manifest uses
    ferretd.fsutil and ferretd.messages, so the rule kept is: stdlib only, transitively."""
    found = closure(module)
    assert external(found) == set(), external(found)
    assert project(found) <= {"ferretd", "ferretd.fsutil", "ferretd.messages", "ferretd.snapshot", *PLAIN_DATA}


@pytest.mark.parametrize("module", ["ferretd.messages", "ferretd.config", "ferretd.snapshot.manifest"])
def test_plain_data_modules_load_no_third_party_package(module: str) -> None:
    assert {t for t in tops(loaded_after_import(module)) if t not in STDLIB} <= set(PACKAGES)


# --------------------------------------------------------------------------- rule 2

TRANSPORTS = under("transports")
SERVERS = {"transports.zmq_ingest", "transports.zmq_ingest_process", "transports.zmq_snapshots",
           "transports.zmq_control"}  # fmt: skip
CLIENT_SIDE = ["transports.wire", "transports.arrays", "transports.client", "transports.control_client",
               "transports.security", "transports.codec"]  # fmt: skip


@pytest.mark.parametrize("module", TRANSPORTS)
def test_transports_import_only_zmq_msgpack_and_messages(module: str) -> None:
    """numpy only in transports.arrays; structlog and ferretd.logs (the daemon's log helpers) only in
    the server modules, which run inside ferretd and ferret-infer."""
    allowed = {"zmq", "msgpack", "ferretd", "ferretd.messages", *TRANSPORTS}
    if module == "transports.arrays":
        allowed.add("numpy")
    if module in SERVERS:
        allowed |= {"structlog", "ferretd.logs"}
    direct = {n for n in direct_imports(module) if n not in STDLIB}
    assert direct <= allowed, sorted(direct - allowed)


@pytest.mark.parametrize("module", TRANSPORTS)
def test_transports_never_reach_torch_or_the_rest_of_ferretd(module: str) -> None:
    found = closure(module)
    assert "torch" not in found
    assert project(found) - set(TRANSPORTS) <= {"ferretd", "ferretd.messages", "ferretd.logs"}


@pytest.mark.parametrize("module", CLIENT_SIDE)
def test_what_clients_import_needs_no_structlog(module: str) -> None:
    assert "structlog" not in closure(module)
    assert "numpy" not in closure(module) or module in {"transports.arrays", "transports.client", "transports.codec"}


def test_the_device_client_loads_no_structlog_torch_or_daemon_code() -> None:
    loaded = loaded_after_import("transports.client")
    assert tops(loaded) & {"structlog", "torch", "onnxruntime", "psutil"} == set()
    assert project(loaded) <= {"ferretd", "ferretd.messages", *TRANSPORTS}


def test_the_wire_module_and_the_control_client_load_no_numpy() -> None:
    for module in ("transports.wire", "transports.control_client"):
        assert tops(loaded_after_import(module)) & {"numpy", "structlog", "torch"} == set(), module


# --------------------------------------------------------------------------- rule 3

TRAINING_CORE = [
    *under("ferretd.engine"),
    *under("ferretd.compensation"),
    *under("ferretd.planner"),
    *under("ferretd.ocl"),
    *(m for m in under("ferretd.snapshot") if m not in {"ferretd.snapshot.manifest", "ferretd.snapshot.store"}),
]
"""snapshot/export: every snapshot module but the manifest and the store (ONNX export and its worker)."""


@pytest.mark.parametrize("module", TRAINING_CORE)
def test_training_core_never_imports_zmq(module: str) -> None:
    found = closure(module)
    assert "zmq" not in found
    assert not {m for m in found if m.startswith("transports")}, "zmq through the transports"


def test_training_core_loads_no_zmq_in_a_fresh_interpreter() -> None:
    code = "; ".join(f"import {m}" for m in TRAINING_CORE if not m.endswith("__main__"))
    out = subprocess.run(
        [sys.executable, "-c", f"{code}; import sys; print('zmq' in sys.modules)"],
        capture_output=True, text=True, cwd=ROOT, check=True, timeout=300,
    )  # fmt: skip
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- rule 4

CONTROL_CLIENT = {
    "ferretd",
    "ferretd.messages",
    "ferretd.control",
    "ferretd.control.arguments",
    "ferretd.control.commands",
    "ferretd.control.discovery",
    "ferretd.control.ferretctl",
    "ferretd.control.infer",
    "ferretd.control.keygen",
    "ferretd.control.plot",
    "ferretd.control.render",
    "transports",
    "transports.arrays",
    "transports.client",
    "transports.control_client",
    "transports.security",
    "transports.wire",
}
"""ferretctl's side of the control plane: the CLI, the command table, discovery, rendering, and
the clients of ferretd's control socket and ferret-infer's socket."""


@pytest.mark.parametrize("module", under("ferretd.inference"))
def test_inference_never_imports_torch(module: str) -> None:
    assert "torch" not in closure(module)


def test_inference_server_loads_no_torch_in_a_fresh_interpreter() -> None:
    assert "torch" not in tops(loaded_after_import("ferretd.inference.server"))


def test_ferretctl_imports_only_control_client_code() -> None:
    """Everything any ferretctl command may import. The config package is read (lazily) to find
    the sockets; the command table's handlers run in the daemon, so only that module's
    module-level imports count; numpy (infer) and matplotlib (history --png) load lazily."""
    found = closure("ferretd.control.ferretctl", top_level_only=frozenset({"ferretd.control.commands"}))
    allowed_project = CONTROL_CLIENT | set(under("ferretd.config"))
    assert project(found) <= allowed_project, sorted(project(found) - allowed_project)
    assert tops(external(found)) <= {"zmq", "msgpack", "numpy", "matplotlib"}, sorted(external(found))


def test_ferretctl_at_import_loads_the_standard_library_and_its_own_modules_only() -> None:
    found = closure("ferretd.control.ferretctl", late=False)
    assert external(found) == set(), sorted(external(found))
    assert project(found) <= CONTROL_CLIENT - {m for m in CONTROL_CLIENT if m.startswith("transports")}
    loaded = loaded_after_import("ferretd.control.ferretctl")
    assert tops(loaded) - STDLIB <= set(PACKAGES), sorted(tops(loaded) - STDLIB)
    assert project(loaded) <= CONTROL_CLIENT
