"""Stale-gradient compensation: approximation error versus fresh gradients, and the lambda-fit sweep.

For every registered compensator, staleness 1/4/8, logistic regression and an MLP on
``load_digits`` (features / 16), simulate per-sample SGD with stale gradients
(:mod:`ferretd.compensation.evaluate`) and report the median (q25-q75) over the measured samples
of ``||A(g) - g_fresh||^2 / ||g - g_fresh||^2``; < 1 is better than the plain stale gradient.
A second table sweeps Iter-Fisher's ``alpha`` (gradient EMA), ``beta`` (statistics EMA) and
``nu`` (ridge) to justify the defaults in ``[compensation]``. A third runs 10,000 updates at
staleness 8 with a deliberately large ``lambda0`` and checks that the weights stay finite.

Run alone: ``.venv/bin/python tools/bench/run_all.py --quick --only compensation``.
"""

from __future__ import annotations

import itertools
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ferretd.compensation import make_compensator
from ferretd.compensation.base import load_builtin_methods
from ferretd.compensation.evaluate import approximation_ratios
from ferretd.models import mlp

STALENESS = (1, 4, 8)
LR = 0.05


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """``load_digits`` as float features in [0, 1] and integer labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.data / 16.0, dtype=torch.float32), torch.tensor(data.target)


def models(quick: bool) -> dict[str, tuple[int, ...]]:
    return {"logreg": (), "mlp": (32,) if quick else (128, 64)}


def one_run(hidden: tuple[int, ...], method: str, tau: int, seed: int, steps: tuple[int, int], **hyper: Any) -> Any:
    x, y = digits()
    torch.manual_seed(seed)
    model = mlp((64,), 10, hidden)
    comp = make_compensator(method, **hyper)
    return approximation_ratios(model, x, y, comp, tau, lr=LR, warmup=steps[0], measure=steps[1], seed=seed)


def method_table(quick: bool, steps: tuple[int, int]) -> tuple[str, list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    variants = [(name, {}) for name in sorted(load_builtin_methods())] + [("fisher", {"lambda0": 10.0})]
    for (model_name, hidden), (method, hyper) in itertools.product(models(quick).items(), variants):
        for tau in STALENESS:
            r = one_run(hidden, method, tau, 0, steps, **hyper)
            rows.append(
                {
                    "model": model_name,
                    "method": method + (f" (lambda0={hyper['lambda0']:g})" if hyper else ""),
                    "staleness": tau,
                    "median": r.median,
                    "q25": r.q25,
                    "q75": r.q75,
                    "lambda": [v for v in r.lambdas() if v is not None],
                    "oracle_lambda": r.oracle_lambda,
                    "fallbacks": sum(s["fallbacks"] for s in r.stats.values()),
                }
            )
    lines = ["| model | method | tau=1 | tau=4 | tau=8 | final lambda per stage (tau=8) | oracle lambda (tau=8) |"]
    lines.append("|---|---|---|---|---|---|---|")
    for (model_name, method), group in itertools.groupby(rows, key=lambda r: (r["model"], r["method"])):
        cells = list(group)
        ratios = " | ".join(f"{c['median']:.4f} ({c['q25']:.3f}-{c['q75']:.3f})" for c in cells)
        last = cells[-1]
        lam = ", ".join(f"{v:.3g}" for v in last["lambda"]) or "-"
        lines.append(f"| {model_name} | {method} | {ratios} | {lam} | {last['oracle_lambda']:.3g} |")
    return "\n".join(lines), rows


def sweep(quick: bool, steps: tuple[int, int]) -> tuple[str, list[dict[str, Any]]]:
    grid = {
        "alpha": (0.5, 0.9, 0.99),
        "beta": (0.99, 0.999),
        "nu": (0.0, 1e-4, 1e-3),
    }
    seeds = (0,) if quick else (0, 1, 2)
    rows: list[dict[str, Any]] = []
    for alpha, beta, nu in itertools.product(*grid.values()):
        medians = [
            one_run(hidden, "iter_fisher", tau, seed, steps, alpha=alpha, beta=beta, nu=nu).median
            for hidden in models(quick).values()
            for tau in STALENESS
            for seed in seeds
        ]
        geo = math.exp(statistics.fmean(math.log(max(m, 1e-12)) for m in medians))
        rows.append({"alpha": alpha, "beta": beta, "nu": nu, "geomean": geo, "worst": max(medians), "medians": medians})
    rows.sort(key=lambda r: r["geomean"])
    lines = [
        f"Iter-Fisher, median ratio over {len(seeds)} seed(s) x 2 models x staleness 1/4/8 (lower is better)",
        "",
        "| alpha | beta | nu | geometric mean | worst cell |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['alpha']} | {r['beta']} | {r['nu']:g} | {r['geomean']:.4f} | {r['worst']:.4f} |" for r in rows]
    return "\n".join(lines), rows


def lr_sensitivity(quick: bool, steps: tuple[int, int]) -> tuple[str, list[dict[str, Any]]]:
    """Logistic regression at three learning rates: does the fitted lambda overshoot the hindsight one?"""
    settings = [(0.5, 0.0), (0.9, 0.0), (0.9, 1e-4), (0.9, 1e-3)]
    rows: list[dict[str, Any]] = []
    x, y = digits()
    for lr, (alpha, nu) in itertools.product((0.01, 0.05, 0.2), settings):
        cells = []
        for tau in STALENESS:
            torch.manual_seed(0)
            comp = make_compensator("iter_fisher", alpha=alpha, nu=nu, beta=0.999)
            r = approximation_ratios(mlp((64,), 10, ()), x, y, comp, tau, lr=lr, warmup=steps[0], measure=steps[1])
            cells.append({"tau": tau, "median": r.median, "lambda": r.lambdas()[0], "oracle": r.oracle_lambda})
        rows.append({"lr": lr, "alpha": alpha, "nu": nu, "cells": cells})
    lines = [
        "Logistic regression, iter_fisher (beta=0.999): median ratio, fitted lambda / hindsight lambda",
        "",
        "| lr | alpha | nu | tau=1 | tau=4 | tau=8 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = " | ".join(f"{c['median']:.4f} ({c['lambda']:.3g} / {c['oracle']:.3g})" for c in r["cells"])
        lines.append(f"| {r['lr']} | {r['alpha']} | {r['nu']:g} | {cells} |")
    return "\n".join(lines), rows


def stability(quick: bool) -> tuple[str, list[dict[str, Any]]]:
    """10,000 updates at staleness 8 with huge lambda0 on logistic regression; weights must stay finite."""
    rows: list[dict[str, Any]] = []
    updates = 2000 if quick else 10_000
    for method, hyper in (("fisher", {"lambda0": 100.0}), ("iter_fisher", {"lambda0": 100.0, "eta_lambda": 0.0})):
        t0 = time.perf_counter()
        r = one_run((), method, 8, 0, (updates - 100, 100), **hyper)
        rows.append(
            {
                "method": method,
                "lambda0": hyper["lambda0"],
                "updates": updates,
                "finite": r.weights_finite,
                "fallbacks": sum(s["fallbacks"] for s in r.stats.values()),
                "seconds": time.perf_counter() - t0,
            }
        )
    lines = ["| method | lambda0 | updates at tau=8 | weights finite | fallbacks |", "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['lambda0']:g} | {r['updates']} | {r['finite']} | {r['fallbacks']} |" for r in rows]
    return "\n".join(lines), rows


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    steps = (600, 200) if quick else (1500, 500)
    t0 = time.perf_counter()
    table_md, table = method_table(quick, steps)
    sweep_md, sweep_rows = sweep(quick, steps)
    lr_md, lr_rows = lr_sensitivity(quick, steps)
    stab_md, stab = stability(quick)
    hidden = models(quick)["mlp"]
    markdown = "\n\n".join(
        [
            "## Stale-gradient compensation",
            f"digits (features/16), per-sample SGD lr={LR}, {steps[0]} warm-up + {steps[1]} measured updates, "
            f"MLP hidden={list(hidden)}; cell = median (q25-q75) of ||A(g)-g_fresh||^2 / ||g-g_fresh||^2, "
            "defaults of every method unless stated.",
            table_md,
            sweep_md,
            lr_md,
            stab_md,
            f"_{time.perf_counter() - t0:.0f} s, quick={quick}_",
        ]
    )
    data = {
        "steps": steps,
        "lr": LR,
        "mlp_hidden": hidden,
        "methods": table,
        "sweep": sweep_rows,
        "lr_sensitivity": lr_rows,
        "stability": stab,
    }
    return {"title": "Stale-gradient compensation", "markdown": markdown, "data": data}
