"""Peers' numbers cannot break status (seq gaps saturate, status always packs), and the control and
snapshot ROUTER threads answer every request, however malformed, and keep serving (real ZeroMQ
sockets on ipc:// in a tmp dir)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq

from ferretd.ingest import COUNTER_MAX, SampleQueue
from ferretd.messages import ControlReply, ControlRequest, Sample
from transports.codec import pack, unpack
from transports.zmq_control import ControlClient, ControlServer
from transports.zmq_snapshots import SnapshotService

MAX_SEQ = 2**64 - 1


def sample(device: str, seq: int) -> Sample:
    return Sample(device=device, seq=seq, timestamp=0.0, features=np.zeros(2, np.float32), label=0)


def test_seq_gaps_saturate_and_status_still_packs():
    queue = SampleQueue(capacity=8)
    for round_ in range(4):
        for device in ("a", "b"):
            queue.offer(sample(device, 0))
            queue.offer(sample(device, MAX_SEQ))
        assert queue.snapshot().seq_gaps == COUNTER_MAX, round_
    ledger = queue.snapshot().to_dict()
    assert msgpack.unpackb(msgpack.packb(ledger))["seq_gaps"] == COUNTER_MAX
    assert ledger["seq_resets"] >= 6


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def raw_request(ctx: zmq.Context, endpoint: str, frames: list[bytes], timeout_ms: int = 10_000) -> dict | None:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames)
        if not sock.poll(timeout_ms, zmq.POLLIN):
            return None
        return unpack(sock.recv_multipart()[-1])
    finally:
        sock.close(linger=0)


JUNK = [
    [b"", b"\xc1garbage"],
    [b"", msgpack.packb([1, 2, 3])],
    [b"", msgpack.packb({"cmd": 5})],
    [b"", msgpack.packb({"cmd": "status", "args": [1]})],
    [b"", msgpack.packb({"op": "fetch", "seq": "x"})],
    [b"", msgpack.packb({"op": "fetch", "seq": 2**64 - 1})],
    [b"junk", b"more junk", b"", b"\x93\x01"],
    [b""],
]


def test_control_thread_answers_every_request_and_survives(context, ipc_dir):
    endpoint = f"ipc://{ipc_dir}/control.sock"

    def handle(request: ControlRequest) -> ControlReply:
        if request.cmd == "boom":
            raise RuntimeError("handler bug")
        if request.cmd == "huge":
            return ControlReply(ok=True, result={"seq_gaps": 2**64 + 5})  # cannot be packed
        return ControlReply(ok=True, result={"pong": request.cmd})

    server = ControlServer(context, endpoint, handle, max_request_bytes=4096)
    server.start()
    try:
        for frames in JUNK:
            reply = raw_request(context, endpoint, frames)
            assert reply is not None and reply["ok"] is False, frames
        with ControlClient(endpoint, timeout_s=10, context=context) as client:
            assert client.call("boom").ok is False
            huge = client.call("huge")
            assert huge.ok is False and "could not be encoded" in huge.error
            assert raw_request(context, endpoint, [b"", b"\x00" * 8192], timeout_ms=300) is None  # over the limit
            assert client.call("ping").result == {"pong": "ping"}
        assert server.errors >= len(JUNK) + 2
        assert server._thread.is_alive()
    finally:
        server.stop()
    assert oct(__import__("os").stat(f"{ipc_dir}/control.sock").st_mode & 0o777) == "0o600"


def test_snapshot_router_answers_every_request_and_survives(context, ipc_dir):
    latest_endpoint = f"ipc://{ipc_dir}/latest.sock"

    def fetch(seq: int):
        if seq == 13:
            raise OSError("disk gone")
        return ({"seq": seq}, b"onnx") if seq == 1 else None

    service = SnapshotService(
        context, f"ipc://{ipc_dir}/ann.sock", latest_endpoint, latest=lambda: {"seq": 1}, fetch=fetch
    )
    service.start()
    try:
        for frames in [*JUNK, [b"", pack({"op": "fetch", "seq": 13})], [b"", pack({"op": "nope"})]]:
            reply = raw_request(context, latest_endpoint, frames)
            assert reply is not None and reply["ok"] is False, frames
        assert raw_request(context, latest_endpoint, [b"", b"\x00" * 8192], timeout_ms=300) is None
        assert raw_request(context, latest_endpoint, [b"", pack({"op": "fetch", "seq": 1})])["data"] == b"onnx"
        assert raw_request(context, latest_endpoint, [b"", pack({"op": "latest"})])["manifest"] == {"seq": 1}
        assert service.errors >= len(JUNK) + 2
    finally:
        service.stop()
