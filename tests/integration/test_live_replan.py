"""Live re-planning in a running daemon: the budget drops mid-stream (ferretctl budget), the plan
changes at a safe point, the engine's memory falls under the new budget, and every sample is
still accounted for with nothing lost."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from ferretd.planner.planning import memory_params_for_config, profile_for_config, rate_params_for_config
from ferretd.planner.search import PlanSearch
from tests.integration.harness import ROOT, ThreadedDaemon, child_env, config_from, digits, wait_for, write_config
from transports.client import SamplePublisher
from transports.zmq_control import ControlClient

N = 1200


def saturated_config(ipc_dir, planner):
    """An auto config whose first plan is the planner's for a saturated stream (the arrival interval
    the planner assumes when it knows none), instead of the one-lane plan the daemon runs until it
    has measured the rate."""
    config = config_from(write_config(ipc_dir, pipeline={"plan": "auto"}, planner=planner))
    profile = profile_for_config(config)
    t_d = profile.total_time_s / (profile.microbatch * config.planner.max_workers)
    path = write_config(ipc_dir, pipeline={"plan": "auto"}, planner={**planner, "arrival_interval_s": t_d})
    return path, config_from(path), profile


def test_budget_drop_mid_stream_replans_without_losing_samples(ipc_dir):
    # With the measured lane overhead, real-time plans for this tiny MLP on 2 cores stay P1 N1 and a
    # budget drop would have nothing to take away; planning as if lanes were free gives a big plan.
    planner = {"max_stages": 3, "replan_check_s": 0.5, "action_overhead_s": 0.0}
    path, config, profile = saturated_config(ipc_dir, planner)
    search = PlanSearch(
        profile, rate_params_for_config(config, profile), memory_params_for_config(config), max_workers=4, max_stages=3
    )
    tight = int(search.minimum_bytes * 1.3)
    x, y = digits(N)
    with ThreadedDaemon(config) as td:
        daemon = td.daemon
        before = daemon.plan
        assert before.predicted_memory_bytes > tight, "the unconstrained plan must not fit the tight budget"

        def publish() -> None:
            with SamplePublisher(config.ingest.endpoint, "dev") as publisher:
                for features, label in zip(x, y, strict=True):
                    publisher.publish(features, int(label))

        sender = threading.Thread(target=publish)
        sender.start()
        peak_before = 0
        deadline = time.monotonic() + 60
        while daemon.queue.snapshot().trained < N // 4:
            assert time.monotonic() < deadline, "training under way"
            peak_before = max(peak_before, daemon.learner.status()["version_bytes"])
            time.sleep(0.002)

        budget_cli = subprocess.run(
            [sys.executable, "-m", "ferretd.control.ferretctl", "--config", str(path), "budget", str(tight)],
            capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=120,
        )  # fmt: skip
        assert budget_cli.returncode == 0, budget_cli.stderr
        assert budget_cli.stdout.startswith("plan changed"), budget_cli.stdout
        # The bound must hold while the new plan trains, not only once everything has drained.
        replanned_at = daemon.queue.snapshot().trained
        peak_after = 0
        deadline = time.monotonic() + 60
        while not td.settled(N):
            assert time.monotonic() < deadline, "every sample trained"
            status = daemon.learner.status()
            peak_after = max(peak_after, status["version_bytes"])
            time.sleep(0.002)
        sender.join(60)
        trained_under_new_plan = N - replanned_at

        after = daemon.plan
        assert after != before
        assert after.predicted_memory_bytes <= tight
        assert trained_under_new_plan >= N // 4, "the new plan must carry real load while it is measured"
        assert 0 < peak_after <= tight, (peak_after, tight)
        assert peak_after < peak_before, (peak_after, peak_before)
        ledger = daemon.queue.snapshot()
        assert ledger.received == N and ledger.trained == N and ledger.dropped == {} and ledger.balanced

        with ControlClient(config.control.endpoint, timeout_s=30) as ctl:
            shown = ctl.call("plan").result
            assert shown["replans"] >= 1 and shown["override_bytes"] == tight
            assert shown["headroom"]["bound_by"] == "ferretctl budget"
            too_small = ctl.call("budget", bytes=search.minimum_bytes // 2)
            assert not too_small.ok and "smallest feasible plan, which needs" in too_small.error
            assert daemon.plan == after, "a refused budget leaves the running plan alone"


def test_manual_plan_refuses_replan(ipc_dir):
    config = config_from(write_config(ipc_dir))
    with ThreadedDaemon(config) as td, ControlClient(config.control.endpoint, timeout_s=30) as ctl:
        reply = ctl.call("replan")
        assert not reply.ok and "manual" in reply.error
        assert ctl.call("plan").result["mode"] == "manual"
        assert td.daemon.state == "running"


@pytest.mark.parametrize("text, expected", [("64M", 64 << 20), ("1G", 1 << 30), ("1536", 1536), ("1.5K", 1536)])
def test_budget_argument_parsing(text, expected):
    from ferretd.control.ferretctl import parse_bytes

    assert parse_bytes(text) == expected


def test_replan_switches_between_sequential_and_pipeline_learners_keeping_weights(ipc_dir):
    import numpy as np
    import torch

    _, config, profile = saturated_config(ipc_dir, {"max_stages": 3, "action_overhead_s": 0.0})
    search = PlanSearch(
        profile, rate_params_for_config(config, profile), memory_params_for_config(config), max_workers=4, max_stages=3
    )
    probe, _ = digits(16)

    def outputs(daemon):
        with torch.no_grad():
            return daemon.learner.export_module()(torch.from_numpy(probe)).numpy()

    x, y = digits(300)
    with ThreadedDaemon(config) as td, ControlClient(config.control.endpoint, timeout_s=60) as ctl:
        daemon = td.daemon
        assert daemon.learner.status()["engine"] == "pipeline"
        with SamplePublisher(config.ingest.endpoint, "dev") as publisher:
            for features, label in zip(x[:150], y[:150], strict=True):
                publisher.publish(features, int(label))
        wait_for(lambda: td.settled(150), what="first part trained")
        before = outputs(daemon)

        reply = ctl.call("budget", bytes=search.minimum_bytes)
        assert reply.ok and reply.result["changed"], reply
        assert daemon.plan.num_stages == 1 and len(daemon.plan.active_workers) == 1
        assert daemon.learner.status()["engine"] == "sequential"
        np.testing.assert_allclose(outputs(daemon), before, rtol=1e-6, atol=1e-6)

        with SamplePublisher(config.ingest.endpoint, "dev") as publisher:
            for features, label in zip(x[150:], y[150:], strict=True):
                publisher.publish(features, int(label))
        wait_for(lambda: td.settled(300), what="second part trained")
        middle = outputs(daemon)
        assert ctl.call("budget", bytes=0).result["changed"]
        assert daemon.learner.status()["engine"] == "pipeline"
        np.testing.assert_allclose(outputs(daemon), middle, rtol=1e-6, atol=1e-6)
        ledger = daemon.queue.snapshot()
        assert ledger.trained == 300 and ledger.balanced
