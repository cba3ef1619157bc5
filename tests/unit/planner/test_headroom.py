"""Headroom: cgroup chain (fixture directory), cap, safety factor, GPUs (fake and real)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ferretd.planner.headroom import cgroup_limit, read_headroom

GiB = 1 << 30


def fake_vm(available: int = 64 * GiB):
    return lambda: SimpleNamespace(available=available)


def no_gpu() -> list[tuple[int, int]]:
    return []


def make_cgroups(root: Path, levels: dict[str, tuple[str, int]]) -> None:
    """``levels``: cgroup path -> (memory.max text, memory.current)."""
    for path, (limit, current) in levels.items():
        d = root / path.lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.max").write_text(limit + "\n")
        (d / "memory.current").write_text(f"{current}\n")


def headroom(tmp_path: Path, **kwargs):
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/system.slice/ferretd.service\n")
    defaults = dict(
        cgroup_root=tmp_path / "cg",
        proc_cgroup=proc,
        cgroup_v1_root=None,
        virtual_memory=fake_vm(),
        cuda_info=no_gpu,
    )
    return read_headroom(**{**defaults, **kwargs})


def test_own_cgroup_limit_binds(tmp_path: Path) -> None:
    make_cgroups(
        tmp_path / "cg",
        {"/system.slice": ("max", 5 * GiB), "/system.slice/ferretd.service": (str(2 * GiB), GiB // 2)},
    )
    h = headroom(tmp_path, safety_factor=1.0)
    assert h.bound_by == "cgroup:/system.slice/ferretd.service"
    assert h.budget_bytes == 2 * GiB - GiB // 2
    assert h.sources["psutil"] == 64 * GiB


def test_parent_cgroup_limit_binds_child(tmp_path: Path) -> None:
    make_cgroups(
        tmp_path / "cg",
        {"/system.slice": (str(3 * GiB), int(2.5 * GiB)), "/system.slice/ferretd.service": ("max", GiB // 4)},
    )
    h = headroom(tmp_path, safety_factor=1.0)
    assert h.bound_by == "cgroup:/system.slice"
    assert h.raw_bytes == GiB // 2


def test_max_everywhere_means_unlimited(tmp_path: Path) -> None:
    make_cgroups(tmp_path / "cg", {"/system.slice": ("max", GiB), "/system.slice/ferretd.service": ("max", GiB)})
    h = headroom(tmp_path, safety_factor=1.0, virtual_memory=fake_vm(7 * GiB))
    assert h.bound_by == "psutil" and h.raw_bytes == 7 * GiB
    assert not any(k.startswith("cgroup") for k in h.sources)


def test_missing_cgroup_files_are_ignored(tmp_path: Path) -> None:
    h = headroom(tmp_path, proc_cgroup=tmp_path / "does-not-exist")
    assert h.bound_by == "psutil"


def test_cap_and_safety_factor(tmp_path: Path) -> None:
    make_cgroups(tmp_path / "cg", {"/system.slice/ferretd.service": (str(4 * GiB), 0)})
    h = headroom(tmp_path, cap_bytes=GiB, safety_factor=0.5)
    assert h.bound_by == "cap" and h.raw_bytes == GiB and h.budget_bytes == GiB // 2
    assert "cap" in h.describe() and h.to_dict()["safety_factor"] == 0.5
    with pytest.raises(ValueError, match="safety_factor"):
        headroom(tmp_path, safety_factor=0.0)


def test_injected_cgroup_path(tmp_path: Path) -> None:
    make_cgroups(tmp_path / "cg", {"/a": (str(GiB), 0), "/a/b": (str(2 * GiB), 0)})
    h = headroom(tmp_path, cgroup_path="/a/b", safety_factor=1.0)
    assert h.bound_by == "cgroup:/a" and h.raw_bytes == GiB
    assert cgroup_limit(tmp_path / "cg", "/nowhere") is None


def test_fake_gpus_are_included(tmp_path: Path) -> None:
    h = headroom(tmp_path, cuda_info=lambda: [(3 * GiB, 80 * GiB), (2 * GiB, 80 * GiB)], safety_factor=1.0)
    assert h.bound_by == "cuda:1" and h.raw_bytes == 2 * GiB
    assert h.sources["cuda:0"] == 3 * GiB


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_real_gpu_is_included(tmp_path: Path) -> None:
    h = headroom(tmp_path, cuda_info=None)
    assert "cuda:0" in h.sources and h.sources["cuda:0"] > 0


def test_real_host_reads_something() -> None:
    h = read_headroom(cuda_info=no_gpu)
    assert 0 < h.budget_bytes <= h.raw_bytes
