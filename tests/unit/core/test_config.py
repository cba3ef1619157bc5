"""Configuration: embedded defaults, systemd directories, one clear line per mistake, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ferretd.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_file_and_follow_systemd_directories():
    config = load_config(None, env={"RUNTIME_DIRECTORY": "/run/ferretd", "STATE_DIRECTORY": "/var/lib/ferretd"})
    assert config.ingest.endpoint == "ipc:///run/ferretd/ingest.sock"
    assert config.control.endpoint == "ipc:///run/ferretd/control.sock"
    assert config.inference.snapshot_dir == "/var/lib/ferretd/snapshots"
    assert config.model.name == "mlp" and config.model.input_shape == (64,)


def test_xdg_fallbacks_and_explicit_endpoints_win():
    config = load_config(
        None,
        env={"XDG_RUNTIME_DIR": "/run/user/7"},
        overrides={"ingest": {"endpoint": "tcp://*:5555"}, "security": {"insecure": True}},
    )
    assert config.ingest.endpoint == "tcp://*:5555"
    assert config.control.endpoint == "ipc:///run/user/7/ferretd/control.sock"


def test_shipped_example_config_documents_exactly_the_embedded_defaults():
    import dataclasses
    import tomllib

    path = ROOT / "configs" / "ferretd.toml"
    assert load_config(path, env={}) == load_config(None, env={})
    shipped = tomllib.loads(path.read_text())
    defaults = load_config(None, env={})
    for section in dataclasses.fields(defaults):
        keys = {f.name for f in dataclasses.fields(getattr(defaults, section.name))}
        assert set(shipped.get(section.name, {})) == keys, f"[{section.name}] is not fully documented"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[ingest]\nqueue_capacty = 3\n", "unknown key [ingest] queue_capacty (did you mean queue_capacity?)"),
        ("[ingets]\n", "unknown section ingets (did you mean ingest?)"),
        ("[ingest]\nqueue_capacity = -3\n", "[ingest] queue_capacity: must be >= 1, got -3"),
        ("[ingest]\nqueue_capacity = '3'\n", "[ingest] queue_capacity: expected an integer, got '3'"),
        ("[ingest]\noverflow = 'block'\n", "[ingest] overflow: must be one of drop_oldest, drop_newest; got 'block'"),
        ("[training]\nlr = nan\n", "[training] lr: must be finite, got nan"),
        ("[model]\ninput_shape = [0]\n", "[model] input_shape: dimensions must be >= 1, got [0]"),
        ("[control]\nendpoint = 'http://x'\n", "[control] endpoint: must start with ipc://, tcp:// or inproc://"),
        ("ingest = 3\n", "[ingest]: expected a table, got int"),
        ("[ingest\n", "is not valid TOML"),
    ],
)
def test_bad_config_gives_one_clear_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_check_config_cli_exits_2_with_the_line_and_0_when_valid(tmp_path):
    bad = write(tmp_path, "[snapshot]\nkeep = 0\n")
    run = subprocess.run(
        [sys.executable, "-m", "ferretd", "--check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 2
    assert run.stderr.strip() == "ferretd: [snapshot] keep: must be >= 1, got 0"
    ok = subprocess.run(
        [sys.executable, "-m", "ferretd", "--check-config", "--config", str(ROOT / "configs" / "ferretd.toml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
