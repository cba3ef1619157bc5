"""[security]: tcp endpoints refuse to start without CURVE keys unless ``insecure = true``, control
never goes on tcp without keys, key files are checked; ``ferretctl keygen`` writes an owner-only
secret and never overwrites a key."""

from __future__ import annotations

import os
import stat

import pytest

from ferretd.config import ConfigError, load_config
from ferretd.control.ferretctl import main as ferretctl
from ferretd.control.keygen import generate
from transports.security import KeyFileError, client_curve_from, load_keypair, load_public_key, server_keys_from

TCP = "tcp://127.0.0.1:5555"


def load(**sections):
    return load_config(None, env={"XDG_RUNTIME_DIR": "/run/user/7"}, overrides=sections)


@pytest.fixture
def keys(tmp_path):
    _public, server_secret = generate(tmp_path / "keys", "server")
    generate(tmp_path / "authorized", "device-1")
    return {"server_secret_key_file": str(server_secret), "authorized_keys_dir": str(tmp_path / "authorized")}


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("ingest", "endpoint"),
        ("inference", "endpoint"),
        ("snapshot", "announce_endpoint"),
        ("snapshot", "latest_endpoint"),
    ],
)
def test_a_tcp_endpoint_without_keys_refuses_to_start(section, key):
    with pytest.raises(ConfigError) as info:
        load(**{section: {key: TCP}})
    message = str(info.value)
    assert message.startswith(f"[{section}] {key}:") and "insecure = true" in message and "\n" not in message
    assert getattr(load(**{section: {key: TCP}}, security={"insecure": True}), section).__dict__[key] == TCP


def test_control_over_tcp_needs_keys_even_when_insecure(keys):
    with pytest.raises(ConfigError, match=r"^\[control\] endpoint: .* needs \[security\] server_secret_key_file"):
        load(control={"endpoint": TCP}, security={"insecure": True})
    assert load(control={"endpoint": TCP}, security=keys).control.endpoint == TCP


def test_ipc_endpoints_need_no_keys():
    assert load().ingest.endpoint.startswith("ipc://")


def test_key_files_are_checked(keys, tmp_path):
    assert load(ingest={"endpoint": TCP}, security=keys).security.curve
    with pytest.raises(ConfigError, match=r"^\[security\] server_secret_key_file: no such file"):
        load(security={**keys, "server_secret_key_file": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match=r"^\[security\] authorized_keys_dir: no such directory"):
        load(security={**keys, "authorized_keys_dir": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match=r"^\[security\] authorized_keys_dir: needed"):
        load(security={"server_secret_key_file": keys["server_secret_key_file"]})


def test_a_public_certificate_is_not_a_key_pair(keys, tmp_path):
    public = tmp_path / "keys" / "server.key"
    with pytest.raises(KeyFileError, match="no secret key"):
        load_keypair(public)
    with pytest.raises(KeyFileError):
        load_public_key(tmp_path / "nothing.key")
    pair = load_keypair(keys["server_secret_key_file"])
    assert load_public_key(public) == pair.public and len(pair.secret) == 40


def test_client_curve_defaults_to_the_server_pair(keys):
    config = load(security=keys)
    server = server_keys_from(config.security)
    client = client_curve_from(config.security)
    assert server is not None and client is not None
    assert client.server_public == server.public and client.keys == server
    assert server_keys_from(load().security) is None and client_curve_from(load().security) is None


def test_keygen_writes_an_owner_only_secret_and_never_overwrites(tmp_path, capsys):
    directory = tmp_path / "new" / "keys"
    assert ferretctl(["keygen", str(directory), "--name", "edge-7"]) == 0
    secret = directory / "edge-7.key_secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert "edge-7.key" in capsys.readouterr().out
    before = secret.read_bytes()
    assert ferretctl(["keygen", str(directory), "--name", "edge-7"]) == 2
    assert "not overwriting" in capsys.readouterr().err
    assert secret.read_bytes() == before
    assert ferretctl(["keygen", str(directory), "--name", "../escape"]) == 2
    assert not (tmp_path / "new" / "escape.key").exists()


def test_size_limits_must_hold_one_sample_of_the_model():
    big = {"name": "convnet", "input_shape": [3, 128, 128]}
    with pytest.raises(ConfigError, match=r"^\[ingest\] max_message_bytes: 65536 is below one float32 sample"):
        load(model=big)
    with pytest.raises(ConfigError, match=r"^\[inference\] max_request_bytes: 65536 is below"):
        load(model=big, ingest={"max_message_bytes": 1 << 20})
    assert load(model=big, ingest={"max_message_bytes": 1 << 20}, inference={"max_request_bytes": 1 << 20})
