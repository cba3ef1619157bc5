"""Shared test set-up: one torch thread (2 shared cores), quiet structlog, tmp ipc endpoints."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def ipc_dir(tmp_path_factory: pytest.TempPathFactory):
    """A short directory for ipc:// sockets (the path limit for unix sockets is ~107 bytes)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fd-", dir="/tmp") as d:
        yield d
