"""The runtime directory is refused unless it is ours and private; one lock holder at a time;
the health bookkeeping (drop window, issues) reports what it was told."""

from __future__ import annotations

import os

import pytest

from ferretd.health import DropWindow, HealthIssues
from ferretd.instance import InstanceError, InstanceLock, check_runtime_dir


def test_a_missing_runtime_directory_is_created_private(tmp_path):
    directory = check_runtime_dir(tmp_path / "run")
    assert directory.is_dir()
    assert os.stat(directory).st_mode & 0o077 == 0


@pytest.mark.parametrize("mode", [0o700, 0o750, 0o755])
def test_private_modes_pass(tmp_path, mode):
    (tmp_path / "run").mkdir(mode=mode)
    os.chmod(tmp_path / "run", mode)
    check_runtime_dir(tmp_path / "run")


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o702])
def test_group_or_world_writable_is_refused_with_one_line(tmp_path, mode):
    (tmp_path / "run").mkdir()
    os.chmod(tmp_path / "run", mode)
    with pytest.raises(InstanceError) as info:
        check_runtime_dir(tmp_path / "run")
    assert info.value.code == 2
    assert "writable" in str(info.value) and "\n" not in str(info.value)


def test_a_symlink_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    os.symlink(tmp_path / "elsewhere", tmp_path / "run")
    with pytest.raises(InstanceError, match="symlink"):
        check_runtime_dir(tmp_path / "run")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away needs root")
def test_a_directory_owned_by_someone_else_is_refused(tmp_path):
    (tmp_path / "run").mkdir(mode=0o700)
    os.chown(tmp_path / "run", 54321, 54321)
    with pytest.raises(InstanceError, match="owned by uid 54321"):
        check_runtime_dir(tmp_path / "run")


def test_the_lock_has_one_holder_until_released(tmp_path):
    first = InstanceLock(tmp_path).acquire()
    with pytest.raises(InstanceError) as info:
        InstanceLock(tmp_path).acquire()
    assert info.value.code == 3
    assert f"pid {os.getpid()}" in str(info.value)
    first.release()
    InstanceLock(tmp_path).acquire().release()


def test_drop_window_reports_the_recent_share_only():
    window = DropWindow(window_s=10.0, every_s=1.0)
    window.observe(0.0, 0, 0)
    window.observe(5.0, 10, 0)
    assert window.share() is None  # too few samples to judge
    window.observe(6.0, 100, 60)
    assert window.share() == (0.6, 100)
    window.observe(6.5, 500, 500)  # within every_s of the last point: ignored
    assert window.share() == (0.6, 100)
    window.observe(20.0, 400, 60)
    window.observe(30.0, 500, 60)  # the drops (before t=20) left the 10 s window
    assert window.share() == (0.0, 100)


def test_health_issues_are_set_and_cleared_by_key():
    issues = HealthIssues()
    issues.set("training", "diverged")
    issues.set("resume", "from scratch")
    issues.set("training", "diverged twice")
    assert sorted(issues.reasons()) == ["diverged twice", "from scratch"]
    issues.clear("training")
    assert issues.reasons() == ["from scratch"]
