"""100,000+ hostile frames mixed with valid ones through the real ingest socket of a real ferretd
process: every frame lands in exactly one counter (the ledger adds up to what was sent), every
known-bad frame is counted invalid and every valid one is accepted, status still packs after
seq 0 then 2**64-1, the daemon keeps training, and the log holds at most one line per rejection
reason per interval and no traceback.

Frames are cheap to make: a pool of hand-made hostile envelopes (issue 10's dtype strings, ranks,
shapes, versions, seqs, oversize frames, ...) is cycled, and random byte flips of valid frames add
frames whose fate is not known in advance (they only have to be counted somewhere)."""

from __future__ import annotations

import itertools
import json
import os
from collections import defaultdict
from datetime import datetime

import msgpack
import numpy as np

from tests.integration.harness import config_from, digits, start_process, stop_process, wait_for, write_config
from transports.client import SamplePublisher
from transports.codec import encode_sample
from transports.zmq_control import ControlClient

TOTAL = 100_000
VALID = 2_000
FLIPPED = 10_000
MAX_BYTES = 65_536
LOG_INTERVAL_S = 10.0


def envelope(**changes) -> bytes:
    base = {
        "v": 1,
        "device": "hostile",
        "seq": 1,
        "ts": 1.0,
        "dtype": "<f4",
        "shape": [64],
        "data": np.zeros(64, np.float32).tobytes(),
        "label": 1,
    }
    base.update(changes)
    return msgpack.packb({k: v for k, v in base.items() if v is not ...}, use_bin_type=True)


def hostile_pool(rng: np.random.Generator) -> list[bytes | list[bytes]]:
    zeros = np.zeros(64, np.float32).tobytes()
    dtypes = ["(1,2f4", "(-1,)f4", "f4,f4", "(64,)f4", "O", "V256", "S4", "<U4", "<M8[s]", "?", "<c8", "<f16",
              "float32", "d", "=f4", "", "\x00", 4, None, b"<f4", ["<f4"]]  # fmt: skip
    shapes = [[1] * 65, [1] * 9, [0, 2**64 - 1], [2**63, 0], [-1], [64.0], [True] * 64, "64", None, {"a": 1},
              [8, 8], [63], [65], [2**40]]  # fmt: skip
    pool: list[bytes | list[bytes]] = []
    pool += [envelope(dtype=d) for d in dtypes]
    pool += [envelope(shape=s) for s in shapes]
    pool += [envelope(v=v) for v in (True, 1.0, 2, "1", None, ...)]
    pool += [envelope(seq=s) for s in (-1, -(2**63), 1.5, True, "7", None, [1])]
    pool += [envelope(label=v) for v in (10, -1, 1.5, True, "3", None, 2**64 - 1)]
    pool += [envelope(device=d) for d in ("", "x" * 129, 7, None, b"dev")]
    pool += [envelope(ts=t) for t in (float("nan"), float("inf"), "now", None, True)]
    pool += [envelope(data=d) for d in (zeros[:-1], zeros + b"\x00", "text", None, [0] * 256)]
    pool += [envelope(data=np.full(64, np.nan, np.float32).tobytes()), envelope(dtype="<f8", data=b"\xff" * 512)]
    pool += [envelope(dtype="f4," * 20_000)]  # issue 10 item 4: numpy would parse this for seconds
    pool += [msgpack.packb(x) for x in ([1, 2, 3], "str", 5, None, {"v": [1]})]
    pool += [b"", b"\xc1", b"\x00not msgpack", envelope()[:-7], envelope()[:10]]
    pool += [[envelope(), b"second part"], [b"a", b"b", b"c"]]
    pool += [rng.bytes(int(n)) for n in rng.integers(1, 400, size=200)]
    pool += [b"\x00" * (MAX_BYTES + 1 + int(n)) for n in rng.integers(0, 60_000, size=3)]
    return pool


def status(endpoint: str) -> dict:
    with ControlClient(endpoint, timeout_s=20) as ctl:
        reply = ctl.call("status")
    assert reply.ok, reply.error
    return reply.result


def test_hostile_flood_is_counted_exactly_and_training_goes_on(ipc_dir, tmp_path):
    path = write_config(
        ipc_dir,
        ingest={"max_message_bytes": MAX_BYTES, "queue_capacity": 256},
        snapshot={"every_updates": 0, "every_seconds": 0.0},
        checkpoint={"every_updates": 0, "every_seconds": 0.0},
    )
    config = config_from(path)
    log_path = tmp_path / "ferretd.log"
    rng = np.random.default_rng(10)
    x, y = digits()
    valid = [encode_sample(f"good-{i % 4}", i // 4, x[i % len(x)], int(y[i % len(x)])) for i in range(VALID - 4)]
    valid += [encode_sample(d, s, x[0], int(y[0])) for d in ("edge-a", "edge-b") for s in (0, 2**64 - 1)]
    flipped = []
    for i in range(FLIPPED):
        frame = bytearray(valid[i % len(valid)])
        for pos in rng.integers(0, len(frame), size=int(rng.integers(1, 4))):
            frame[pos] ^= int(rng.integers(1, 256))
        flipped.append(bytes(frame))
    pool = hostile_pool(rng)
    hostile = [pool[i % len(pool)] for i in range(TOTAL - VALID - FLIPPED)]
    frames: list[bytes | list[bytes]] = [*valid, *flipped, *hostile]
    order = rng.permutation(len(frames))

    proc = start_process("ferretd", path, log_path)
    try:
        wait_for(lambda: os.path.exists(config.control.endpoint[6:]), what="control socket")
        with SamplePublisher(config.ingest.endpoint, "fuzz", sndhwm=0, send_timeout_ms=60_000) as pub:
            for i in order:
                assert pub.send_raw(frames[i])
            counters = wait_for(
                lambda: (
                    (c := status(config.control.endpoint)["counters"])["received"] == TOTAL and c["queued"] == 0 and c
                ),
                timeout=120,
                what="every frame received and settled",
            )
        assert pub.unsent == 0 and pub.sent == TOTAL
        accepted = counters["trained"] + counters["dropped_total"]
        assert counters["balanced"] and accepted + counters["invalid_total"] == TOTAL
        assert counters["invalid_total"] >= len(hostile), "every known-bad frame is counted invalid"
        assert VALID <= accepted <= VALID + FLIPPED, "every valid frame is accepted"
        assert counters["seq_gaps"] < 2**64 and counters["trained"] > 0

        before = counters["trained"]
        with SamplePublisher(config.ingest.endpoint, "after-the-flood") as pub:
            for i in range(50):
                pub.publish(x[i], int(y[i]))
            wait_for(lambda: status(config.control.endpoint)["counters"]["trained"] == before + 50, what="training")
    finally:
        assert stop_process(proc) == 0

    text = log_path.read_text()
    assert "Traceback" not in text and "ingest_handler_failed" not in text
    times: dict[str, list[datetime]] = defaultdict(list)
    for line in text.splitlines():
        record = json.loads(line)
        if record.get("event") == "sample_rejected":
            times[record["reason"]].append(datetime.fromisoformat(record["timestamp"]))
    assert set(times) >= {"malformed", "wrong_dtype", "wrong_shape", "too_large", "unknown_version", "bad_label"}
    for reason_, stamps in times.items():
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
        assert all(gap >= LOG_INTERVAL_S - 0.01 for gap in gaps), (reason_, gaps)
