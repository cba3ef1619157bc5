"""Synthetic profiles for the torch-free planner tests."""

from __future__ import annotations

import pytest

from ferretd.planner.profile import BlockProfile, Profile


def _make_profile(
    times: list[float],
    param_bytes: list[int] | None = None,
    act_bytes: list[int] | None = None,
    microbatch: int = 1,
) -> Profile:
    n = len(times)
    param_bytes = param_bytes or [4000 * (i + 1) for i in range(n)]
    act_bytes = act_bytes or [800 + 100 * i for i in range(n)]
    blocks = tuple(
        BlockProfile(
            forward_s=t / 3,
            backward_s=2 * t / 3,
            param_bytes=param_bytes[i],
            activation_bytes=act_bytes[i],
            input_bytes=256,
            output_bytes=256,
            saves_input=True,
            saves_output=False,
        )
        for i, t in enumerate(times)
    )
    return Profile(blocks=blocks, input_shape=(64,), microbatch=microbatch, device="cpu", torch_version="x")


@pytest.fixture
def make_profile():
    """Factory: ``make_profile(times, param_bytes=None, act_bytes=None, microbatch=1)``."""
    return _make_profile


@pytest.fixture
def six_block_profile() -> Profile:
    return _make_profile([0.003, 0.001, 0.004, 0.002, 0.002, 0.001])
