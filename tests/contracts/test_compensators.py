"""Contract checks every registered compensator must pass (discovered from the registry).

A new module in ``ferretd/compensation/`` that defines a ``Compensator`` subclass with a
``name`` is picked up by ``load_builtin_methods()`` and runs through every check here.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math

import pytest
import torch

from ferretd.compensation import COMPENSATORS, make_compensator
from ferretd.compensation.base import Compensator, load_builtin_methods
from ferretd.config import CompensationConfig

METHODS = sorted(load_builtin_methods())
#: Extra hyper-parameter settings run through the same checks (the config defaults always run).
VARIANTS = {
    "iter_fisher": [
        {"scope": "tensor"},
        {"fit": "gradient", "eta_lambda": 10.0},
        {"nu": 0.0, "alpha": 0.5, "beta": 0.9},
    ],
    "fisher": [{"lambda0": 10.0}],
}
CASES = [(name, {}) for name in METHODS] + [(n, h) for n, hs in VARIANTS.items() if n in METHODS for h in hs]
CASE_IDS = [name + "".join(f"-{k}={v}" for k, v in hyper.items()) for name, hyper in CASES]
SHAPES = [(5, 4), (4,), (3, 2, 2)]


def config_hyper() -> dict[str, object]:
    hyper = dataclasses.asdict(CompensationConfig())
    hyper.pop("method")
    return hyper


def build(name: str, hyper: dict[str, object] | None = None) -> Compensator:
    return make_compensator(name, **{**config_hyper(), **(hyper or {})})


def make_call(
    gen: torch.Generator, tau: int, scale: float = 1.0, step: float = 1e-2, dtype: torch.dtype = torch.float64
):
    """One call's arguments: stage tensors, ``tau`` exact deltas, current = pinned + sum."""
    grads = [(scale * torch.randn(s, generator=gen, dtype=torch.float64)).to(dtype) for s in SHAPES]
    pinned = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    versions = [pinned]
    for _ in range(tau):
        versions.append([p + step * torch.randn(p.shape, generator=gen, dtype=dtype) for p in versions[-1]])
    deltas = [[b - a for a, b in zip(va, vb, strict=True)] for va, vb in itertools.pairwise(versions)]
    return grads, pinned, versions[-1], deltas


def stream(seed: int, n: int, scale: float = 1.0, step: float = 1e-2, dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [make_call(gen, tau=k % 9, scale=scale, step=step, dtype=dtype) for k in range(n)]


def test_every_builtin_method_is_registered() -> None:
    assert {"none", "step_aware", "gap_aware", "fisher", "iter_fisher"} <= set(COMPENSATORS)
    assert all(COMPENSATORS[name].name == name for name in METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_accepts_every_config_key_and_ignores_unknown_ones(name: str) -> None:
    comp = make_compensator(name, **config_hyper(), some_future_key=1)
    assert isinstance(comp, COMPENSATORS[name])


@pytest.mark.parametrize("name,hyper", CASES, ids=CASE_IDS)
def test_staleness_zero_is_the_identity(name: str, hyper: dict) -> None:
    comp = build(name, hyper)
    gen = torch.Generator().manual_seed(1)
    for k, call in enumerate(stream(0, 30)):
        comp.compensate(k % 2, *call)  # build up state on two stages first
        grads, pinned, _, _ = make_call(gen, tau=0)
        out = comp.compensate(k % 2, grads, pinned, pinned, [])
        assert all(torch.equal(o, g) for o, g in zip(out, grads, strict=True))


@pytest.mark.parametrize("name,hyper", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 1e3, 1e15, 1e30])
def test_outputs_are_finite(name: str, hyper: dict, scale: float, dtype: torch.dtype) -> None:
    """Large gradients (g * g overflows in float32) and large steps still give finite outputs."""
    comp = build(name, hyper)
    for call in stream(2, 40, scale=scale, step=min(1.0, scale), dtype=dtype):
        out = comp.compensate(0, *call)
        assert all(bool(torch.isfinite(o).all()) for o in out)
        assert [o.shape for o in out] == [g.shape for g in call[0]]


@pytest.mark.parametrize("name,hyper", CASES, ids=CASE_IDS)
def test_inputs_are_not_mutated(name: str, hyper: dict) -> None:
    comp = build(name, hyper)
    for call in stream(3, 30):
        grads, pinned, current, deltas = call
        before = [[t.clone() for t in grads], [t.clone() for t in pinned], [t.clone() for t in current]]
        before_deltas = [[t.clone() for t in d] for d in deltas]
        comp.compensate(1, grads, pinned, current, deltas)
        for saved, live in zip(before, (grads, pinned, current), strict=True):
            assert all(torch.equal(a, b) for a, b in zip(saved, live, strict=True))
        for saved, live in zip(before_deltas, deltas, strict=True):
            assert all(torch.equal(a, b) for a, b in zip(saved, live, strict=True))


@pytest.mark.parametrize("name,hyper", CASES, ids=CASE_IDS)
def test_state_round_trips(name: str, hyper: dict) -> None:
    calls = stream(4, 60)
    first = build(name, hyper)
    for k, call in enumerate(calls[:40]):
        first.compensate(k % 3, *call)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = build(name, hyper)
    second.load_state_dict(torch.load(buffer, weights_only=True))  # checkpoints load this way
    assert second.stats() == first.stats()
    fresh = build(name, hyper)
    differs = False
    for k, call in enumerate(calls[40:]):
        a = first.compensate(k % 3, *call)
        b = second.compensate(k % 3, *call)
        c = fresh.compensate(k % 3, *call)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        differs = differs or not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert second.stats() == first.stats()
    if tensors_in(first.state_dict()):  # the saved tensors matter: a fresh instance behaves differently
        assert differs


def tensors_in(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return 1
    if isinstance(value, dict):
        return sum(tensors_in(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(tensors_in(v) for v in value)
    return 0


@pytest.mark.parametrize("name,hyper", CASES, ids=CASE_IDS)
def test_stats_report_staleness_and_counts(name: str, hyper: dict) -> None:
    comp = build(name, hyper)
    calls = stream(5, 20)
    for call in calls:
        comp.compensate(2, *call)
    row = comp.stats()[2]
    taus = [len(call[3]) for call in calls]
    assert set(row) >= {"lambda", "staleness_mean", "staleness_max", "compensated", "fallbacks", "updates"}
    assert row["updates"] == len(calls)
    assert row["staleness_max"] == max(taus)
    assert math.isclose(row["staleness_mean"], sum(taus) / len(taus))
    assert row["compensated"] + row["fallbacks"] <= sum(1 for t in taus if t > 0)
    assert row["lambda"] is None or row["lambda"] >= 0
