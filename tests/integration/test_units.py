"""The systemd units, installed the README's way into a temporary root: ``systemd-analyze verify``
is clean, every ``Documentation=`` file exists, and neither unit depends on the other having
run first (paths it does not create itself carry the ``-`` that tolerates their absence; the
shared runtime directory is declared and preserved by both), so they start at boot in either
order."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import ROOT

UNITS = ("ferretd.service", "ferret-infer.service")
HOST_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    values: dict[str, dict[str, list[str]]] = {}
    section = ""
    for line in path.read_text().splitlines():  # repeated keys accumulate, as in systemd
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        values.setdefault(section, {}).setdefault(key.strip(), []).extend(value.split())
    return values


def install(root: Path) -> Path:
    """README "Running it as a service": the checkout in /opt/ferretd with its venv, the config
    in /etc/ferretd, the units in /etc/systemd/system; plus the host's stock units and kill(1)."""
    opt = root / "opt" / "ferretd"
    opt.mkdir(parents=True)
    for name in ("README.md", "pyproject.toml", "Makefile"):
        shutil.copy2(ROOT / name, opt / name)
    for name in ("docs", "systemd", "configs", "ferretd", "transports"):
        shutil.copytree(ROOT / name, opt / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv_bin = opt / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    for script in ("ferretd", "ferret-infer", "ferretctl"):
        real = Path(sys.executable).parent / script
        if real.exists():
            shutil.copy2(real, venv_bin / script)
        else:  # an editable install without console scripts: an executable stand-in for the check
            (venv_bin / script).write_text("#!/bin/sh\n")
            (venv_bin / script).chmod(0o755)
    (root / "etc" / "ferretd").mkdir(parents=True)
    shutil.copy2(ROOT / "configs" / "ferretd.toml", root / "etc" / "ferretd" / "ferretd.toml")
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    for name in UNITS:
        shutil.copy2(ROOT / "systemd" / name, units / name)
    host_units = next((d for d in HOST_UNIT_DIRS if (d / "sysinit.target").exists()), None)
    if host_units is not None:
        shutil.copytree(host_units, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    kill = shutil.which("kill") or "/bin/kill"
    (root / "bin").mkdir()
    shutil.copy2(kill, root / "bin" / "kill")
    return units


def test_installed_units_pass_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    if not any((d / "sysinit.target").exists() for d in HOST_UNIT_DIRS):
        pytest.skip("no stock systemd units on this host to verify against")
    root = tmp_path / "root"
    install(root)
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "--man=no", *(f"/etc/systemd/system/{u}" for u in UNITS)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_documentation_points_to_files_the_install_puts_there(tmp_path):
    root = tmp_path / "root"
    install(root)
    for name in UNITS:
        docs = read_unit(ROOT / "systemd" / name)["Unit"].get("Documentation", [])
        assert docs, f"{name} has no Documentation="
        for url in docs:
            assert url.startswith("file:///"), url
            assert (root / url[len("file:///") :]).is_file(), f"{name}: {url} does not exist after install"


def test_units_start_in_either_order():
    units = {name: read_unit(ROOT / "systemd" / name) for name in UNITS}
    for name, unit in units.items():
        service = unit["Service"]
        own = {f"/run/{d}" for d in service.get("RuntimeDirectory", [])}
        own |= {f"/var/lib/{d}" for d in service.get("StateDirectory", [])}
        for key in ("ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths"):
            for path in service.get(key, []):
                assert path.startswith("-") or path in own, (
                    f"{name}: {key}={path} fails the start when the directory does not exist yet; "
                    f"prefix it with '-' or let this unit create it"
                )
        assert service.get("RuntimeDirectory") == ["ferretd"], f"{name} must create the shared runtime dir itself"
        assert service.get("RuntimeDirectoryPreserve") == ["yes"], f"{name} must not remove it from the other"
        assert "Requires" not in unit["Unit"] and "BindsTo" not in unit["Unit"], f"{name} must not need the other"
    assert "ferretd.service" in units["ferret-infer.service"]["Unit"]["After"]
