"""Logging for operators: journald priority prefixes when stdout is the journal stream
($JOURNAL_STREAM), JSON or console by ``log_format`` (auto: console on a terminal), uncaught
exceptions as one structured line, stderr marked as errors on the journal, and routine events
sampled. Real files, a real pty and real subprocesses; no timing."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from ferretd.logs import RoutineLog, configure_logging, is_journal

ROOT = Path(__file__).resolve().parents[3]


def journal_env(path: Path) -> dict[str, str]:
    st = os.stat(path)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


@pytest.fixture(autouse=True)
def restore_logging():
    hooks = (sys.excepthook, __import__("threading").excepthook, sys.stderr)
    yield
    sys.excepthook, __import__("threading").excepthook, sys.stderr = hooks
    configure_logging("warning", fmt="json", stream=sys.stdout)


def emit(level: str = "debug") -> None:
    log = structlog.get_logger("test")
    log.debug("d_event", n=1)
    log.info("i_event", n=2)
    log.warning("w_event", n=3)
    log.error("e_event", n=4)


def test_journal_lines_carry_the_syslog_priority(tmp_path, monkeypatch):
    path = tmp_path / "journal"
    with open(path, "w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", journal_env(path)["JOURNAL_STREAM"])
        assert is_journal(stream)
        assert configure_logging("debug", stream=stream) == "json"
        emit()
    lines = path.read_text().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>"]
    assert [json.loads(line[3:])["event"] for line in lines] == ["d_event", "i_event", "w_event", "e_event"]


def test_no_prefix_when_stdout_is_not_the_journal(tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.write_text("")
    path = tmp_path / "file"
    with open(path, "w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", journal_env(other)["JOURNAL_STREAM"])  # someone else's stream
        assert not is_journal(stream)
        configure_logging("info", stream=stream)
        emit()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["i_event", "w_event", "e_event"]


def test_auto_is_console_on_a_terminal_and_json_otherwise(tmp_path, monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w") as tty:
            assert configure_logging("info", stream=tty) == "console"
            structlog.get_logger("t").info("hello_console", answer=42)
            tty.flush()
            text = re.sub(r"\x1b\[[0-9;]*m", "", os.read(master, 65536).decode())  # colours on a tty
    finally:
        os.close(master)
    assert "hello_console" in text and "answer=42" in text and not text.lstrip().startswith("{")
    with open(tmp_path / "f", "w") as stream:
        assert configure_logging("info", stream=stream) == "json"
        assert configure_logging("info", fmt="console", stream=stream) == "console"
        structlog.get_logger("t").info("plain", answer=42)
    assert "plain" in (tmp_path / "f").read_text() and "{" not in (tmp_path / "f").read_text()


CRASH = """
import sys, threading
from ferretd.logs import configure_logging
configure_logging("info", fmt="json")
t = threading.Thread(target=lambda: 1 / 0, name="worker")
t.start(); t.join()
sys.stderr.write("ferretd: a one-line startup error\\n")
raise RuntimeError("boom at start\\nwith a second line")
"""


def test_uncaught_exceptions_are_one_structured_line_and_stderr_is_err_on_the_journal(tmp_path):
    out = tmp_path / "journal"
    out.write_text("")
    env = {**os.environ, "PYTHONPATH": str(ROOT), **journal_env(out)}
    with open(out, "w") as stream:
        result = subprocess.run([sys.executable, "-c", CRASH], stdout=stream, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT, timeout=60)  # fmt: skip
    assert result.returncode == 1
    lines = out.read_text().splitlines()
    assert len(lines) == 3, lines
    thread_line, stderr_line, main_line = lines
    assert stderr_line == "<3>ferretd: a one-line startup error"
    for line, error in ((thread_line, "ZeroDivisionError"), (main_line, "RuntimeError: boom at start")):
        assert line.startswith("<2>"), line
        record = json.loads(line[3:])
        assert record["event"] == "uncaught_exception" and error in record["error"]
        assert "Traceback" in record["exception"]
    assert json.loads(thread_line[3:])["thread"] == "worker"


def test_routine_events_go_to_info_once_per_interval(tmp_path):
    path = tmp_path / "log"
    with open(path, "w") as stream:
        configure_logging("info", fmt="json", stream=stream)
        sampled = RoutineLog(structlog.get_logger("t"), interval_s=3600)
        assert [sampled.info("snapshot_saved", seq=i) for i in range(5)] == [True, False, False, False, False]
        every = RoutineLog(structlog.get_logger("t"), interval_s=0)
        assert all(every.info("model_swapped", seq=i) for i in range(3))
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["event"], r["seq"]) for r in records][:2] == [("snapshot_saved", 0), ("model_swapped", 0)]
    assert len(records) == 4, "four snapshot lines went to debug, below the configured level"
