"""The compensation formulas, checked elementwise against independent numpy references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ferretd.compensation import make_compensator
from ferretd.compensation.fisher import Fisher
from ferretd.compensation.gap_aware import GapAware
from ferretd.compensation.iter_fisher import IterFisher
from ferretd.compensation.lambda_fit import LambdaFitter
from ferretd.compensation.step_aware import StepAware

SHAPES = [(6, 3), (3,)]


def chain(seed: int, tau: int, step: float = 0.05):
    """Gradients, the version chain ``pinned .. current`` and its exact deltas (float64)."""
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    versions = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]]
    for _ in range(tau):
        versions.append([p + step * torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in versions[-1]])
    deltas = [[b - a for a, b in zip(va, vb, strict=True)] for va, vb in itertools.pairwise(versions)]
    return grads, versions, deltas


def frozen_iter_fisher(lam: float) -> IterFisher:
    return IterFisher(lambda0=lam, fit="gradient", eta_lambda=0.0, max_correction=1e9)


@pytest.mark.parametrize(
    "comp", [Fisher(lambda0=0.3, max_correction=1e9), frozen_iter_fisher(0.3)], ids=["fisher", "iter_fisher"]
)
def test_staleness_one_is_dc_asgd_elementwise(comp) -> None:
    grads, versions, deltas = chain(0, 1)
    out = comp.compensate(0, grads, versions[0], versions[1], deltas)
    for o, g, p, c in zip(out, grads, versions[0], versions[1], strict=True):
        g, p, c = g.numpy(), p.numpy(), c.numpy()
        np.testing.assert_allclose(o.numpy(), g + 0.3 * g * g * (c - p), rtol=1e-12, atol=1e-15)


def test_iterative_form_is_repeated_one_step_application() -> None:
    tau, lam = 6, 0.4
    grads, versions, deltas = chain(1, tau)
    out = frozen_iter_fisher(lam).compensate(0, grads, versions[0], versions[-1], deltas)
    one_step = Fisher(lambda0=lam, max_correction=1e9)
    expected = grads
    for k in range(tau):
        expected = one_step.compensate(0, expected, versions[k], versions[k + 1], [deltas[k]])
    assert all(torch.equal(a, b) for a, b in zip(out, expected, strict=True))
    # and against a plain numpy loop
    for i, o in enumerate(out):
        ref = grads[i].numpy().copy()
        for d in deltas:
            ref = ref + lam * ref * ref * d[i].numpy()
        np.testing.assert_allclose(o.numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize(
    "comp",
    [Fisher(lambda0=0.0), frozen_iter_fisher(0.0), IterFisher(lambda0=0.0, nu=1e30)],
    ids=["fisher", "iter_fisher_frozen", "iter_fisher_ridge_zero"],
)
def test_lambda_zero_leaves_gradients_bitwise_unchanged(comp) -> None:
    grads, versions, deltas = chain(2, 3)
    grads = [g.clone() for g in grads]
    grads[0][0, 0] = float("inf")  # 0 * inf must not appear
    deltas[1][1][0] = float("inf")
    for _ in range(3):
        out = comp.compensate(0, grads, versions[0], versions[-1], deltas)
        assert all(o is g for o, g in zip(out, grads, strict=True))
    assert comp.stats()[0]["fallbacks"] == 0


def test_non_finite_result_falls_back_to_raw_and_is_counted() -> None:
    comp = Fisher(lambda0=1e3)
    grads = [torch.full((4,), 1e20), torch.ones(2)]
    pinned = [torch.zeros(4), torch.zeros(2)]
    current = [torch.ones(4), torch.full((2,), 1e-6)]
    out = comp.compensate(3, grads, pinned, current, [current])
    assert out[0] is grads[0]  # g*g overflowed: raw gradient
    torch.testing.assert_close(out[1], grads[1] + 1e3 * 1e-6)
    assert comp.stats()[3]["fallbacks"] == 1 and comp.stats()[3]["compensated"] == 0


def test_step_aware_divides_by_staleness() -> None:
    grads, versions, deltas = chain(3, 5)
    out = StepAware().compensate(0, grads, versions[0], versions[-1], deltas)
    for o, g in zip(out, grads, strict=True):
        np.testing.assert_allclose(o.numpy(), g.numpy() / 5)


def test_gap_aware_divides_by_one_plus_gap_over_update_size() -> None:
    comp = GapAware(alpha=0.5)
    grads, versions, deltas = chain(4, 3)
    out = comp.compensate(0, grads, versions[0], versions[-1], deltas)
    scale = [np.mean([np.abs(d[i].numpy()) for d in deltas], axis=0) for i in range(len(SHAPES))]
    for i, o in enumerate(out):
        gap = np.abs(versions[-1][i].numpy() - versions[0][i].numpy())
        np.testing.assert_allclose(o.numpy(), grads[i].numpy() / (1 + gap / scale[i]), rtol=1e-12)
    grads2, versions2, deltas2 = chain(5, 2)
    out2 = comp.compensate(0, grads2, versions2[0], versions2[-1], deltas2)
    for i, o in enumerate(out2):
        c = 0.5 * scale[i] + 0.5 * np.abs(deltas2[-1][i].numpy())
        gap = np.abs(versions2[-1][i].numpy() - versions2[0][i].numpy())
        np.testing.assert_allclose(o.numpy(), grads2[i].numpy() / (1 + gap / c), rtol=1e-12)


# ---------------------------------------------------------------------- the lambda fitter


def observations(n: int, seed: int = 7):
    """A stream of (gradient, point) pairs where gradients respond to the point plus noise."""
    gen = torch.Generator().manual_seed(seed)
    point = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    out = []
    for _ in range(n):
        grads = [0.5 * p + 0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in point]
        out.append((grads, [p.clone() for p in point]))
        point = [p - 0.1 * g for p, g in zip(point, grads, strict=True)]
    return out


def numpy_ridge(obs, alpha: float, beta: float, nu: float, tensors: list[int]) -> float:
    """Weighted ridge ``min sum_t w_t ||T_t - l F_t||^2 + nu l^2`` by ``np.linalg.lstsq``."""
    grads = [np.concatenate([g[i].numpy().ravel() for i in tensors]) for g, _ in obs]
    points = [np.concatenate([p[i].numpy().ravel() for i in tensors]) for _, p in obs]
    ema = grads[0].copy()
    rows, targets = [], []
    for t in range(1, len(obs)):
        feature = grads[t - 1] ** 2 * (points[t] - points[t - 1])
        rows.append(feature)
        targets.append(grads[t] - ema)
        ema = alpha * ema + (1 - alpha) * grads[t]
    n = len(rows)
    weights = np.array([(1 - beta) * beta ** (n - 1 - k) for k in range(n)])
    weights /= weights.sum()  # bias correction: the EMA weights normalised
    design = np.concatenate([np.sqrt(w) * r for w, r in zip(weights, rows, strict=True)] + [[np.sqrt(nu)]])
    target = np.concatenate([np.sqrt(w) * y for w, y in zip(weights, targets, strict=True)] + [[0.0]])
    # one unknown: put every row's elements into one long column
    solution, *_ = np.linalg.lstsq(design[:, None], target, rcond=None)
    return float(solution[0])


@pytest.mark.parametrize("nu", [0.0, 1e-3, 1.0])
@pytest.mark.parametrize("alpha,beta", [(0.9, 0.999), (0.5, 0.9)])
def test_closed_form_equals_numpy_ridge(nu: float, alpha: float, beta: float) -> None:
    obs = observations(40)
    stage_fit = LambdaFitter(nu=nu, alpha=alpha, beta=beta, fit="closed_form", scope="stage")
    tensor_fit = LambdaFitter(nu=nu, alpha=alpha, beta=beta, fit="closed_form", scope="tensor")
    for grads, point in obs:
        stage_fit.observe(0, grads, point)
        tensor_fit.observe(0, grads, point)
    expected = max(0.0, numpy_ridge(obs, alpha, beta, nu, [0, 1]))
    assert expected > 0  # the stream is built with positive curvature
    assert stage_fit.lambdas(0, 2) == pytest.approx([expected] * 2, rel=1e-9)
    per_tensor = [max(0.0, numpy_ridge(obs, alpha, beta, nu, [i])) for i in range(2)]
    assert tensor_fit.lambdas(0, 2) == pytest.approx(per_tensor, rel=1e-9)


def test_gradient_fit_with_zero_step_stays_at_lambda0() -> None:
    frozen = LambdaFitter(lambda0=0.37, fit="gradient", eta_lambda=0.0)
    moving = LambdaFitter(lambda0=0.37, fit="gradient", eta_lambda=1.0)
    for grads, point in observations(50):
        frozen.observe(0, grads, point)
        moving.observe(0, grads, point)
    assert frozen.lambdas(0, 2) == [0.37, 0.37]
    assert moving.lambdas(0, 2) != [0.37, 0.37]


def test_lambda_is_clamped_at_zero_and_starts_at_lambda0() -> None:
    fitter = LambdaFitter(lambda0=0.2, nu=0.0)
    assert fitter.lambdas(0, 2) == [0.2, 0.2]
    for grads, point in observations(30):
        fitter.observe(0, [-g for g in grads], point)  # anti-curvature stream
    assert fitter.lambdas(0, 2) == [0.0, 0.0]


def test_fitter_skips_non_finite_gradients_and_keeps_three_copies() -> None:
    fitter = LambdaFitter()
    obs = observations(5)
    for grads, point in obs:
        fitter.observe(0, grads, point)
    before = fitter.lambdas(0, 2)
    assert not fitter.observe(0, [torch.full(s, float("nan"), dtype=torch.float64) for s in SHAPES], obs[0][1])
    assert fitter.lambdas(0, 2) == before and fitter.stages[0].skipped == 1
    kept = fitter.stages[0]
    n_param = sum(int(np.prod(s)) for s in SHAPES)
    assert sum(t.numel() for t in kept.ema_grad + kept.prev_sq + kept.prev_point) == 3 * n_param


def test_make_compensator_passes_config_keys() -> None:
    comp = make_compensator(
        "iter_fisher", lambda0=0.1, nu=0.2, alpha=0.3, eta_lambda=0.4, fit="gradient", scope="tensor"
    )
    f = comp.fitter
    assert (f.lambda0, f.nu, f.alpha, f.eta, f.fit, f.scope) == (0.1, 0.2, 0.3, 0.4, "gradient", "tensor")
