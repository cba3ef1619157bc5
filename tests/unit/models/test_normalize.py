"""The online input normaliser: exact running statistics, drift, constant features, export."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ferretd.models import mlp
from ferretd.models.normalize import Normalized, RunningNorm, make_norm, wrap_export
from ferretd.snapshot.to_onnx import export_onnx

SCALES = np.array([1e-3, 1e-1, 1.0, 1e2, 1e4, 1e6])


def raw_stream(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, len(SCALES))) * SCALES + 3 * SCALES).astype(np.float32)


def test_decay_zero_is_exact_welford_population_statistics():
    x = raw_stream(500)
    norm = RunningNorm((len(SCALES),))
    for row in x:
        norm.update(row)
    np.testing.assert_allclose(norm.mean, x.astype(np.float64).mean(0), rtol=1e-10)
    np.testing.assert_allclose(norm.var, x.astype(np.float64).var(0), rtol=1e-8)
    assert norm.count == 500


def test_raw_scales_come_out_standardised():
    x = raw_stream(2000)
    norm = RunningNorm((len(SCALES),))
    for row in x:
        norm.update(row)
    z = np.stack([norm.apply(row) for row in x[-500:]])
    assert np.isfinite(z).all()
    assert np.all(np.abs(z.mean(0)) < 0.2) and np.all(np.abs(z.std(0) - 1) < 0.2)


def test_decay_forgets_old_statistics_under_drift():
    exact, drifting = RunningNorm((1,)), RunningNorm((1,), decay=0.05)
    for v in [0.0] * 1000 + [100.0] * 200:
        exact.update(np.array([v]))
        drifting.update(np.array([v]))
    assert abs(drifting.mean[0] - 100.0) < 1e-2
    assert abs(exact.mean[0] - 100.0 * 200 / 1200) < 1e-9


@pytest.mark.parametrize("value", [0.0, 1e6, -3.5])
def test_constant_feature_maps_to_zero_never_explodes(value):
    norm = RunningNorm((3,))
    rng = np.random.default_rng(1)
    for _ in range(300):
        norm.update(np.array([value, rng.normal(), 1e5 * rng.normal()], dtype=np.float32))
    z = norm.apply(np.array([value, 0.0, 0.0], dtype=np.float32))
    assert z[0] == 0.0
    assert np.isfinite(norm.apply(np.array([value + 1.0, 0.0, 0.0], dtype=np.float32))).all()


def test_first_sample_and_clipping():
    norm = RunningNorm((2,), clip=5.0)
    norm.update(np.array([7.0, -2.0]))
    assert np.all(norm.apply(np.array([7.0, -2.0])) == 0.0)  # one sample: no spread, x - mean = 0
    norm.update(np.array([9.0, -2.0]))
    z = norm.apply(np.array([1e9, -2.0]))
    assert z[0] == 5.0 and z[1] == 0.0


def test_state_round_trip_and_shape_check():
    norm = RunningNorm((4,), decay=0.01)
    for row in np.random.default_rng(2).normal(size=(50, 4)):
        norm.update(row)
    other = RunningNorm((4,), decay=0.01)
    other.load(norm.state())
    probe = np.arange(4, dtype=np.float32)
    assert np.array_equal(other.apply(probe), norm.apply(probe)) and other.count == 50
    with pytest.raises(ValueError, match="shape"):
        RunningNorm((5,)).load(norm.state())
    assert make_norm("none", (4,), 0.0, 10.0) is None


def test_exported_onnx_applies_the_identical_transform():
    torch.manual_seed(0)
    model = mlp((len(SCALES),), 3, (8,))
    norm = RunningNorm((len(SCALES),))
    x = raw_stream(300)
    for row in x:
        norm.update(row)
    exported = wrap_export(model, norm)
    assert isinstance(exported, Normalized)
    session = ort.InferenceSession(export_onnx(exported, (len(SCALES),)))
    probe = raw_stream(64, seed=9)
    got = session.run(["logits"], {"x": probe})[0]
    with torch.no_grad():
        want = model(torch.as_tensor(np.stack([norm.apply(r) for r in probe]))).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    norm.update(probe[0])  # the exported copy is frozen: later updates do not leak into it
    with torch.no_grad():
        np.testing.assert_allclose(exported(torch.as_tensor(probe)).numpy(), got, atol=1e-5, rtol=1e-5)


class EagerNorm:
    """The update rule and transform as the module docstring states them, recomputed after every
    sample with torch's float32 forward (what the normaliser did before it went lazy, issue 12)."""

    def __init__(self, shape: tuple[int, ...], decay: float, clip: float) -> None:
        self.shape, self.decay, self.clip = shape, decay, clip
        self.count = 0
        self.mean = np.zeros(shape)
        self.var = np.zeros(shape)

    def update(self, x: np.ndarray) -> None:
        xs = np.asarray(x, dtype=np.float64).reshape(self.shape)
        self.count += 1
        rate = max(1.0 / self.count, self.decay)
        d = xs - self.mean
        self.mean = self.mean + rate * d
        self.var = (1.0 - rate) * (self.var + rate * d * d)

    def apply(self, x: np.ndarray) -> np.ndarray:
        std = np.maximum(np.sqrt(self.var), 1e-6 * (np.abs(self.mean) + 1.0))
        shift = torch.from_numpy(self.mean.astype(np.float32))
        scale = torch.from_numpy(std.astype(np.float32))
        z = (torch.as_tensor(np.asarray(x, dtype=np.float32)) - shift) / scale
        return torch.clamp(z, -self.clip, self.clip).numpy()


@pytest.mark.parametrize("decay", [0.0, 0.01])
def test_the_lazy_numpy_path_equals_the_eager_torch_transform_bit_for_bit(decay: float) -> None:
    rng = np.random.default_rng(3)
    shape = (1, 6, 5)
    norm, eager = RunningNorm(shape, decay=decay, clip=3.0), EagerNorm(shape, decay, 3.0)
    for i in range(300):
        x = (rng.normal(size=shape) * rng.choice([1e-3, 1.0, 1e5], size=shape) + i % 7).astype(np.float32)
        norm.update(x)
        eager.update(x)
        np.testing.assert_array_equal(norm.apply(x), eager.apply(x))  # what the learner trains on
        if i % 50 == 0:  # what predict (the module's forward) and export see, from the lazy buffers
            with torch.no_grad():
                np.testing.assert_array_equal(norm(torch.from_numpy(x)).numpy(), eager.apply(x))
                np.testing.assert_array_equal(norm.frozen()(torch.from_numpy(x)).numpy(), eager.apply(x))
    np.testing.assert_array_equal(norm.mean, eager.mean)
    np.testing.assert_array_equal(norm.var, eager.var)
    assert np.abs(norm.apply(x)).max() == 3.0, "clipping was exercised"
