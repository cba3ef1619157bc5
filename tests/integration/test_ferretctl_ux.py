"""ferretctl as an operator meets it (issue 14): options before or after the command, usage and
one-line errors without a daemon, socket discovery (the systemd runtime dir, permissions), a
stale socket answered at once, in-place ``stats --watch`` on a terminal, human units, one plan
budget. Against a real ferretd process and real sockets."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from ferretd.control import discovery, ferretctl
from tests.integration.harness import ROOT, child_env, config_from, start_process, stop_process, wait_for, write_config

CTL = [sys.executable, "-m", "ferretd.control.ferretctl"]


def ctl(*argv: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CTL, *argv], capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=timeout, **kwargs
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


@pytest.fixture
def live(ipc_dir, tmp_path):
    # A long control timeout: if ferretctl ever waited on ZeroMQ for a dead daemon, tests time out.
    path = write_config(ipc_dir, pipeline={"plan": "auto"}, control={"timeout_s": 300.0})
    config = config_from(path)
    proc = start_process("ferretd", path, tmp_path / "ferretd.log")
    wait_for(lambda: ctl("--config", str(path), "version").returncode == 0, timeout=60, what="daemon answers")
    yield path, config, proc
    stop_process(proc)


def test_usage_and_bad_arguments_need_no_daemon(tmp_path):
    for argv in (["help"], ["-h"], ["status", "-h"]):
        shown = ctl(*argv)
        assert shown.returncode == 0 and "usage: ferretctl" in shown.stdout, (argv, shown.stderr)
    assert "budget" in ctl("help").stdout and "stats" in ctl("help").stdout
    assert "0 removes the cap" in ctl("help", "budget").stdout
    assert set(json.loads(ctl("help", "--json").stdout)) >= {"status", "budget", "health"}

    assert "bad endpoint 'garbage'" in one_line_error(ctl("--endpoint", "garbage", "status"))
    assert "bad endpoint" in one_line_error(ctl("status", "--endpoint", "tcp://nohost"))
    assert "too large" in one_line_error(ctl("--endpoint", "ipc:///nonexistent", "budget", "99999999999999999999G"))
    for bad in ("inf", "nan", "12X", "lots"):
        assert "not a byte count" in one_line_error(ctl("budget", bad)), bad
    assert "positive" in one_line_error(ctl("stats", "--watch", "0"))
    assert "invalid choice" in one_line_error(ctl("frobnicate"))
    assert "not found" in one_line_error(ctl("--config", str(tmp_path / "missing.toml"), "status"))
    one_line_error(ctl("--config", str(tmp_path), "status"))  # a directory: OSError, still one line
    (tmp_path / "bad.toml").write_text("[ingest]\nqueue_capacity = -1\n")
    assert "queue_capacity" in one_line_error(ctl("status", "--config", str(tmp_path / "bad.toml")))


def test_json_before_or_after_and_human_units(live):
    path, _config, _proc = live
    before = ctl("--json", "--config", str(path), "status")
    after = ctl("status", "--json", "--config", str(path))
    assert before.returncode == after.returncode == 0, (before.stderr, after.stderr)
    assert json.loads(before.stdout)["state"] == json.loads(after.stdout)["state"] == "running"

    snap = ctl("snapshot", "--config", str(path))
    assert snap.returncode == 0, snap.stderr
    assert "s ago (" in snap.stdout and "UTC" in snap.stdout and "created_at" not in snap.stdout, snap.stdout
    assert "KiB" in snap.stdout
    status = ctl("status", "--config", str(path)).stdout
    assert "ago" in status.split("model snapshot", 1)[1].splitlines()[0], status

    # After `budget 64M` kept the plan (it fits), `plan` shows the cap as THE budget, not the old one too.
    assert ctl("budget", "64M", "--config", str(path)).returncode == 0
    plan = ctl("plan", "--config", str(path)).stdout
    budget_lines = [line for line in plan.splitlines() if "budget:" in line and "cap" not in line]
    assert budget_lines == ["  memory budget: 64.0 MiB, bound by ferretctl budget"], plan
    assert "budget cap (ferretctl budget): 64.0 MiB" in plan


def test_stats_watch_redraws_in_place_on_a_terminal(live):
    path, _config, _proc = live
    master, slave = pty.openpty()
    watch = subprocess.Popen(
        [*CTL, "--config", str(path), "stats", "--watch", "0.2"],
        stdout=slave, stderr=subprocess.PIPE, env=child_env(), cwd=ROOT,
    )  # fmt: skip
    os.close(slave)
    box = [b""]
    try:
        wait_for(lambda: _read_into(master, box) or box[0].count(b"uptime") >= 3, timeout=60, what="three frames")
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(30)
        _read_into(master, box)
        os.close(master)
    seen = box[0]
    frames = seen.split(ferretctl.CLEAR_HOME.encode())
    assert frames[0] == b"", "every frame starts by clearing the screen"
    assert len(frames) >= 4 and all(f.count(b"uptime") == 1 for f in frames[1:-1]), seen[:500]
    assert b"every 0.2 s" in frames[1]
    assert watch.returncode == 130 and b"Traceback" not in watch.stderr.read()

    # Not a terminal (a pipe): plain frames separated by a blank line, no escape sequences.
    piped = subprocess.Popen([*CTL, "--config", str(path), "stats", "--watch", "0.2"],
                             stdout=subprocess.PIPE, env=child_env(), cwd=ROOT)  # fmt: skip
    first = piped.stdout.readline()
    piped.send_signal(signal.SIGINT)
    out = first + piped.communicate(30)[0]
    assert b"\x1b" not in out


def _read_into(fd: int, box: list[bytes]) -> None:
    while select.select([fd], [], [], 0.05)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return
        if not chunk:
            return
        box[0] += chunk


def test_stale_socket_after_a_clean_stop_is_not_running_at_once(live):
    path, config, proc = live
    assert ctl("stop", "--config", str(path)).returncode == 0
    assert proc.wait(60) == 0
    sock = config.control.endpoint[len("ipc://") :]
    if not os.path.exists(sock):  # the daemon tidied up: leave a stale file like a killed daemon would
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(sock)
        stale.close()
    # The control timeout is 300 s: only the connect probe can make these return within 60 s.
    status = ctl("status", "--config", str(path), timeout=60)
    assert "not running" in one_line_error(status, 3) and sock in status.stderr
    health = ctl("health", "--config", str(path), timeout=60)
    assert health.returncode == 2 and health.stdout.strip() == "down"


def test_discovery_finds_the_systemd_runtime_dir_and_names_where_it_looked(live, monkeypatch, capsys, tmp_path):
    """No --config, no $RUNTIME_DIRECTORY: the socket under the unit's RuntimeDirectory is found."""
    _path, config, proc = live
    runtime = str(config.runtime_dir)
    monkeypatch.setattr(discovery, "SYSTEM_RUNTIME_DIR", runtime)
    monkeypatch.setattr(discovery, "SYSTEM_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    assert ferretctl.main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pid"] == proc.pid

    stop_process(proc)
    if os.path.exists(os.path.join(runtime, "control.sock")):
        os.unlink(os.path.join(runtime, "control.sock"))
    assert ferretctl.main(["status"]) == 3
    err = capsys.readouterr().err
    assert os.path.join(runtime, "control.sock") in err and str(tmp_path / "xdg" / "ferretd") in err, err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run ferretctl as another user")
