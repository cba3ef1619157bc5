"""Contract checks every registered OCL method must pass (discovered from the registry).

A new module in ``ferretd/ocl/`` that defines an ``OclMethod`` subclass with a ``name`` is picked
up by ``load_builtin_methods()`` and runs through every check here: selectable in config, learns
a tiny separable stream above chance on one and on several stages (staleness > 0 included),
never produces a non-finite weight, state_dict round-trips through a ``weights_only`` load to
bitwise-identical continued training, and ``memory_bytes()`` is what the method really holds.
Runs use the deterministic virtual executor; one run uses real lane threads.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch

from ferretd.config import OCL_METHOD_NAMES, Config, ModelConfig, OclConfig, PipelineConfig, TrainingConfig
from ferretd.engine.executors import ExecutorSpec
from ferretd.engine.pipeline import PipelineLearner
from ferretd.engine.plan import Plan
from ferretd.learners import make_learner
from ferretd.models import mlp
from ferretd.ocl import OCL_METHODS, OclMethod, load_builtin_methods, make_ocl

METHODS = sorted(load_builtin_methods())
#: Short refresh intervals so LwF's old model and MAS's penalty are active within the test stream.
HYPER = {**dataclasses.asdict(OclConfig()), "lwf_refresh": 60, "mas_refresh": 60, "mir_candidates": 8}
HYPER.pop("method")
HYPER["replay_bytes"] = 4096
LR = 0.05
PLANS = {
    "P1": lambda: Plan.uniform(2, (1,)),
    "P2": lambda: Plan.uniform(2, (1,), 2),
    "P3xN2": lambda: Plan.uniform(3, (1, 2), 2),
}


def make_stream(n: int, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    """Three well-separated Gaussian classes in 4 dimensions, labels in a fixed rotation."""
    rng = np.random.default_rng(seed)
    centers = 4.0 * np.eye(3, 4)
    return [((centers[i % 3] + rng.normal(0, 1, 4)).astype(np.float32), i % 3) for i in range(n)]


def build(name: str, plan: Plan, executor: str = "virtual", optimizer: str = "sgd") -> PipelineLearner:
    torch.manual_seed(0)
    hidden = (16,) if plan.num_blocks == 2 else (16, 16)
    ocl = make_ocl(name, **HYPER, seed=0, lr=LR)
    t_d = 3.0 * plan.num_stages  # virtual arrivals slow enough that updates land between samples
    return PipelineLearner(
        mlp((4,), 3, hidden),
        plan,
        TrainingConfig(lr=LR if optimizer == "sgd" else 0.01, optimizer=optimizer),
        ocl=ocl,
        executor=ExecutorSpec.virtual(t_d=t_d) if executor == "virtual" else executor,
    )


def run(learner: PipelineLearner, stream: list[tuple[np.ndarray, int]]) -> list[int]:
    hits = []
    for x, y in stream:
        hits.append(int(int(np.argmax(learner.predict_one(x))) == y))
        learner.learn_one(x, y)
    assert learner.flush(timeout=60)
    return hits


def tensor_bytes(obj: object) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def weights_finite(learner: PipelineLearner) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in learner.current_weights().values())


def test_registry_is_the_config_choice_list() -> None:
    assert set(METHODS) == set(OCL_METHOD_NAMES)
    assert {"vanilla", "er", "mir", "lwf", "mas"} <= set(OCL_METHODS)
    assert all(OCL_METHODS[name].name == name for name in METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_selectable_in_config_and_built_by_the_daemon_path(name: str) -> None:
    config = Config(
        model=ModelConfig(input_shape=(4,), num_classes=3, hidden=(8,)),
        pipeline=PipelineConfig(plan="manual", stages=2),
        ocl=OclConfig(method=name),
    )
    config.ocl.check()
    learner = make_learner(config)
    try:
        assert isinstance(learner, PipelineLearner)
        assert type(learner.ocl) is OCL_METHODS[name]
        assert isinstance(make_ocl(name, **dataclasses.asdict(config.ocl), some_future_key=1), OclMethod)
    finally:
        learner.close()


@pytest.mark.parametrize("plan", sorted(PLANS))
@pytest.mark.parametrize("name", METHODS)
def test_learns_a_separable_stream_without_nan(name: str, plan: str) -> None:
    learner = build(name, PLANS[plan]())
    hits = run(learner, make_stream(450))
    accuracy = sum(hits[-200:]) / 200
    assert accuracy >= 0.85, f"{name} on {plan}: online accuracy {accuracy:.2f} (chance 0.33)"
    assert weights_finite(learner)
    if plan == "P3xN2":
        assert max(learner.status()["max_staleness"]) > 0  # the methods ran with stale gradients
    learner.close()


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
@pytest.mark.parametrize("name", METHODS)
def test_learns_with_the_adaptive_optimisers(name: str, optimizer: str) -> None:
    learner = build(name, PLANS["P2"](), optimizer=optimizer)
    hits = run(learner, make_stream(450))
    accuracy = sum(hits[-200:]) / 200
    assert accuracy >= 0.85, f"{name} with {optimizer}: online accuracy {accuracy:.2f} (chance 0.33)"
    assert weights_finite(learner)
    learner.close()


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trips_to_identical_training(name: str) -> None:
    stream = make_stream(400, seed=1)
    first = build(name, PLANS["P2"]())
    run(first, stream[:250])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # what a safe checkpoint loader accepts
    second = build(name, PLANS["P2"]())
    second.load_state_dict(state)
    assert second.ocl is not None and first.ocl is not None
    assert second.ocl.stats() == first.ocl.stats()
    run(first, stream[250:])
    run(second, stream[250:])
    a, b = first.current_weights(), second.current_weights()
    assert all(torch.equal(a[n], b[n]) for n in a), f"{name}: training diverged after a state_dict round trip"
    first.close()
    second.close()


@pytest.mark.parametrize("name", METHODS)
def test_memory_accounting_is_what_the_method_holds(name: str) -> None:
    learner = build(name, PLANS["P2"]())
    run(learner, make_stream(300, seed=2))
    method = learner.ocl
    assert method is not None
    state = method.state_dict()
    held = tensor_bytes(state)
    labels = len(state.get("y", ()))  # a replay buffer's labels: 8 bytes each, not tensors
    assert held <= method.memory_bytes() <= held + 8 * labels, f"{name}: reports {method.memory_bytes()}, holds {held}"
    if "bytes" in method.stats():
        assert method.stats()["bytes"] == method.memory_bytes()
    param_bytes = sum(t.numel() * t.element_size() for t in learner.current_weights().values())
    assert method.memory_bytes() <= method.memory_bound(param_bytes)
    if name in ("er", "mir"):
        assert method.memory_bytes() <= HYPER["replay_bytes"]
    learner.close()


@pytest.mark.parametrize("name", METHODS)
def test_real_lane_threads_train_every_sample(name: str) -> None:
    learner = build(name, PLANS["P3xN2"](), executor="realtime")
    outcomes: list[bool] = []
    for x, y in make_stream(200, seed=3):
        learner.learn_one(x, y, lambda o: outcomes.append(o.trained))
    assert learner.flush(timeout=60)
    assert len(outcomes) == 200 and all(outcomes)
    assert weights_finite(learner)
    learner.close()


@pytest.mark.parametrize("name", METHODS)
def test_another_methods_state_is_ignored_not_fatal(name: str) -> None:
    """``[ocl] method`` changed between runs: the checkpoint's OCL state is skipped, nothing raises."""
    learner = build(name, PLANS["P2"]())
    fresh = learner.ocl.stats() if learner.ocl is not None else {}
    for other in METHODS:
        donor = build(other, PLANS["P2"]())
        run(donor, make_stream(80, seed=4))
        state = donor.ocl.state_dict() if donor.ocl is not None else {}
        donor.close()
        if other != name and state:
            assert learner.ocl is not None
            learner.ocl.load_state_dict(state)
            assert learner.ocl.stats() == fresh, f"{name} took {other}'s state"
    learner.close()


