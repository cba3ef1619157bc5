"""The memory budget M the planner must respect: the tightest of every limit that binds us.

Role: section 4.2 of the Ferret notes. :func:`read_headroom` takes the minimum of

* ``psutil.virtual_memory().available`` (source ``"psutil"``),
* the cgroup v2 limit of this process's cgroup *and of every ancestor* (a parent's
  ``memory.max`` binds its children too): ``memory.max - memory.current`` per level, ``"max"``
  meaning unlimited (source ``"cgroup:/path"``). systemd's ``MemoryMax=`` lands here and psutil
  does not see it. On hybrid hosts without a v2 memory controller, the cgroup v1
  ``memory.limit_in_bytes - memory.usage_in_bytes`` is read the same way (source
  ``"cgroup-v1:/path"``; values >= 2**60 mean unlimited),
* ``torch.cuda.mem_get_info`` free bytes per GPU, only when CUDA is available (``"cuda:i"``),
* the configured cap ``[planner] memory_cap_bytes`` when non-zero (``"cap"``),

then multiplies it by the safety factor. The result says which source bound it, for logs and
``ferretctl plan``.

Decisions: the cgroup root, the process cgroup path, the ``/proc/self/cgroup`` file, the psutil
function and the CUDA query are all injectable so tests use a fixture directory and a fake GPU.
torch is imported only inside the default CUDA query, so this module stays cheap. The budget is a
single number (the minimum over sources): with GPUs this is conservative, since the planner
compares the plan's total footprint to the tightest single device.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import structlog

log = structlog.get_logger(__name__)

V1_UNLIMITED = 1 << 60
CudaInfo = Callable[[], Sequence[tuple[int, int]]]


@dataclass(frozen=True)
class Headroom:
    """The budget and where it came from."""

    budget_bytes: int
    raw_bytes: int
    bound_by: str
    safety_factor: float
    sources: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        parts = ", ".join(f"{k}={v / 2**20:.1f} MiB" for k, v in sorted(self.sources.items()))
        return (
            f"budget {self.budget_bytes / 2**20:.1f} MiB = {self.safety_factor:g} x "
            f"{self.raw_bytes / 2**20:.1f} MiB bound by {self.bound_by} ({parts})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget_bytes,
            "raw_bytes": self.raw_bytes,
            "bound_by": self.bound_by,
            "safety_factor": self.safety_factor,
            "sources": dict(self.sources),
        }


def default_cuda_info() -> list[tuple[int, int]]:
    """``(free, total)`` per visible GPU, empty without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [tuple(torch.cuda.mem_get_info(i)) for i in range(torch.cuda.device_count())]  # type: ignore[misc]


def default_cgroup_root() -> Path:
    """``/sys/fs/cgroup`` on unified hosts, ``/sys/fs/cgroup/unified`` on hybrid ones."""
    root = Path("/sys/fs/cgroup")
    if not (root / "cgroup.controllers").exists() and (root / "unified" / "cgroup.controllers").exists():
        return root / "unified"
    return root


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _parse_proc_cgroup(text: str) -> tuple[str | None, str | None]:
    """(v2 path from ``0::/path``, v1 memory controller path from ``N:memory:/path``)."""
    v2 = v1 = None
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _levels(path: str) -> list[str]:
    """``/a/b`` -> ``["/a/b", "/a", "/"]``."""
    parts = [p for p in path.strip().split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(len(parts), -1, -1)]


def cgroup_limit(
    root: Path, cgroup_path: str, *, max_file: str = "memory.max", current_file: str = "memory.current"
) -> tuple[int, str] | None:
    """Tightest ``max - current`` over ``cgroup_path`` and its ancestors, with the binding level."""
    best: tuple[int, str] | None = None
    for level in _levels(cgroup_path):
        d = root / level.lstrip("/")
        limit = _read_int(d / max_file)
        if limit is None or limit >= V1_UNLIMITED:
            continue
        current = _read_int(d / current_file) or 0
        free = max(0, limit - current)
        if best is None or free < best[0]:
            best = (free, level)
    return best


def read_headroom(
    cap_bytes: int = 0,
    safety_factor: float = 0.8,
    *,
    cgroup_root: Path | None = None,
    cgroup_path: str | None = None,
    proc_cgroup: Path = Path("/proc/self/cgroup"),
    cgroup_v1_root: Path | None = Path("/sys/fs/cgroup/memory"),
    virtual_memory: Callable[[], Any] = psutil.virtual_memory,
    cuda_info: CudaInfo | None = None,
) -> Headroom:
    """The budget: min(psutil, cgroup chain, each GPU, cap) x safety factor."""
    if not 0.0 < safety_factor <= 1.0:
        raise ValueError(f"safety_factor must be in (0, 1], got {safety_factor}")
    sources: dict[str, int] = {"psutil": int(virtual_memory().available)}

    v2_path = v1_path = None
    if cgroup_path is None:
        with contextlib.suppress(OSError):
            v2_path, v1_path = _parse_proc_cgroup(proc_cgroup.read_text())
    else:
        v2_path = cgroup_path
    root = cgroup_root if cgroup_root is not None else default_cgroup_root()
    if v2_path is not None:
        found = cgroup_limit(root, v2_path)
        if found is not None:
            sources[f"cgroup:{found[1]}"] = found[0]
    if v1_path is not None and cgroup_v1_root is not None:
        found = cgroup_limit(
            cgroup_v1_root, v1_path, max_file="memory.limit_in_bytes", current_file="memory.usage_in_bytes"
        )
        if found is not None:
            sources[f"cgroup-v1:{found[1]}"] = found[0]

    for i, (free, _total) in enumerate((cuda_info or default_cuda_info)()):
        sources[f"cuda:{i}"] = int(free)
    if cap_bytes > 0:
        sources["cap"] = int(cap_bytes)

    bound_by = min(sources, key=lambda k: sources[k])
    raw = sources[bound_by]
    headroom = Headroom(
        budget_bytes=math.floor(raw * safety_factor),
        raw_bytes=raw,
        bound_by=bound_by,
        safety_factor=safety_factor,
        sources=sources,
    )
    log.debug("headroom", budget=headroom.budget_bytes, bound_by=bound_by)
    return headroom
