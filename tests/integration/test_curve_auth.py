"""CURVE on tcp, end to end on 127.0.0.1 with a real Daemon: samples from an authorized device are
received and trained; samples from a client without keys, with an unknown key, or pinned to
another server key never reach the ledger; only authorized clients get snapshot answers; and a
client pinned to the daemon's key gets nothing from a rogue server that holds another key.
ferret-infer follows snapshots over CURVE and serves only authorized applications."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from ferretd.control.keygen import generate
from tests.integration.harness import (
    ROOT,
    ThreadedDaemon,
    child_env,
    config_from,
    digits,
    start_process,
    stop_process,
    wait_for,
    write_config,
)
from transports.client import InferenceClient, SamplePublisher
from transports.codec import pack, unpack
from transports.security import ClientCurve, apply_client_curve, load_keypair, load_public_key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curve_of(secret: Path, server_public: Path) -> ClientCurve:
    return ClientCurve(keys=load_keypair(secret), server_public=load_public_key(server_public))


def ask(context: zmq.Context, endpoint: str, curve: ClientCurve | None, timeout_ms: int) -> dict | None:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    apply_client_curve(sock, curve, endpoint)
    sock.connect(endpoint)
    try:
        sock.send_multipart([b"", pack({"op": "latest"})])
        return unpack(sock.recv_multipart()[-1]) if sock.poll(timeout_ms, zmq.POLLIN) else None
    finally:
        sock.close(linger=0)


def test_only_authorized_clients_get_in(ipc_dir, tmp_path):
    server_public, server_secret = generate(tmp_path / "server", "ferretd")
    device_public, device_secret = generate(tmp_path / "devices", "device-1")
    _rogue_public, rogue_secret = generate(tmp_path / "rogue", "rogue")
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    (authorized / "device-1.key").write_bytes(device_public.read_bytes())
    ingest, latest = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    path = write_config(
        ipc_dir,
        ingest={"endpoint": ingest},
        snapshot={"announce_endpoint": f"tcp://127.0.0.1:{free_port()}", "latest_endpoint": latest},
        security={"server_secret_key_file": str(server_secret), "authorized_keys_dir": str(authorized)},
    )
    good = curve_of(device_secret, server_public)
    unknown_key = curve_of(rogue_secret, server_public)
    wrong_server = curve_of(device_secret, rogue_secret)
    x, y = digits(60)
    context = zmq.Context()
    with ThreadedDaemon(config_from(path)) as running:
        ledger = running.daemon.queue.snapshot
        with SamplePublisher(ingest, "good", curve=good, context=context) as pub:
            for i in range(30):
                assert pub.publish(x[i], int(y[i]))
            wait_for(lambda: ledger().trained == 30, what="authorized samples trained")

        intruders = [
            SamplePublisher(ingest, "anonymous", context=context, send_timeout_ms=300),
            SamplePublisher(ingest, "unknown-key", curve=unknown_key, context=context, send_timeout_ms=300),
            SamplePublisher(ingest, "wrong-server", curve=wrong_server, context=context, send_timeout_ms=300),
        ]
        for intruder in intruders:  # each publish waits up to 300 ms for a handshake that never completes
            for i in range(30, 35):
                intruder.publish(x[i], int(y[i]))
        assert ask(context, latest, good, timeout_ms=10_000) is not None, "an authorized client is answered"
        assert ask(context, latest, None, timeout_ms=1000) is None
        assert ask(context, latest, unknown_key, timeout_ms=1000) is None

        with SamplePublisher(ingest, "good", curve=good, context=context, start_seq=30) as pub:
            for i in range(30, 40):
                assert pub.publish(x[i], int(y[i]))
            wait_for(lambda: ledger().trained == 40, what="authorized samples after the intruders")
        time.sleep(0.5)  # grace for any intruder frame that would (wrongly) still be in flight
        final = ledger()
        assert final.received == 40 and final.invalid == {} and final.devices == 1
        for intruder in intruders:
            intruder.close()

    # A client pinned to the daemon's key gets nothing from a server holding another key.
    rogue_router = context.socket(zmq.ROUTER)
    rogue_keys = load_keypair(rogue_secret)
    rogue_router.curve_secretkey, rogue_router.curve_publickey = rogue_keys.secret, rogue_keys.public
    rogue_router.curve_server = True
    rogue_endpoint = f"tcp://127.0.0.1:{free_port()}"
    rogue_router.bind(rogue_endpoint)
    try:
        assert ask(context, rogue_endpoint, good, timeout_ms=1000) is None
        assert rogue_router.poll(0, zmq.POLLIN) == 0, "the rogue never saw the request"
    finally:
        rogue_router.close(linger=0)
        context.destroy(linger=0)


def test_ferret_infer_gets_snapshots_and_serves_predictions_over_curve(ipc_dir, tmp_path):
    server_public, server_secret = generate(tmp_path / "server", "ferretd")
    app_public, app_secret = generate(tmp_path / "apps", "app-1")
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    (authorized / "app-1.key").write_bytes(app_public.read_bytes())
    (authorized / "ferretd.key").write_bytes(server_public.read_bytes())  # ferret-infer presents the server pair
    inference = f"tcp://127.0.0.1:{free_port()}"
    path = write_config(
        ipc_dir,
        snapshot={
            "every_updates": 30,
            "announce_endpoint": f"tcp://127.0.0.1:{free_port()}",
            "latest_endpoint": f"tcp://127.0.0.1:{free_port()}",
        },
        inference={"endpoint": inference},
        security={"server_secret_key_file": str(server_secret), "authorized_keys_dir": str(authorized)},
    )
    config = config_from(path)
    x, y = digits(40)
    with ThreadedDaemon(config) as running:
        with SamplePublisher(config.ingest.endpoint, "local") as pub:  # ipc: no keys needed
            for i in range(40):
                pub.publish(x[i], int(y[i]))
        wait_for(lambda: running.daemon.store.latest() is not None, timeout=60, what="a snapshot")
        infer = start_process("ferretd.inference.server", path, tmp_path / "infer.log")
        try:
            with InferenceClient(inference, timeout_ms=5000, curve=curve_of(app_secret, server_public)) as client:
                wait_for(lambda: client.info()["model_seq"] is not None, timeout=60, what="a model in ferret-infer")
                first = client.info()["model_seq"]
                with SamplePublisher(config.ingest.endpoint, "local", start_seq=40) as pub:
                    for i in range(40):  # the next snapshot reaches ferret-infer only through the tcp sockets
                        pub.publish(x[i], int(y[i]))
                wait_for(lambda: client.info()["model_seq"] > first, timeout=60, what="a newer snapshot over CURVE")
                assert 0 <= client.predict(x[0]).label < 10
            with InferenceClient(inference, timeout_ms=1000) as anonymous, pytest.raises(TimeoutError):
                anonymous.predict(x[0])
        finally:
            assert stop_process(infer) == 0
    assert "Traceback" not in (tmp_path / "infer.log").read_text()


def test_a_tcp_endpoint_without_keys_fails_check_config_in_one_line(ipc_dir):
    path = write_config(ipc_dir, ingest={"endpoint": f"tcp://127.0.0.1:{free_port()}"})
    out = subprocess.run(
        [sys.executable, "-m", "ferretd", "--check-config", "--config", str(path)],
        capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "[ingest] endpoint: tcp://127.0.0.1:" in out.stderr
    assert "insecure = true" in out.stderr and "Traceback" not in out.stderr
