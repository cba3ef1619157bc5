"""Every rejection reason, random bytes and multipart frames against a real ferretd process:
each is counted by reason, the daemon keeps running and loses nothing it accepted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import msgpack
import numpy as np
import pytest

from ferretd.messages import RejectReason
from tests.integration.harness import (
    ROOT,
    child_env,
    config_from,
    digits,
    start_process,
    stop_process,
    wait_for,
    write_config,
)
from transports.client import SamplePublisher
from transports.codec import encode_sample
from transports.zmq_control import ControlClient

MAX_BYTES = 4096


def envelope(**changes):
    base = {
        "v": 1,
        "device": "bad-device",
        "seq": 0,
        "ts": 1.0,
        "dtype": "<f4",
        "shape": [64],
        "data": np.zeros(64, np.float32).tobytes(),
        "label": 1,
    }
    base.update(changes)
    return msgpack.packb({k: v for k, v in base.items() if v is not ...}, use_bin_type=True)


BAD_FRAMES = {
    RejectReason.MALFORMED: [
        b"\x00not msgpack at all",
        msgpack.packb([1, 2, 3]),
        envelope(device=...),
        envelope(data=b"\x00" * 10),
        envelope(seq=-4),
    ],
    RejectReason.UNKNOWN_VERSION: [envelope(v=99), envelope(v=...)],
    RejectReason.WRONG_SHAPE: [envelope(shape=[8, 8], data=np.zeros(64, np.float32).tobytes()), envelope(shape="x")],
    RejectReason.WRONG_DTYPE: [envelope(dtype="<U4"), envelope(dtype="not-a-type"), envelope(dtype="<c8")],
    RejectReason.NON_FINITE: [
        envelope(data=np.full(64, np.nan, np.float32).tobytes()),
        envelope(data=np.array([np.inf] + [0] * 63, np.float32).tobytes()),
    ],
    RejectReason.TOO_LARGE: [b"\x00" * (MAX_BYTES + 1), envelope(shape=[64 * 64], data=b"\x00" * 64 * 64 * 4)],
    RejectReason.BAD_LABEL: [envelope(label=10), envelope(label=-1), envelope(label="three"), envelope(label=1.5)],
}


def status(config) -> dict:
    with ControlClient(config.control.endpoint, timeout_s=10) as ctl:
        reply = ctl.call("status")
    assert reply.ok
    return reply.result


@pytest.mark.parametrize("decode_in", ["thread", "process"])
def test_every_rejection_reason_is_counted_and_nothing_accepted_is_lost(ipc_dir, tmp_path, decode_in):
    path = write_config(ipc_dir, ingest={"max_message_bytes": MAX_BYTES, "decode_in": decode_in})
    config = config_from(path)
    log_path = tmp_path / "ferretd.log"
    proc = start_process("ferretd", path, log_path)
    try:
        wait_for(lambda: os.path.exists(config.control.endpoint[6:]), what="control socket")
        x, y = digits(200)
        rng = np.random.default_rng(7)
        random_frames = [rng.bytes(int(rng.integers(1, 300))) for _ in range(200)]
        with SamplePublisher(config.ingest.endpoint, "good-device") as publisher:
            for i in range(100):  # interleave good and bad traffic
                publisher.publish(x[i], int(y[i]))
            for frames in BAD_FRAMES.values():
                for frame in frames:
                    assert publisher.send_raw(frame)
            for frame in random_frames:
                publisher.send_raw(frame)
            publisher.send_raw([encode_sample("multi", 0, x[0], 1), b"second part"])
            for i in range(100, 200):
                publisher.publish(x[i], int(y[i]))

        expected_bad = sum(len(v) for v in BAD_FRAMES.values()) + len(random_frames) + 1
        total = 200 + expected_bad
        result = wait_for(
            lambda: (s := status(config))["counters"]["received"] == total and s["counters"]["queued"] == 0 and s,
            what="every frame accounted for",
        )
        counters = result["counters"]
        assert result["state"] == "running"
        assert counters["trained"] == 200, "every accepted sample was trained"
        assert counters["dropped_total"] == 0
        assert counters["balanced"]
        assert counters["invalid_total"] == expected_bad
        for reason, frames in BAD_FRAMES.items():
            assert counters["invalid"].get(reason.value, 0) >= len(frames), reason
        # Random bytes land in some reason (mostly malformed), never in an exception.
        assert sum(counters["invalid"].values()) == expected_bad

        # Still alive and still learning after the abuse.
        with SamplePublisher(config.ingest.endpoint, "good-device-2") as publisher:
            publisher.publish(x[0], int(y[0]))
        wait_for(lambda: status(config)["counters"]["trained"] == 201, what="training after bad input")

        # ferretctl shows the same numbers, as JSON and as a table.
        cli = [sys.executable, "-m", "ferretd.control.ferretctl", "--config", str(path)]
        out = subprocess.run([*cli, "--json", "status"], capture_output=True, text=True, env=child_env(), cwd=ROOT)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["counters"]["invalid"] == counters["invalid"]
        table = subprocess.run([*cli, "status"], capture_output=True, text=True, env=child_env(), cwd=ROOT)
        assert re.search(r"^counters add up\s+yes$", table.stdout, re.MULTILINE), table.stdout
        assert "non_finite" in table.stdout
    finally:
        assert stop_process(proc) == 0
    log_text = log_path.read_text()
    assert "Traceback" not in log_text
    assert "ingest_handler_failed" not in log_text
    # Rate limited: far fewer warning lines than rejected frames.
    assert log_text.count('"sample_rejected"') < expected_bad / 3
