"""Raw drifting streams: ferretd's learner beside River (LR, Hoeffding tree, ARF) and a plain torch MLP.

A benchmark, not a test (run through ``tools/bench/run_all.py --only streams``). Every stream
installs offline with ``river`` (the bench extra) and is fed *raw*: no scaling anywhere outside
the learners. All learners see the same samples in the same order, prequentially: predict one
sample, score it, then learn it.

Streams (synthetic generators with drift, and bundled real data):

* ``agrawal``: River's Agrawal loan generator, classification function 0 -> 2 -> 5 -> 8 (abrupt
  drifts at 1/4, 1/2, 3/4 of the stream); raw money columns up to ~1.2e6 next to 0..8 codes.
* ``sea``: SEA concepts (variants 0 -> 1 -> 2 -> 3, abrupt), 10% label noise, features 0..10.
* ``hyperplane``: rotating hyperplane (10 features, 5 drifting, magnitude 0.001; gradual drift).
* ``rbf``: RandomRBFDrift (4 classes, 10 features, 50 centroids of which 25 move; incremental).
* ``segments``: UCI image segments bundled with River (2,310 samples, 7 classes, raw features
  from -50 to 250; stationary, real).
* ``sp500``: River's bundled S&P 500 table in time order (raw daily returns in %, next day up or
  down; real drift, close to unpredictable).

Learners:

* ``ferretd``: ``ferretd.learners.make_learner`` on the daemon's embedded default ``Config``
  with only ``[model] input_shape``/``num_classes`` set for the stream (and ``[training] lr`` by
  the tuning rule): whatever the daemon builds by default (normaliser, optimiser, engine).
* ``mlp``: a plain torch MLP of the same widths (``ferretd.models.mlp``, same init seed),
  one-sample SGD, no normalisation, nothing else.
* ``river_lr``: ``preprocessing.StandardScaler() | linear_model.LogisticRegression()`` (River's
  documented pipeline; one-vs-rest for more than two classes); ``river_ht``:
  ``tree.HoeffdingTreeClassifier()``; ``river_arf``: ``forest.ARFClassifier(seed=0)``. Defaults.

Fairness rule for the two torch learners: the same learning-rate grid (``LR_GRID``) and the same
budget; on every stream each lr runs prequentially on the first ``tune`` samples
(min(2000, n/5)) with a fresh learner, the best prefix accuracy wins (ties: the earlier grid
entry), and the reported number is a fresh full run at that lr. River models get no tuning
(their documented defaults). Prefix tuning peeks at the start of the stream equally for both.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LR_GRID = (0.005, 0.02, 0.05, 0.2)
LEARNERS = ("ferretd", "mlp", "river_lr", "river_ht", "river_arf")
FULL_N = 10_000  # 20,000 took ~7 min per stream on the shared 2-core box (ferretd ~8 ms/sample)
QUICK_N = 2_000
OCL_N = 1_000  # full mode only: ferretd with each [ocl] method on the first OCL_N samples of the drifting streams
OCL_STREAMS = ("agrawal", "sea", "hyperplane", "rbf")
STATE_DIR = tempfile.TemporaryDirectory(prefix="bench-streams-")  # never the working directory


# --------------------------------------------------------------------------- streams


@dataclasses.dataclass
class RawStream:
    name: str
    description: str
    x: np.ndarray  # float64, raw
    y: np.ndarray  # int64 class indices
    classes: int

    def river_rows(self) -> list[dict[str, float]]:
        return [{f"x{j}": float(v) for j, v in enumerate(row)} for row in self.x]


def _chain(make: Callable[[int], Any], concepts: list[int], n: int) -> Iterable[tuple[dict[str, Any], Any]]:
    """Abrupt drifts between ``concepts`` at equal spacing: consecutive segments of each generator.

    (River's ConceptDriftStream overflows ``math.exp`` for an abrupt width far from the drift.)
    """
    import itertools

    bounds = [k * n // len(concepts) for k in range(len(concepts) + 1)]
    return itertools.chain.from_iterable(
        itertools.islice(make(c), bounds[k + 1] - bounds[k]) for k, c in enumerate(concepts)
    )


def _take(source: Iterable[tuple[dict[str, Any], Any]], n: int | None) -> tuple[np.ndarray, list[Any]]:
    xs, ys = [], []
    for i, (x, y) in enumerate(source):
        if n is not None and i >= n:
            break
        xs.append([float(v) for v in x.values()])
        ys.append(y)
    return np.asarray(xs, dtype=np.float64), ys


def _encode(ys: list[Any]) -> tuple[np.ndarray, int]:
    labels = sorted(set(ys), key=str)
    index = {v: i for i, v in enumerate(labels)}
    return np.asarray([index[v] for v in ys], dtype=np.int64), len(labels)


def load_streams(n: int) -> list[RawStream]:
    from river import datasets
    from river.datasets import synth

    out = []
    agrawal = _chain(lambda f: synth.Agrawal(classification_function=f, seed=7 + f), [0, 2, 5, 8], n)
    sea = _chain(lambda v: synth.SEA(variant=v, noise=0.1, seed=11 + v), [0, 1, 2, 3], n)
    hyper = synth.Hyperplane(seed=3, n_features=10, n_drift_features=5, mag_change=0.001, noise_percentage=0.05)
    rbf = synth.RandomRBFDrift(
        seed_model=4,
        seed_sample=4,
        n_classes=4,
        n_features=10,
        n_centroids=50,
        change_speed=0.001,
        n_drift_centroids=25,
    )
    specs = [
        ("agrawal", "Agrawal f0->f2->f5->f8, abrupt; raw money columns up to ~1e6", agrawal, n),
        ("sea", "SEA variants 0->1->2->3, abrupt, 10% noise", sea, n),
        ("hyperplane", "rotating hyperplane, 5/10 features drifting (gradual)", hyper, n),
        ("rbf", "RandomRBFDrift, 4 classes, 25/50 centroids moving (incremental)", rbf, n),
        ("segments", "UCI image segments (real, stationary, 7 classes)", datasets.ImageSegments(), None),
    ]
    for name, description, source, count in specs:
        x, ys = _take(source, count)
        y, k = _encode(ys)
        out.append(RawStream(name, description, x, y, k))
    out.append(_sp500())
    return out


def _sp500() -> RawStream:
    import csv
    import gzip
    from importlib.resources import files

    path = files("river.datasets").joinpath("sp500.csv.gz")
    with gzip.open(str(path), "rt") as fh:
        rows = list(csv.DictReader(fh))
    cols = [c for c in rows[0] if c not in ("date", "next_day_return")]
    x = np.array([[float(r[c]) for c in cols] for r in rows], dtype=np.float64)
    y = np.array([float(r["next_day_return"]) > 0 for r in rows], dtype=np.int64)
    return RawStream("sp500", "S&P 500 up/down next day from 10 stocks' raw returns (real, time order)", x, y, 2)


# --------------------------------------------------------------------------- learners


class PlainMLP:
    """The hand-fed baseline: same MLP widths and init seed as ferretd, one-sample SGD, raw inputs."""

    def __init__(self, features: int, classes: int, hidden: tuple[int, ...], lr: float, seed: int) -> None:
        import torch

        from ferretd.models import mlp

        torch.manual_seed(seed)
        self.torch = torch
        self.model = mlp((features,), classes, hidden)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.loss = torch.nn.CrossEntropyLoss()

    def predict(self, x: np.ndarray) -> int:
        with self.torch.no_grad():
            logits = self.model(self.torch.as_tensor(x, dtype=self.torch.float32).unsqueeze(0))
        return int(self.torch.nan_to_num(logits, nan=-math.inf).argmax())

    def learn(self, x: np.ndarray, y: int) -> None:
        self.opt.zero_grad(set_to_none=True)
        out = self.model(self.torch.as_tensor(x, dtype=self.torch.float32).unsqueeze(0))
        self.loss(out, self.torch.tensor([y])).backward()
        self.opt.step()


class FerretdLearner:
    """``make_learner`` on the default daemon config for this stream, driven test-then-train."""

    def __init__(self, features: int, classes: int, lr: float, ocl: str | None = None, seed: int = 0) -> None:
        from ferretd.config import Config
        from ferretd.learners import make_learner

        base = Config()
        self.config = dataclasses.replace(
            base,
            daemon=dataclasses.replace(base.daemon, state_dir=STATE_DIR.name),  # the planner's profile cache
            model=dataclasses.replace(base.model, input_shape=(features,), num_classes=classes),
            training=dataclasses.replace(base.training, lr=lr, seed=seed),
        )
        if ocl is not None:
            self.config = dataclasses.replace(self.config, ocl=dataclasses.replace(base.ocl, method=ocl))
        self.learner = make_learner(self.config)

    def predict(self, x: np.ndarray) -> int:
        p = self.learner.predict_one(x.astype(np.float32))
        return int(np.argmax(np.nan_to_num(p, nan=-1.0)))

    def learn(self, x: np.ndarray, y: int) -> None:
        self.learner.learn_one(x.astype(np.float32), y)

    def close(self) -> None:
        self.learner.flush()
        self.learner.close()


def river_model(name: str) -> Any:
    from river import forest, linear_model, multiclass, preprocessing, tree

    if name == "river_lr_binary":
        return preprocessing.StandardScaler() | linear_model.LogisticRegression()
    if name == "river_lr_multi":
        return preprocessing.StandardScaler() | multiclass.OneVsRestClassifier(linear_model.LogisticRegression())
    if name == "river_ht":
        return tree.HoeffdingTreeClassifier()
    if name == "river_arf":
        return forest.ARFClassifier(seed=0)
    raise ValueError(name)


def prequential_torch(make: Callable[[], Any], x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    learner = make()
    hits = np.zeros(len(y), dtype=bool)
    started = time.perf_counter()
    for i in range(len(y)):
        hits[i] = learner.predict(x[i]) == y[i]
        learner.learn(x[i], int(y[i]))
    if hasattr(learner, "close"):
        learner.close()
    return hits, time.perf_counter() - started


def prequential_river(model: Any, rows: list[dict[str, float]], y: np.ndarray) -> tuple[np.ndarray, float]:
    hits = np.zeros(len(y), dtype=bool)
    started = time.perf_counter()
    for i, (row, label) in enumerate(zip(rows, y.tolist(), strict=True)):
        hits[i] = model.predict_one(row) == label
        model.learn_one(row, label)
    return hits, time.perf_counter() - started


def tuned(factory: Callable[[float], Callable[[], Any]], s: RawStream) -> tuple[np.ndarray, float, float, dict]:
    """The fairness rule: best lr on the prefix, then a fresh full run at it."""
    tune = min(2000, len(s.y) // 5)
    prefix = {}
    for lr in LR_GRID:
        hits, _ = prequential_torch(factory(lr), s.x[:tune], s.y[:tune])
        prefix[lr] = float(hits.mean())
    best = max(LR_GRID, key=lambda lr: (prefix[lr], -LR_GRID.index(lr)))
    hits, seconds = prequential_torch(factory(best), s.x, s.y)
    return hits, seconds, best, prefix


def baselines(y: np.ndarray) -> dict[str, float]:
    counts: dict[int, int] = {}
    majority_hits = nochange_hits = 0
    majority, last = None, None
    for label in y.tolist():
        majority_hits += int(majority == label)
        nochange_hits += int(last == label)
        counts[label] = counts.get(label, 0) + 1
        if majority is None or counts[label] > counts[majority]:
            majority = label
        last = label
    return {"majority": majority_hits / len(y), "nochange": nochange_hits / len(y)}


def run_stream(s: RawStream, log: Callable[[str], None]) -> dict[str, Any]:
    from ferretd.config import Config

    hidden = tuple(Config().model.hidden)
    features = s.x.shape[1]
    result: dict[str, Any] = {
        "n": len(s.y),
        "features": features,
        "classes": s.classes,
        "max_abs_feature": float(np.abs(s.x).max()),
        "description": s.description,
        **baselines(s.y),
        "accuracy": {},
        "last_half": {},
        "seconds": {},
        "lr": {},
        "prefix_accuracy": {},
        "nan_predictions": {},
    }
    factories = {
        "ferretd": lambda lr: lambda: FerretdLearner(features, s.classes, lr),
        "mlp": lambda lr: lambda: PlainMLP(features, s.classes, hidden, lr, seed=Config().training.seed),
    }
    for name, factory in factories.items():
        hits, seconds, lr, prefix = tuned(factory, s)
        result["lr"][name], result["prefix_accuracy"][name] = lr, prefix
        _record(result, name, hits, seconds)
        log(f"  {s.name:<10} {name:<9} acc {hits.mean():.4f} (lr {lr})  {seconds:.1f}s")
    rows = s.river_rows()
    for name in ("river_lr", "river_ht", "river_arf"):
        key = name if name != "river_lr" else ("river_lr_binary" if s.classes == 2 else "river_lr_multi")
        hits, seconds = prequential_river(river_model(key), rows, s.y)
        _record(result, name, hits, seconds)
        log(f"  {s.name:<10} {name:<9} acc {hits.mean():.4f}  {seconds:.1f}s")
    return result


def _record(result: dict[str, Any], name: str, hits: np.ndarray, seconds: float) -> None:
    result["accuracy"][name] = float(hits.mean())
    result["last_half"][name] = float(hits[len(hits) // 2 :].mean())
    result["seconds"][name] = seconds


# --------------------------------------------------------------------------- report


def markdown(results: dict[str, dict[str, Any]], n: int, quick: bool) -> str:
    from ferretd.config import Config

    cfg = Config()
    lines = [
        f"Prequential (test-then-train) online accuracy over every sample, raw features, "
        f"{'quick' if quick else 'full'} mode ({n} samples per synthetic stream). ferretd: the daemon's "
        f"default learner (`make_learner`; normalize={cfg.model.normalize!r}, optimizer="
        f"{getattr(cfg.training, 'optimizer', 'sgd')!r}, hidden={list(cfg.model.hidden)}, "
        f"plan={cfg.pipeline.plan!r}). Torch learners' lr tuned on the grid {list(LR_GRID)} by the "
        "same prefix rule (module docstring); River models at their defaults.",
        "",
        "| stream | n | classes | max abs feature | majority | NoChange | ferretd (lr) | plain MLP (lr) "
        "| River LR | Hoeffding tree | ARF |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        a = r["accuracy"]
        lines.append(
            f"| {name} | {r['n']} | {r['classes']} | {r['max_abs_feature']:.3g} | {r['majority']:.3f} "
            f"| {r['nochange']:.3f} | **{a['ferretd']:.3f}** ({r['lr']['ferretd']}) "
            f"| {a['mlp']:.3f} ({r['lr']['mlp']}) | {a['river_lr']:.3f} | {a['river_ht']:.3f} | {a['river_arf']:.3f} |"
        )
    lines += ["", "Second half of each stream only (after the learners warmed up):", ""]
    lines += ["| stream | " + " | ".join(LEARNERS) + " |", "|---|" + "---:|" * len(LEARNERS)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['last_half'][k]:.3f}" for k in LEARNERS) + " |")
    lines += ["", "Seconds per stream (shared 2-core box; indicative only):", ""]
    lines += ["| stream | " + " | ".join(LEARNERS) + " |", "|---|" + "---:|" * len(LEARNERS)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['seconds'][k]:.1f}" for k in LEARNERS) + " |")
    lines += ["", "## Against the goal (ferretd >= plain MLP on every stream; within 2 points of ARF or ahead)", ""]
    beat_mlp = [k for k, r in results.items() if r["accuracy"]["ferretd"] >= r["accuracy"]["mlp"]]
    near_arf = [k for k, r in results.items() if r["accuracy"]["ferretd"] >= r["accuracy"]["river_arf"] - 0.02]
    lines.append(f"- ferretd >= plain MLP on {len(beat_mlp)}/{len(results)} streams ({', '.join(beat_mlp) or 'none'}).")
    lines.append(
        f"- ferretd within 2 points of ARF or ahead on {len(near_arf)}/{len(results)} streams "
        f"({', '.join(near_arf) or 'none'})."
    )
    for name, r in results.items():
        a = r["accuracy"]
        lines.append(
            f"- {name}: ferretd - MLP = {100 * (a['ferretd'] - a['mlp']):+.1f} points, "
            f"ferretd - ARF = {100 * (a['ferretd'] - a['river_arf']):+.1f} points, "
            f"best River = {max(a['river_lr'], a['river_ht'], a['river_arf']):.3f}."
        )
    lines += ["", "Streams:", ""] + [f"- `{k}`: {r['description']}" for k, r in results.items()]
    return "\n".join(lines)


def ocl_section(streams: list[RawStream], results: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """ferretd with each OCL method (config defaults, ferretd's tuned lr) on the first OCL_N samples.

    Any method but vanilla runs on the pipeline engine (``learners.is_sequential``) with its
    real-time executor: updates land asynchronously, so a prediction may not yet see the updates
    of the last few samples (the daemon's behaviour too)."""
    from ferretd.config import OCL_METHOD_NAMES

    data: dict[str, dict[str, float]] = {}
    for s in streams:
        if s.name not in OCL_STREAMS:
            continue
        x, y, lr = s.x[:OCL_N], s.y[:OCL_N], results[s.name]["lr"]["ferretd"]
        data[s.name] = {}
        for method in OCL_METHOD_NAMES:
            hits, seconds = prequential_torch(partial(FerretdLearner, s.x.shape[1], s.classes, lr, ocl=method), x, y)
            data[s.name][method] = float(hits.mean())
            print(f"  {s.name:<10} ocl={method:<8} acc {hits.mean():.4f}  {seconds:.1f}s", flush=True)
    lines = [
        "",
        f"## ferretd with each `[ocl] method` (first {OCL_N} samples, ferretd's tuned lr, method defaults)",
        "",
        "| stream | " + " | ".join(OCL_METHOD_NAMES) + " |",
        "|---|" + "---:|" * len(OCL_METHOD_NAMES),
    ]
    for name, row in data.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[m]:.3f}" for m in OCL_METHOD_NAMES) + " |")
    return "\n".join(lines), data


def class_incremental_section(seeds: tuple[int, ...] = (0, 1, 2)) -> tuple[str, dict[str, Any]]:
    """What the OCL methods are for: forgetting. Train on the class-sorted digits stream
    (``tools.streams`` "digits-split", classes 0..9 one after the other), then
    measure held-out accuracy on all ten classes. Config defaults for every method and lr."""
    from ferretd.config import OCL_METHOD_NAMES
    from tools.streams import load_stream

    s = load_stream("digits-split")
    data: dict[str, list[float]] = {}
    for method in OCL_METHOD_NAMES:
        data[method] = []
        for seed in seeds:
            learner = FerretdLearner(s.x.shape[1], s.classes, 0.05, ocl=method, seed=seed)
            for x, y in zip(s.x, s.y, strict=True):
                learner.learn(x, int(y))
            learner.learner.flush()
            test = zip(s.x_test, s.y_test, strict=True)
            data[method].append(float(np.mean([learner.predict(x) == y for x, y in test])))
            learner.close()
        print(f"  digits-split ocl={method:<8} held-out {np.mean(data[method]):.3f}", flush=True)
    lines = [
        "",
        "## Forgetting: class-incremental digits (what the OCL methods are for)",
        "",
        f"Held-out accuracy on all 10 classes after one pass over the class-sorted digits stream "
        f"({len(s.y)} images), ferretd defaults (lr 0.05, `replay_bytes` 4 MiB holds the whole stream), "
        f"mean and spread over seeds {list(seeds)}. Any method but vanilla runs on the pipeline engine.",
        "",
        "| method | held-out accuracy | min | max |",
        "|---|---:|---:|---:|",
    ]
    for method, accs in data.items():
        lines.append(f"| {method} | {np.mean(accs):.3f} | {min(accs):.3f} | {max(accs):.3f} |")
    return "\n".join(lines), data


def run(quick: bool = True, out_dir: Path | None = None) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    n = QUICK_N if quick else FULL_N
    results: dict[str, dict[str, Any]] = {}
    streams = load_streams(n)
    for s in streams:
        if quick:
            s.x, s.y = s.x[:n], s.y[:n]
        print(f"stream {s.name}: {len(s.y)} samples, {s.x.shape[1]} features, {s.classes} classes", flush=True)
        results[s.name] = run_stream(s, lambda line: print(line, flush=True))
    text = markdown(results, n, quick)
    ocl: dict[str, Any] = {}
    if not quick:
        extra, ocl = ocl_section(streams, results)
        forgetting, ocl["class_incremental_digits"] = class_incremental_section()
        text += "\n" + extra + "\n" + forgetting
    return {
        "title": "Raw drifting streams: ferretd vs River (LR, Hoeffding tree, ARF) and a plain torch MLP",
        "markdown": text,
        "data": {"lr_grid": list(LR_GRID), "samples_per_synthetic_stream": n, "streams": results, "ocl": ocl},
    }


if __name__ == "__main__":
    from tools.bench.run_all import main

    mode = "--full" if "--full" in sys.argv[1:] else "--quick"
    raise SystemExit(main([mode, "--only", "streams"]))