def test_a_socket_we_may_not_open_is_reported_as_a_permission_problem(live):
    _path, config, _proc = live
    os.chmod(config.runtime_dir, 0o700)  # like /run/ferretd (0750 ferretd:ferretd) for a non-member
    rc, out, err = _as_nobody(ferretctl.main, ["--endpoint", config.control.endpoint, "health"])
    assert rc == 2 and out.strip() == "down", (rc, out, err)
    assert "permission denied" in err and "sudo -u ferretd" in err, err
    assert ferretctl.main(["--endpoint", config.control.endpoint, "--json", "version"]) == 0, "root may"


def _as_nobody(fn, argv: list[str]) -> tuple[int, str, str]:
    """Run ``fn(argv)`` in a forked child that dropped to uid nobody (the venv's interpreter may
    not be executable by nobody, so no exec); returns its exit code, stdout and stderr."""
    import io

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
            rc = fn(argv)
            os.write(write_end, json.dumps([rc, sys.stdout.getvalue(), sys.stderr.getvalue()]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    rc, out, err = json.loads(data)
    return rc, out, err


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_stats_watch_in_a_real_terminal_stays_in_place(live, tmp_path):
    """Recorded with tmux: the pane shows one table, refreshed in place (never scrolled)."""
    path, _config, _proc = live
    session = f"ferretctl-{os.getpid()}"
    env = child_env()
    command = f"{sys.executable} -m ferretd.control.ferretctl --config {path} stats --watch 0.3"
    tmux = ["tmux", "-L", session, "-f", "/dev/null"]
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "160", "-y", "60", command],
                   check=True, env=env, cwd=ROOT)  # fmt: skip
    try:
        def pane() -> str:
            return subprocess.run([*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

        first = wait_for(lambda: (p := pane()).count("uptime") == 1 and p, timeout=60, what="the first frame")
        stamp = re.search(r"at (\d\d:\d\d:\d\d)", first).group(1)
        later = wait_for(lambda: (p := pane()) and stamp not in p and "uptime" in p and p, timeout=60,
                         what="a redraw")  # fmt: skip
        assert later.count("uptime") == 1 and later.count("ferretctl stats: every") == 1, later
        assert later.splitlines()[0].startswith("ferretctl stats: every 0.3 s"), "redrawn from the top"
        (tmp_path / "tmux-frame.txt").write_text(later)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
