"""PipelineLearner as an OnlineLearner: outcomes, predict/export, state, plan switches, status."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ferretd.config import TrainingConfig
from ferretd.engine.executors import ExecutorSpec
from ferretd.engine.learner import LearnOutcome
from ferretd.engine.pipeline import PipelineLearner, resolve_devices
from ferretd.engine.plan import Plan

TR = TrainingConfig(lr=0.05, momentum=0.9, microbatch=2)


def _feed(learner, x, y, outcomes=None):
    for xi, yi in zip(x, y, strict=True):
        learner.learn_one(xi, int(yi), outcomes.append if outcomes is not None else None)


@pytest.mark.parametrize("executor", ["virtual", "realtime"])
def test_every_sample_is_reported_exactly_once(make_mlp, stream, executor):
    x, y = stream(21)  # an odd count leaves a partial microbatch for flush
    plan = Plan.uniform(3, Plan.even_partition(3, 3), workers=2, accumulation=2)
    learner = PipelineLearner(make_mlp(), plan, TR, executor=executor, devices="plan")
    outcomes: list[LearnOutcome] = []
    _feed(learner, x, y, outcomes)
    assert learner.flush(30)
    assert len(outcomes) == 21 and all(o.trained for o in outcomes)
    assert learner.core.in_flight() == 0
    learner.close()


def test_samples_dropped_at_the_last_stage_are_reported(make_mlp, stream):
    x, y = stream(24)
    plan = Plan.uniform(3, Plan.even_partition(3, 3), workers=3, omit_stages=(0, 1, 2))
    learner = PipelineLearner(make_mlp(), plan, TrainingConfig(microbatch=1), executor=ExecutorSpec.virtual(t_d=0.5))
    outcomes: list[LearnOutcome] = []
    _feed(learner, x, y, outcomes)
    assert learner.flush()
    assert len(outcomes) == 24
    dropped = [o for o in outcomes if not o.trained]
    assert dropped and all("omitted" in o.reason for o in dropped)


def test_predict_and_export_use_one_consistent_version(make_mlp, stream):
    x, y = stream(10)
    learner = PipelineLearner(make_mlp(), Plan.uniform(3, (1, 2), workers=2), TR, executor="virtual", devices="plan")
    _feed(learner, x, y)
    learner.flush()
    probs = learner.predict_one(x[0])
    assert probs.shape == (3,) and np.isclose(probs.sum(), 1.0)
    module = learner.export_module()
    assert isinstance(module, nn.Sequential) and not module.training
    with torch.no_grad():
        exported = torch.softmax(module(torch.as_tensor(x[:1])), dim=1)[0].numpy()
    np.testing.assert_allclose(exported, probs, rtol=1e-6)


def test_state_dict_round_trip_resumes_identically(make_mlp, stream, recording_compensator):
    x, y = stream(24)
    plan = Plan.uniform(3, (1, 2), workers=2)

    def make():
        return PipelineLearner(make_mlp(), plan, TR, compensator=recording_compensator(), executor="virtual")

    a = make()
    _feed(a, x[:12], y[:12])
    a.flush()
    state = a.state_dict()
    b = make()
    b.load_state_dict(state)
    assert b.updates == a.updates
    _feed(a, x[12:], y[12:])
    _feed(b, x[12:], y[12:])
    a.flush()
    b.flush()
    sa, sb = a.core.full_state(), b.core.full_state()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert state["kind"] == "pipeline" and set(state["momentum"]) == set(state["model"])


def test_apply_plan_drains_and_keeps_weights(make_mlp, stream):
    x, y = stream(30)
    learner = PipelineLearner(make_mlp(), Plan.uniform(3), TR, executor="realtime", devices="plan")
    outcomes: list[LearnOutcome] = []
    _feed(learner, x[:15], y[:15], outcomes)
    before_updates = learner.updates
    assert learner.apply_plan(Plan.uniform(3, (1, 2), workers=2, recompute=True), timeout=30)
    assert len(outcomes) == 15
    weights = learner.core.full_state()
    momentum = learner.core.momentum_state()
    assert learner.plan.num_stages == 3 and len(learner.core.stages) == 3
    assert set(momentum) == set(weights)
    assert learner.updates >= before_updates
    _feed(learner, x[15:], y[15:], outcomes)
    assert learner.flush(30)
    assert len(outcomes) == 30 and all(o.trained for o in outcomes)
    after = learner.core.full_state()
    assert any(not torch.equal(after[k], weights[k]) for k in weights)
    learner.close()


def test_apply_plan_to_same_shape_is_lossless(make_mlp, stream):
    x, y = stream(8)
    learner = PipelineLearner(make_mlp(), Plan.uniform(3, (1,)), TR, executor="virtual", devices="plan")
    _feed(learner, x, y)
    learner.flush()
    weights = learner.core.full_state()
    learner.apply_plan(Plan.uniform(3, (2,), workers=3))
    again = learner.core.full_state()
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    with pytest.raises(ValueError):
        learner.apply_plan(Plan.uniform(4))


def test_status_reports_stages_versions_and_lanes(make_mlp, stream, recording_compensator):
    x, y = stream(12)
    plan = Plan.uniform(3, (1, 2), workers=2)
    learner = PipelineLearner(make_mlp(), plan, TR, compensator=recording_compensator(), executor="virtual")
    _feed(learner, x, y)
    learner.flush()
    status = learner.status()
    assert status["engine"] == "pipeline" and status["stages"] == 3 and status["workers"] == 2
    assert len(status["max_staleness"]) == 3 and len(status["live_versions"]) == 3
    assert status["version_bytes"] > 0
    assert set(status["lane_utilisation"]) == {f"w{w}s{s}" for w in range(2) for s in range(3)}
    assert isinstance(status["compensator"], dict)


def test_close_reports_pending_samples(make_mlp, stream):
    x, y = stream(3)
    learner = PipelineLearner(make_mlp(), Plan.uniform(3), TrainingConfig(microbatch=4), executor="virtual")
    outcomes: list[LearnOutcome] = []
    _feed(learner, x, y, outcomes)
    learner.close()
    assert len(outcomes) == 3 and not any(o.trained for o in outcomes)
    assert all(o.reason == "closed" for o in outcomes)


def test_conv_net_two_stages_realtime(make_conv, stream):
    x, y = stream(8, shape=(1, 8, 8))
    learner = PipelineLearner(make_conv(), Plan.uniform(3, (1,)), TR, executor="realtime", devices="plan")
    outcomes: list[LearnOutcome] = []
    _feed(learner, x, y, outcomes)
    assert learner.flush(30) and len(outcomes) == 8
    learner.close()


def test_device_resolution():
    plan = Plan.uniform(3, (1, 2))
    auto = resolve_devices(plan, "auto")
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        assert [str(d) for d in auto] == [f"cuda:{j % n}" for j in range(3)]
    else:
        assert all(d.type == "cpu" for d in auto)
    assert [d.type for d in resolve_devices(plan, "plan")] == ["cpu"] * 3


def test_virtual_executor_is_deterministic(make_mlp, stream):
    x, y = stream(20)
    plan = Plan.uniform(3, (1, 2), workers=2)
    logs = []
    for _ in range(2):
        learner = PipelineLearner(make_mlp(), plan, TR, executor=ExecutorSpec.virtual({(1, "B"): 3.0}, t_d=0.7))
        _feed(learner, x, y)
        learner.flush()
        logs.append(list(learner.core.log))
    assert logs[0] == logs[1]


def test_from_config_builds_model_compensator_and_ocl():
    from ferretd.config import load_config

    config = load_config(
        overrides={
            "model": {"name": "mlp", "input_shape": [6], "hidden": [8, 8], "num_classes": 3},
            "compensation": {"method": "fisher"},
            "ocl": {"method": "er", "replay_bytes": 4096},
            "pipeline": {"executor": "virtual"},
        },
        env={},
    )
    plan = Plan.uniform(3, (1, 2), workers=2)
    learner = PipelineLearner.from_config(config, plan)
    assert learner.spec.kind == "virtual" and learner.compensator is not None
    assert learner.ocl is not None and learner.ocl.name == "er"
    rng = np.random.default_rng(0)
    for i in range(8):
        learner.learn_one(rng.normal(size=6).astype(np.float32), i % 3)
    assert learner.flush()
    assert learner.status()["compensator"]
    none = load_config(overrides={"compensation": {"method": "none"}}, env={})
    assert PipelineLearner.from_config(none, Plan.uniform(3)).compensator is None


@pytest.mark.parametrize("method", ["iter_fisher", "gap_aware"])
def test_apply_plan_with_a_stateful_compensator(make_mlp, stream, method):
    from ferretd.compensation.base import make_compensator

    x, y = stream(24)
    comp = make_compensator(method)
    learner = PipelineLearner(make_mlp(), Plan.uniform(3, (1,), workers=2), TR, compensator=comp, executor="virtual")
    _feed(learner, x[:12], y[:12])
    learner.apply_plan(Plan.uniform(3, (2,), workers=2))
    _feed(learner, x[12:], y[12:])
    assert learner.flush()
    assert all(torch.isfinite(v).all() for v in learner.core.full_state().values())


@pytest.mark.parametrize(("accumulation", "workers"), [(1, 1), (3, 2), (2, 3)])
def test_in_flight_capacity_is_enough_to_finish_without_flush(make_mlp, stream, accumulation, workers):
    """Feed only as many samples as the capacity allows in flight: everything still completes."""
    x, y = stream(60)
    tr = TrainingConfig(lr=0.05, microbatch=2)
    plan = Plan.uniform(3, (1,), workers=workers, accumulation=accumulation)
    learner = PipelineLearner(make_mlp(), plan, tr, executor=ExecutorSpec.virtual(t_d=0.1))
    cap = learner.in_flight_capacity()
    assert cap == workers * 2 * (max(2, accumulation) + 1)  # one more microbatch per worker waits ready
    outcomes: list[LearnOutcome] = []
    fed = 0
    for _ in range(10_000):
        while fed < len(x) and fed - len(outcomes) < cap:
            learner.learn_one(x[fed], int(y[fed]), outcomes.append)
            fed += 1
        if fed == len(x) and len(outcomes) >= fed - (fed % (workers * 2 * accumulation)):
            break
        learner.executor.clock.run(until=learner.executor.clock.now + 1.0)
    # all but a final partial window completed without any flush
    assert len(outcomes) >= len(x) - workers * 2 * accumulation
    assert learner.flush() and len(outcomes) == len(x)
