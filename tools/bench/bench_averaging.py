"""Served-model averaging and optimisers for raw streams: what ``[snapshot] export`` and
``[training] optimizer`` default to, measured.

Table 1 (averaging): the daemon's sequential learner (default config: running normalisation,
SGD lr 0.05, MLP 128-64) learns the shipped digits stream for several passes; every ``EVERY``
updates during the last ``LAST`` updates it takes a snapshot of the latest weights and of their
exponential moving averages (decays 0.99, 0.995, 0.999; ``ferretd.engine.optim.WeightAverage``)
and measures held-out accuracy on the held-out digits. Reported per variant: mean, min, max and
standard deviation over those snapshots and seeds: "a served model that is not luck" means a
higher mean and a narrower min..max.

Table 2 (optimisers on raw data): online (prequential) accuracy over one pass of the digits
stream fed raw (feature j scaled by 10^(-3 + 9 j / 63) plus an offset, as a sensor would send
it) and as shipped, for SGD / Adam / AdaGrad with and without running normalisation, and how
many updates the divergence guard refused.

Run alone: ``.venv/bin/python tools/bench/run_all.py --quick --only averaging``.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ferretd.config import ModelConfig, TrainingConfig
from ferretd.engine.optim import WeightAverage
from ferretd.engine.sequential import SequentialLearner
from ferretd.models import build_model
from ferretd.models.normalize import Normalized, make_norm
from tools.streams import load_stream

DECAYS = (0.99, 0.995, 0.999)
SCALES = np.logspace(-3, 6, 64).astype(np.float32)
OPTIMIZERS = {"sgd": 0.05, "adam": 0.001, "adagrad": 0.05}


def raw(x: np.ndarray) -> np.ndarray:
    return (x * SCALES + 2.0 * SCALES).astype(np.float32)


def learner_for(seed: int, optimizer: str = "sgd", lr: float = 0.05, normalize: str = "running") -> SequentialLearner:
    model_cfg = ModelConfig(normalize=normalize)
    training = TrainingConfig(optimizer=optimizer, lr=lr, seed=seed)
    model = build_model(model_cfg, seed=seed)
    norm = make_norm(normalize, tuple(model_cfg.input_shape), model_cfg.normalize_decay, model_cfg.normalize_clip)
    return SequentialLearner(model, training, norm=norm)


def held_out(learner: SequentialLearner, tensors: list[torch.Tensor] | None, x: np.ndarray, y: np.ndarray) -> float:
    model = copy.deepcopy(learner.model)
    if tensors is not None:
        with torch.no_grad():
            for p, t in zip(model.parameters(), tensors, strict=True):
                p.copy_(t)
    served = Normalized(learner.norm.frozen(), model) if learner.norm is not None else model
    with torch.no_grad():
        return float((served(torch.as_tensor(x)).argmax(1).numpy() == y).mean())


def averaging_run(seed: int, passes: int, last: int, every: int, feed_raw: bool) -> dict[str, list[float]]:
    stream = load_stream("digits", seed=seed)
    x, xt = (raw(stream.x), raw(stream.x_test)) if feed_raw else (stream.x, stream.x_test)
    learner = learner_for(seed)
    averages = {d: WeightAverage(d, learner.params) for d in DECAYS}
    total = passes * len(stream.y)
    scores: dict[str, list[float]] = {"latest": [], **{f"ema {d}": [] for d in DECAYS}}
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(stream.y)) for _ in range(passes)])
    for step, i in enumerate(order, start=1):
        learner.predict_one(x[i])
        learner.learn_one(x[i], int(stream.y[i]))
        for avg in averages.values():
            avg.update([p.detach() for p in learner.params])
        if step > total - last and step % every == 0:
            scores["latest"].append(held_out(learner, None, xt, stream.y_test))
            for d, avg in averages.items():
                scores[f"ema {d}"].append(held_out(learner, avg.tensors, xt, stream.y_test))
    return scores


def averaging_table(quick: bool) -> tuple[str, list[dict[str, Any]]]:
    seeds = (0,) if quick else (0, 1, 2)
    passes, last, every = (3, 1000, 50) if quick else (5, 1000, 25)
    rows: list[dict[str, Any]] = []
    for feed_raw in (False, True):
        pooled: dict[str, list[float]] = {}
        for seed in seeds:
            for name, values in averaging_run(seed, passes, last, every, feed_raw).items():
                pooled.setdefault(name, []).extend(values)
        for name, values in pooled.items():
            rows.append(
                {
                    "stream": "digits raw-scaled" if feed_raw else "digits",
                    "weights": name,
                    "snapshots": len(values),
                    "mean": statistics.fmean(values),
                    "min": min(values),
                    "max": max(values),
                    "std": statistics.pstdev(values),
                }
            )
    lines = [
        f"### Held-out accuracy of the served weights over the last {last} updates "
        f"(a snapshot every {every}; {passes} passes; seeds {list(seeds)})",
        "",
        "| stream | weights | snapshots | mean | min | max | std |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['stream']} | {r['weights']} | {r['snapshots']} | {r['mean']:.4f} | {r['min']:.4f} | "
        f"{r['max']:.4f} | {r['std']:.4f} |"
        for r in rows
    ]
    return "\n".join(lines), rows


def prequential(seed: int, optimizer: str, lr: float, normalize: str, feed_raw: bool) -> dict[str, Any]:
    stream = load_stream("digits", seed=seed)
    x = raw(stream.x) if feed_raw else stream.x
    learner = learner_for(seed, optimizer, lr, normalize)
    hits = 0
    for xi, yi in zip(x, stream.y, strict=True):
        hits += int(np.argmax(learner.predict_one(xi)) == yi)
        learner.learn_one(xi, int(yi))
    refused = sum(learner.guard.counts.values())
    finite = all(bool(torch.isfinite(p).all()) for p in learner.params)
    return {"online_accuracy": hits / len(stream.y), "refused": refused, "finite": finite}


def optimizer_table(quick: bool) -> tuple[str, list[dict[str, Any]]]:
    seeds = (0,) if quick else (0, 1, 2)
    rows: list[dict[str, Any]] = []
    for feed_raw in (True, False):
        for normalize in ("running", "none"):
            for optimizer, lr in OPTIMIZERS.items():
                runs = [prequential(s, optimizer, lr, normalize, feed_raw) for s in seeds]
                rows.append(
                    {
                        "stream": "digits raw-scaled" if feed_raw else "digits",
                        "normalize": normalize,
                        "optimizer": optimizer,
                        "lr": lr,
                        "online_accuracy": statistics.fmean(r["online_accuracy"] for r in runs),
                        "refused": sum(r["refused"] for r in runs),
                        "finite": all(r["finite"] for r in runs),
                    }
                )
    lines = [
        f"### Online accuracy, one pass, seeds {list(seeds)} (refused = updates the divergence guard discarded)",
        "",
        "| stream | normalize | optimizer | lr | online accuracy | refused | weights finite |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['stream']} | {r['normalize']} | {r['optimizer']} | {r['lr']} | {r['online_accuracy']:.4f} | "
        f"{r['refused']} | {r['finite']} |"
        for r in rows
    ]
    return "\n".join(lines), rows


def run(quick: bool = True, out_dir: Path | None = None) -> dict[str, Any]:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    avg_md, avg_rows = averaging_table(quick)
    opt_md, opt_rows = optimizer_table(quick)
    markdown = "\n\n".join(
        [
            "## Served-model averaging and optimisers on raw data",
            "Sequential learner with the daemon's defaults unless stated (MLP 128-64, SGD lr 0.05, "
            "microbatch 1, running normalisation); held-out = the 20% of digits not streamed.",
            avg_md,
            opt_md,
            f"_{time.perf_counter() - t0:.0f} s, quick={quick}_",
        ]
    )
    return {
        "title": "Served-model averaging (Polyak/EMA) and optimisers on raw streams",
        "markdown": markdown,
        "data": {"averaging": avg_rows, "optimizers": opt_rows, "decays": DECAYS, "optimizers_lr": OPTIMIZERS},
    }


if __name__ == "__main__":
    print(run(quick="--full" not in sys.argv)["markdown"])
