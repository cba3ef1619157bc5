"""The engine's math against references: plain SGD (P=1, N=1), flush schedules, log replay, and
every microbatch gradient against a fresh ``autograd.grad`` at its pinned versions."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from ferretd.config import TrainingConfig
from ferretd.engine.core import PipelineCore
from ferretd.engine.executors import ExecutorSpec
from ferretd.engine.pipeline import PipelineLearner
from ferretd.engine.plan import Plan
from ferretd.engine.runtime import replay, run_schedule
from ferretd.engine.schedule import async_1f1b, gpipe, one_f_one_b_flush
from ferretd.engine.sequential import SequentialLearner
from ferretd.engine.simulate import simulate

TR = TrainingConfig(lr=0.1, momentum=0.9, weight_decay=1e-3, microbatch=2)


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ 1. P=1, N=1 is plain SGD, bitwise


@pytest.mark.parametrize("executor", ["virtual", "realtime"])
@pytest.mark.parametrize("microbatch", [1, 3])
def test_single_stage_single_worker_is_bitwise_sgd(make_mlp, stream, executor, microbatch):
    tr = TrainingConfig(lr=0.1, momentum=0.9, weight_decay=1e-3, microbatch=microbatch)
    x, y = stream(12)
    model = make_mlp()
    reference = copy.deepcopy(model)
    opt = torch.optim.SGD(reference.parameters(), lr=tr.lr, momentum=tr.momentum, weight_decay=tr.weight_decay)
    expected = []
    for i in range(0, 12, microbatch):
        opt.zero_grad(set_to_none=True)
        # fresh copies: a view into the numpy array is not 64-byte aligned and MKL then sums differently
        xb, yb = torch.tensor(x[i : i + microbatch]), torch.tensor(y[i : i + microbatch])
        nn.CrossEntropyLoss()(reference(xb), yb).backward()
        opt.step()
        expected.append({k: v.detach().clone() for k, v in reference.state_dict().items()})
    sequential = SequentialLearner(copy.deepcopy(model), tr)
    learner = PipelineLearner(model, Plan.uniform(3), tr, executor=executor, devices="plan")
    trajectory = []

    def probe(event, **_kw):
        if event == "publish":
            trajectory.append(learner.core.full_state())

    learner.core.probe = probe
    for xi, yi in zip(x, y, strict=True):
        learner.learn_one(xi, int(yi))
        sequential.learn_one(xi, int(yi))
    assert learner.flush(10)
    learner.close()
    assert len(trajectory) == len(expected)
    assert all(_same(got, want) for got, want in zip(trajectory, expected, strict=True))
    assert _same(learner.core.full_state(), dict(sequential.model.state_dict()))
    assert learner.updates == sequential.updates == 12 // microbatch


# ------------------------------------------------------------------ 2. flush schedules = non-pipelined


@pytest.mark.parametrize("generator", [gpipe, one_f_one_b_flush])
@pytest.mark.parametrize("stages", [2, 3])
def test_flush_schedule_gradients_equal_the_unpipelined_reference(
    make_mlp, stream, recording_compensator, generator, stages
):
    group, mb, groups = 4, 2, 2
    x, y = stream(group * mb * groups)
    model = make_mlp()
    reference = copy.deepcopy(model)
    plan = Plan.uniform(3, Plan.even_partition(3, stages))
    comp = recording_compensator()
    tr = TrainingConfig(lr=0.1, momentum=0.5, microbatch=mb)
    core = PipelineCore(model, plan, tr, compensator=comp)
    for m in range(group * groups):
        sl = slice(m * mb, (m + 1) * mb)
        core.add_microbatch(m, 0, torch.as_tensor(x[sl]), torch.as_tensor(y[sl]), [])
    run_schedule(core, generator(stages, 1, group * groups, group))
    opt = torch.optim.SGD(reference.parameters(), lr=tr.lr, momentum=tr.momentum)
    ref_grads = []
    for g in range(groups):
        sl = slice(g * group * mb, (g + 1) * group * mb)
        opt.zero_grad()
        nn.CrossEntropyLoss()(reference(torch.as_tensor(x[sl])), torch.as_tensor(y[sl])).backward()
        ref_grads.append({n: p.grad.clone() for n, p in reference.named_parameters()})
        opt.step()
    # the compensator saw every microbatch gradient of each group; their mean is the batch gradient
    for j in range(stages):
        calls = [c for c in comp.calls if c["stage"] == j]
        assert len(calls) == group * groups
        for g in range(groups):
            chunk = calls[g * group : (g + 1) * group]
            assert all(len(c["deltas"]) == 0 for c in chunk)  # staleness 0
            mean = [torch.stack(gs).mean(0) for gs in zip(*[c["grads"] for c in chunk], strict=True)]
            for name, got in zip(core.param_names[j], mean, strict=True):
                torch.testing.assert_close(got, ref_grads[g][name])
    for name, value in core.full_state().items():
        torch.testing.assert_close(value, reference.state_dict()[name])


# ------------------------------------------------------------------ 3. async 1F1B = replay of its log


def _learner_run(model, plan, x, y, **kw):
    spec = ExecutorSpec.virtual(record_inputs=True, log_limit=None)
    learner = PipelineLearner(model, plan, TR, executor=spec, devices="plan", **kw)
    for xi, yi in zip(x, y, strict=True):
        learner.learn_one(xi, int(yi))
    assert learner.flush()
    return learner


@pytest.mark.parametrize("a", [1, 2])
@pytest.mark.parametrize("workers", [1, 2])
def test_async_run_equals_single_threaded_replay_of_its_log(make_mlp, stream, a, workers):
    x, y = stream(40)
    model = make_mlp(blocks=4)
    plan = Plan.uniform(4, Plan.even_partition(4, 4), workers=workers, accumulation=a)
    learner = _learner_run(model, plan, x, y)
    fresh = PipelineCore(model, plan, TR)
    assert replay(list(learner.core.log), fresh, learner.core.inputs) == []
    assert _same(fresh.full_state(), learner.core.full_state())
    assert _same(fresh.momentum_state(), learner.core.momentum_state())
    stats = learner.core.stats()
    if workers == 1:
        assert [s["max_staleness"] for s in stats] == [math.ceil((4 - 1 - j) / a) for j in range(4)]
        assert [s["max_live_versions"] for s in stats] == [1 + math.ceil((4 - 1 - j) / a) for j in range(4)]


@pytest.mark.parametrize("omit", [(), (0, 1)])
@pytest.mark.parametrize("workers", [1, 2])
def test_engine_versions_match_the_dry_run(make_mlp, stream, omit, workers):
    """Same static schedule: the real engine and the tensor-free simulator agree on everything."""
    p, m, mb = 3, 12, 2
    x, y = stream(m * mb)
    plan = Plan.uniform(3, Plan.even_partition(3, p), workers=workers, omit_stages=omit)
    core = PipelineCore(make_mlp(), plan, TR, record_inputs=True)
    for k in range(m):
        sl = slice(k * mb, (k + 1) * mb)
        core.add_microbatch(k, k % workers, torch.as_tensor(x[sl]), torch.as_tensor(y[sl]), [])
    schedule = async_1f1b(p, workers, m)
    run_schedule(core, schedule)
    report = simulate(schedule, omit={(w, j) for w in range(workers) for j in omit})
    stats = core.stats()
    assert [s["max_staleness"] for s in stats] == report.max_staleness
    assert [s["max_live_versions"] for s in stats] == report.max_live_versions
    assert [s["updates"] for s in stats] == report.updates
    assert core.skipped_backwards == report.skipped_backwards
    if workers == 1:
        assert report.max_live_versions == [1 if j in omit else p - j for j in range(p)]
    fresh = PipelineCore(make_mlp(), plan, TR)
    assert replay(list(core.log), fresh, core.inputs) == []
    assert _same(fresh.full_state(), core.full_state())


def test_omission_live_versions_and_outcomes(make_mlp, stream):
    x, y = stream(24)
    plan = Plan.uniform(3, Plan.even_partition(3, 3), omit_stages=(0, 1, 2))
    outcomes = []
    learner = PipelineLearner(make_mlp(), plan, TR, executor="virtual", devices="plan")
    for xi, yi in zip(x, y, strict=True):
        learner.learn_one(xi, int(yi), outcomes.append)
    assert learner.flush()
    stats = learner.core.stats()
    assert [s["max_live_versions"] for s in stats] == [1, 1, 1]
    assert len(outcomes) == 24 and all(o.trained for o in outcomes)  # the last stage always learns (N=1)
    assert learner.core.skipped_backwards > 0
    assert stats[0]["updates"] < stats[2]["updates"]


# ---------------------------------------------------------------- 4. gradient = fresh autograd.grad at pinned versions


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("omit", [(), (1,)])
def test_every_gradient_equals_a_fresh_autograd_grad_at_its_pinned_versions(make_mlp, stream, recompute, omit):
    p, workers = 3, 2
    x, y = stream(30)
    model = make_mlp()
    plan = Plan.uniform(3, Plan.even_partition(3, p), workers=workers, recompute=recompute, omit_stages=omit)
    learner = PipelineLearner(
        model, plan, TR, executor=ExecutorSpec.virtual(record_inputs=True, log_limit=None), devices="plan"
    )
    core = learner.core
    history = {j: {0: core.stages[j].store.current.tensors} for j in range(p)}
    grads = []

    def probe(event, **kw):
        if event == "publish":
            history[kw["stage"]][kw["version"]] = kw["tensors"]
        else:
            grads.append(kw)

    core.probe = probe
    for xi, yi in zip(x, y, strict=True):
        learner.learn_one(xi, int(yi))
    assert learner.flush()
    pinned = {(e.action.microbatch, e.action.stage): e.pinned[0] for e in core.log if e.action.kind == "F"}
    assert len(grads) > 20
    for g in grads:
        m = g["microbatch"]
        _, xb, yb = core.inputs[m]
        fresh = copy.deepcopy(model)
        state = {}
        for j in range(p):
            tensors = history[j][pinned[(m, j)]]
            state.update(dict(zip(core.param_names[j], tensors, strict=True)))
        fresh.load_state_dict(state)
        loss = nn.CrossEntropyLoss()(fresh(xb), yb)
        names = core.param_names[g["stage"]]
        params = dict(fresh.named_parameters())
        expected = torch.autograd.grad(loss, [params[n] for n in names])
        assert g["version"] == pinned[(m, g["stage"])]
        for got, want in zip(g["grads"], expected, strict=True):
            torch.testing.assert_close(got, want)


def test_compensator_contract_deltas_sum_to_current_minus_pinned(make_mlp, stream, recording_compensator):
    x, y = stream(30)
    comp = recording_compensator()
    plan = Plan.uniform(3, Plan.even_partition(3, 3), workers=2)
    learner = PipelineLearner(make_mlp(), plan, TR, compensator=comp, executor="virtual", devices="plan")
    for xi, yi in zip(x, y, strict=True):
        learner.learn_one(xi, int(yi))
    assert learner.flush()
    assert len(comp.calls) == sum(s["updates"] for s in learner.core.stats())  # a = 1: one call per update
    assert any(len(c["deltas"]) > 0 for c in comp.calls) and any(len(c["deltas"]) == 0 for c in comp.calls)
    for c in comp.calls:
        for i, (pin, cur) in enumerate(zip(c["pinned"], c["current"], strict=True)):
            total = sum((d[i] for d in c["deltas"]), torch.zeros_like(pin))
            torch.testing.assert_close(pin + total, cur)
    assert all(np.isfinite(v["mean_staleness"]) for v in learner.status()["stage"])


def test_running_a_deadlocking_schedule_raises_with_the_grid(make_mlp, stream):
    from ferretd.engine.schedule import Schedule, ScheduleError

    x, y = stream(2)
    core = PipelineCore(make_mlp(), Plan.uniform(3, (1,)), TR)
    for m in range(2):
        core.add_microbatch(m, 0, torch.as_tensor(x[m : m + 1]), torch.as_tensor(y[m : m + 1]), [])
    text = "w0s0: w0s0F0 w0s0B0 w0s0U0 w0s0F1 w0s0B1 w0s0U1\nw0s1: w0s1F1 w0s1F0 w0s1B0 w0s1U0 w0s1B1 w0s1U1"
    with pytest.raises(ScheduleError, match=r"(?s)deadlocked.*w0s1 .*stuck: w0s1F1 waits for"):
        run_schedule(core, Schedule.from_text("crossed", 2, 1, text))
