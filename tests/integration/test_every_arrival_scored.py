"""Online accuracy covers every arrival: samples the queue drops under overload are still predicted
and scored (once), through the real daemon, and the ledger stays exact."""

from __future__ import annotations

from ferretd.control.render import render_status
from ferretd.ingest import SampleQueue
from ferretd.messages import DropReason, Sample
from tests.integration.harness import ThreadedDaemon, config_from, digits, wait_for, write_config
from transports.client import SamplePublisher
from transports.zmq_control import ControlClient


def _sample(i: int) -> Sample:
    return Sample("d", i, 0.0, [float(i)], i % 3)


def test_queue_keeps_every_dropped_sample_for_scoring_within_its_capacity():
    queue = SampleQueue(capacity=3)
    for i in range(5):
        queue.offer(_sample(i))
    assert [s.seq for s in queue.take_dropped()] == [0, 1]  # drop_oldest evicted them in order
    assert queue.drop_waiting(DropReason.SHUTDOWN) == 3
    assert [s.seq for s in queue.take_dropped()] == [2, 3, 4] and queue.take_dropped() == []
    assert queue.unscored == 0
    newest = SampleQueue(capacity=1, overflow="drop_newest")
    for i in range(4):
        newest.offer(_sample(i))
    assert [s.seq for s in newest.take_dropped()] == [1]  # the side list is bounded by the capacity too
    assert newest.unscored == 2


def test_dropped_arrivals_are_scored_and_the_ledger_adds_up(ipc_dir):
    config = config_from(write_config(ipc_dir, ingest={"queue_capacity": 16}))
    x, y = digits(200)
    with ThreadedDaemon(config) as td:
        daemon = td.daemon
        with ControlClient(config.control.endpoint, timeout_s=30) as ctl:
            assert ctl.call("pause").ok  # training stops; arrivals overflow the 16-sample queue
            with SamplePublisher(config.ingest.endpoint, "burst") as pub:
                for i in range(0, 100, 10):
                    for features, label in zip(x[i : i + 10], y[i : i + 10], strict=True):
                        assert pub.publish(features, int(label))
                    # the loop scores drops while paused; pace the burst so the side list never fills
                    wait_for(lambda n=i + 10: daemon.queue.snapshot().received == n, what="burst received")
                    wait_for(lambda n=i + 10: daemon.score.seen >= max(0, n - 16), what="drops scored")
            assert ctl.call("resume").ok
        wait_for(lambda: td.settled(100), what="burst settled")
        wait_for(lambda: daemon.status()["accuracy"]["samples"] == 100, what="every arrival scored")
        ledger = daemon.queue.snapshot()
        assert ledger.balanced and ledger.dropped == {"queue_full": 84} and ledger.trained == 16
        acc = daemon.status()["accuracy"]
        assert acc["arrivals"] == 100 and acc["unscored"] == 0
        assert acc["trained_share"] == 0.16
        shown = render_status(daemon.status())  # what ferretctl status prints
        assert "over 100 arrivals" in shown and "trained share" in shown and "0.1600" in shown


def test_under_overload_a_sample_of_the_dropped_arrivals_stands_for_the_rest(ipc_dir):
    """Bursts into a 64-sample queue while the daemon trains: with a tiny scoring share most dropped
    arrivals are only counted, every arrival still counts once, and status says how many were estimated."""
    config = config_from(write_config(ipc_dir, ingest={"queue_capacity": 64}, metrics={"drop_scoring_share": 0.001}))
    x, y = digits(1500)
    with ThreadedDaemon(config) as td:
        daemon = td.daemon
        with SamplePublisher(config.ingest.endpoint, "flood") as pub:
            for i in range(0, 1500, 300):
                for features, label in zip(x[i : i + 300], y[i : i + 300], strict=True):
                    assert pub.publish(features, int(label))
                wait_for(lambda n=i + 300: daemon.queue.snapshot().received == n, what="burst received")
        wait_for(lambda: td.settled(1500), what="bursts settled")
        acc = daemon.status()["accuracy"]
        wait_for(lambda: daemon.score.seen + acc["unscored"] == 1500, what="every kept arrival counted")
        acc = daemon.status()["accuracy"]
        ledger = daemon.queue.snapshot()
        assert ledger.balanced and ledger.dropped.get("queue_full", 0) > 500
        assert acc["estimated"] > 200 and acc["scored"] + acc["estimated"] + acc["unscored"] == 1500
        assert 0.0 <= acc["online_accuracy"] <= 1.0
        assert "estimated from a sample" in render_status(daemon.status())


def test_trained_samples_are_scored_from_their_training_forward(ipc_dir):
    """A learner that reports its training forward's predictions needs no second forward: with no
    drops the daemon never calls predict, and every arrival is still scored exactly."""
    config = config_from(write_config(ipc_dir, ingest={"queue_capacity": 4096}))
    x, y = digits(300)
    with ThreadedDaemon(config) as td:
        daemon = td.daemon
        calls: list[int] = []
        learner = daemon.learner
        predict_many, predict_one = learner.predict_many, learner.predict_one
        learner.predict_many = lambda xs: calls.append(len(xs)) or predict_many(xs)  # type: ignore[method-assign]
        learner.predict_one = lambda x: calls.append(1) or predict_one(x)  # type: ignore[method-assign]
        with SamplePublisher(config.ingest.endpoint, "calm") as pub:
            for features, label in zip(x, y, strict=True):
                assert pub.publish(features, int(label))
        wait_for(lambda: td.settled(300), what="stream settled")
        wait_for(lambda: daemon.status()["accuracy"]["samples"] == 300, what="every arrival scored")
        acc = daemon.status()["accuracy"]
        assert daemon.queue.snapshot().trained == 300 and acc["scored"] == 300 and acc["estimated"] == 0
        assert calls == []
        assert acc["online_accuracy"] > acc["majority_accuracy"]  # it learned, and the scores say so
