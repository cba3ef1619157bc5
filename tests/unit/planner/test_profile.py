"""Profiler: positive times, saved-activation bytes by hand, storage dedup, disk cache."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ferretd.models import Block
from ferretd.planner.profile import Profile, Profiler

MB = 4


class Square(nn.Module):
    """Saves its input twice (x * x): dedup must count it once."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def linear_relu_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        Block(nn.Linear(8, 16), nn.ReLU()), Block(nn.Linear(16, 16), nn.ReLU()), Block(nn.Linear(16, 3))
    )


def test_times_positive_and_linear_relu_bytes_by_hand() -> None:
    prof = Profiler(warmup=1, repeats=3).profile(linear_relu_model(), (8,), MB)
    assert prof.num_blocks == 3
    for b in prof.blocks:
        assert b.forward_s > 0 and b.backward_s > 0
    b0, b1, b2 = prof.blocks
    # Linear saves its input (MB x 8 floats), ReLU its output (MB x 16); weights are not activations
    assert b0.activation_bytes == MB * 8 * 4 + MB * 16 * 4
    assert b1.activation_bytes == MB * 16 * 4 + MB * 16 * 4
    assert b0.saves_input and b0.saves_output and b1.saves_input
    assert b0.param_bytes == (8 * 16 + 16) * 4
    assert (b0.input_bytes, b0.output_bytes) == (MB * 8 * 4, MB * 16 * 4)
    # within one stage the ReLU output of block 0 is block 1's saved input: counted once
    assert prof.stage_activation_bytes(0, 2) == b0.activation_bytes + b1.activation_bytes - MB * 16 * 4
    # last block includes the loss: its input + log-softmax output at least
    assert b2.activation_bytes >= MB * 16 * 4 + MB * 3 * 4


def test_same_tensor_saved_twice_counts_once() -> None:
    model = nn.Sequential(Block(nn.Linear(8, 8)), Block(Square()), Block(nn.Linear(8, 2)))
    prof = Profiler(warmup=0, repeats=1).profile(model, (8,), MB)
    assert prof.blocks[1].activation_bytes == MB * 8 * 4
    assert prof.blocks[1].param_bytes == 0


def test_cache_hit_does_not_reprofile(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    profiler = Profiler(cache_dir=tmp_path, warmup=0, repeats=1)
    first = profiler.profile(linear_relu_model(), (8,), MB)
    assert (profiler.hits, profiler.misses) == (0, 1)
    assert len(list(tmp_path.glob("profile-*.json"))) == 1

    fresh = Profiler(cache_dir=tmp_path)  # a restarted daemon

    def boom(*args: object, **kwargs: object) -> Profile:
        raise AssertionError("re-profiled despite a cache entry")

    monkeypatch.setattr(fresh, "measure", boom)
    second = fresh.profile(linear_relu_model(), (8,), MB)
    assert fresh.hits == 1 and second == first
    # another microbatch is another key
    profiler.profile(linear_relu_model(), (8,), MB * 2)
    assert profiler.misses == 2


def test_corrupt_cache_is_ignored(tmp_path) -> None:
    profiler = Profiler(cache_dir=tmp_path, warmup=0, repeats=1)
    profiler.profile(linear_relu_model(), (8,), MB)
    (path,) = tmp_path.glob("profile-*.json")
    path.write_text("{not json")
    again = Profiler(cache_dir=tmp_path, warmup=0, repeats=1)
    again.profile(linear_relu_model(), (8,), MB)
    assert again.misses == 1 and Profile.from_json(path.read_text()).num_blocks == 3


def test_profile_json_round_trip() -> None:
    prof = Profiler(warmup=0, repeats=1).profile(linear_relu_model(), (8,), MB)
    assert Profile.from_json(prof.to_json()) == prof
    assert prof.total_param_bytes == sum(b.param_bytes for b in prof.blocks)
