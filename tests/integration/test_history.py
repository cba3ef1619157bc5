"""``ferretctl history`` against a real daemon: a bounded history of counters and online
accuracy, printed as a table, as JSON, and written as a PNG learning curve."""

from __future__ import annotations

import json
import os
import struct

import pytest

from tests.integration.harness import (
    config_from,
    digits,
    ferretctl,
    start_process,
    stop_process,
    wait_for,
    write_config,
)
from transports.client import SamplePublisher

ctl = ferretctl


@pytest.fixture
def live(ipc_dir, tmp_path):
    path = write_config(ipc_dir, metrics={"history_every_s": 0.2, "history_points": 6})
    config = config_from(path)
    proc = start_process("ferretd", path, tmp_path / "ferretd.log")
    wait_for(lambda: os.path.exists(config.control.endpoint[6:]), timeout=60, what="control socket")
    yield path, config
    stop_process(proc)


def test_history_table_json_and_png(live, tmp_path):
    path, config = live
    x, y = digits(150)
    with SamplePublisher(config.ingest.endpoint, "dev") as pub:
        for features, label in zip(x, y, strict=True):
            pub.publish(features, int(label))

    def history_now() -> dict:
        result = ctl(path, "history", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    first_t = wait_for(lambda: history_now()["points"], what="a first point")[0][0]

    def rolled_and_trained():
        history = history_now()
        points = history["points"]
        trained = points[-1][history["fields"].index("trained")]
        return points[0][0] > first_t and trained == 150 and history

    history = wait_for(rolled_and_trained, timeout=60, what="the first point rolled out, everything trained")
    assert history["capacity"] == 6 and len(history["points"]) == 6, "bounded: the oldest points are gone"
    rows = [dict(zip(history["fields"], p, strict=True)) for p in history["points"]]
    assert [r["t"] for r in rows] == sorted(r["t"] for r in rows)
    assert rows[-1]["received"] == 150 and 0 <= rows[-1]["online_accuracy"] <= 1

    table = ctl(path, "history", "--last", "3")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["time", "(UTC)"] and "online acc" in lines[0]
    assert len(lines) == 1 + 3 + 1 and lines[-1].startswith("3 of 6 point(s)")

    png = tmp_path / "curve.png"
    written = ctl(path, "history", "--png", str(png))
    assert written.returncode == 0, written.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (900, 600)

    bad = ctl(path, "history", "--last", "0")
    assert bad.returncode == 2 and "at least 1" in bad.stderr and "Traceback" not in bad.stderr
    unwritable = ctl(path, "history", "--png", str(tmp_path / "no" / "such" / "dir.png"))
    assert unwritable.returncode == 2 and "cannot write" in unwritable.stderr and "Traceback" not in unwritable.stderr