@pytest.mark.parametrize("name", METHODS)
def test_engine_gets_only_the_hooks_a_method_overrides(name: str) -> None:
    """A hook the engine need not call keeps other executors open (the process executor refuses
    OCL losses): vanilla, er and mir pass none, lwf only its loss, mas only its gradient."""
    learner = build(name, PLANS["P2"]())
    method = learner.ocl
    assert method is not None
    assert (learner.core.extra_loss is not None) == (type(method).extra_loss is not OclMethod.extra_loss)
    assert (learner.core.extra_grad is not None) == (type(method).extra_grad is not OclMethod.extra_grad)
    learner.close()


def test_replay_methods_run_on_the_process_executor() -> None:
    config = Config(
        model=ModelConfig(input_shape=(4,), num_classes=3, hidden=(16,)),
        pipeline=PipelineConfig(stages=2, executor="process"),
        ocl=OclConfig(method="er", replay_bytes=4096),
    )
    learner = make_learner(config)
    try:
        assert type(learner.executor).__name__ == "ProcessExecutor"  # type: ignore[attr-defined]
        outcomes: list[bool] = []
        for x, y in make_stream(60, seed=5):
            learner.learn_one(x, y, lambda o: outcomes.append(o.trained))
        assert learner.flush(timeout=60)
        assert len(outcomes) == 60 and all(outcomes)
    finally:
        learner.close()
