"""Issue 10's malformed requests against every ROUTER of real ferretd and ferret-infer processes:
inference (the ``"(1,2f4"`` dtype that used to kill ferret-infer, huge and 65-dimensional shapes,
a comma-separated dtype, garbage msgpack, wrong types, multipart junk, oversize), control and the
snapshot ROUTER. Every request but the oversize ones (which ZeroMQ drops at the socket) gets an
``ok: false`` reply, is counted, and a valid client is still answered afterwards; control status
still packs after two devices sent seq 0 then 2**64-1; both processes exit 0 without a traceback."""

from __future__ import annotations

import os

import msgpack
import numpy as np
import zmq

from tests.integration.harness import config_from, digits, start_process, stop_process, wait_for, write_config
from transports.client import InferenceClient, SamplePublisher, SnapshotSubscriber
from transports.codec import encode_sample, pack, unpack
from transports.zmq_control import ControlClient

ZEROS = np.zeros(64, np.float32).tobytes()


def predict(dtype="<f4", shape=(64,), data=ZEROS, **extra) -> bytes:
    return pack({"op": "predict", "x": {"dtype": dtype, "shape": list(shape), "data": data}, **extra})


BAD_PREDICT = [
    [b"", predict(dtype="(1,2f4")],
    [b"", predict(dtype="(-1,)f4")],
    [b"", predict(dtype="f4," * 5000)],
    [b"", predict(dtype="O")],
    [b"", predict(shape=[0, 2**64 - 1], data=b"")],
    [b"", predict(shape=[1] * 65)],
    [b"", predict(shape=[8, 8])],
    [b"", pack({"op": "predict", "x": {"dtype": "<f4", "shape": "64", "data": ZEROS}})],
    [b"", predict(data=np.full(64, np.nan, np.float32).tobytes())],
    [b"", predict(data=ZEROS[:-4])],
    [b"", pack({"op": "predict", "x": [1, 2, 3]})],
    [b"", pack({"op": "predict"})],
    [b"", pack({"op": "explode"})],
    [b"", pack({"op": 2**64 - 1})],
    [b"", pack([1, 2])],
    [b"", b"\xc1\xc1garbage"],
    [b""],
    [b"junk", b"more", b"", b"\x93\x01"],
]
BAD_CONTROL = [
    [b"", b"\xc1"],
    [b"", pack([1])],
    [b"", pack({"cmd": 5})],
    [b"", pack({"cmd": "status", "args": "x"})],
    [b"", pack({"cmd": "no-such-command"})],
    [b"", pack({"cmd": "budget", "args": {"bytes": "lots"}})],
    [b"", pack({"cmd": "x" * 10_000})],
    [b"junk", b"", b"\xff"],
]
BAD_SNAPSHOT = [
    [b"", b"\xc1"],
    [b"", pack({"op": "fetch", "seq": "1"})],
    [b"", pack({"op": "fetch", "seq": 2**64 - 1})],
    [b"", pack({"op": "fetch", "seq": -5})],
    [b"", pack({"op": None})],
    [b"", pack("latest")],
    [b"junk", b"", b"\xff"],
]


def ask(context: zmq.Context, endpoint: str, frames: list[bytes], timeout_ms: int = 10_000) -> dict | None:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames)
        return unpack(sock.recv_multipart()[-1]) if sock.poll(timeout_ms, zmq.POLLIN) else None
    finally:
        sock.close(linger=0)


def every_bad_request_is_refused(context: zmq.Context, endpoint: str, requests: list, oversize: int) -> None:
    for frames in requests:
        reply = ask(context, endpoint, frames)
        assert isinstance(reply, dict) and reply.get("ok") is False, (endpoint, frames[-1][:40], reply)
    assert ask(context, endpoint, [b"", b"\x00" * oversize], timeout_ms=500) is None, "dropped by MAXMSGSIZE"


def test_every_server_loop_survives_malformed_requests(ipc_dir, tmp_path):
    path = write_config(ipc_dir, snapshot={"every_updates": 50, "every_seconds": 0.0})
    config = config_from(path)
    daemon = start_process("ferretd", path, tmp_path / "ferretd.log")
    infer = None
    context = zmq.Context()
    try:
        wait_for(lambda: os.path.exists(config.control.endpoint[6:]), what="control socket")
        infer = start_process("ferretd.inference.server", path, tmp_path / "infer.log")
        x, y = digits(120)
        with SamplePublisher(config.ingest.endpoint, "good") as pub:
            for i in range(120):
                pub.publish(x[i], int(y[i]))
            for device in ("edge-a", "edge-b"):  # issue 10 item 2: gaps past 2**64
                for seq in (0, 2**64 - 1):
                    pub.send_raw(encode_sample(device, seq, x[0], int(y[0])))
        with InferenceClient(config.inference.endpoint, timeout_ms=5000) as client:
            wait_for(lambda: client.info()["model_seq"] is not None, timeout=60, what="a model in ferret-infer")
            endpoints = [config.ingest.endpoint, config.control.endpoint, config.inference.endpoint,
                         config.snapshot.announce_endpoint, config.snapshot.latest_endpoint]  # fmt: skip
            assert {oct(os.stat(e[len("ipc://") :]).st_mode & 0o777) for e in endpoints} == {"0o600"}

            every_bad_request_is_refused(context, config.inference.endpoint, BAD_PREDICT, 70_000)
            every_bad_request_is_refused(context, config.control.endpoint, BAD_CONTROL, 70_000)
            every_bad_request_is_refused(context, config.snapshot.latest_endpoint, BAD_SNAPSHOT, 5000)

            prediction = client.predict(x[0])
            assert 0 <= prediction.label < 10 and prediction.model_seq >= 1
            info = client.info()
            assert sum(info["bad_requests"].values()) >= len(BAD_PREDICT)
            assert {"wrong_dtype", "wrong_shape", "too_large", "bad_request"} <= set(info["bad_requests"])
        with ControlClient(config.control.endpoint, timeout_s=10) as ctl:
            status = ctl.call("status")
        assert status.ok and status.result["counters"]["received"] == 124
        assert status.result["counters"]["seq_gaps"] < 2**64
        sockets = status.result["sockets"]  # garbage that never reached a handler, counted per socket
        assert sockets["control_errors"] >= 5 and sockets["snapshot_errors"] >= len(BAD_SNAPSHOT)
        subscriber = SnapshotSubscriber(config.snapshot.announce_endpoint, config.snapshot.latest_endpoint)
        try:
            assert subscriber.request_latest()["seq"] >= 1
        finally:
            subscriber.close()
        msgpack.packb(status.result)
    finally:
        context.destroy(linger=0)
        codes = [stop_process(proc) for proc in (infer, daemon) if proc is not None]
    assert codes == [0, 0]
    for name in ("ferretd.log", "infer.log"):
        text = (tmp_path / name).read_text()
        assert "Traceback" not in text, name
