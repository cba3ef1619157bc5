"""Each daemon component's ``capture()`` / ``restore()`` round trip, alone and through a real
checkpoint file; and the arbiter has a component for every name a reload can report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ferretd import lifecycle
from ferretd.components.checkpoints import CheckpointComponent
from ferretd.components.ingest import IngestComponent
from ferretd.components.score import ScoreComponent
from ferretd.components.snapshots import SnapshotComponent
from ferretd.components.trainer import Trainer
from ferretd.config.live import COMPONENTS
from ferretd.ingest import SampleQueue
from ferretd.learners import make_learner, plan_from_config
from ferretd.messages import RejectReason, Sample
from ferretd.replan import Replanner
from tests.integration.harness import config_from, digits, write_config


@pytest.fixture
def config(tmp_path):
    return config_from(write_config(tmp_path))


def samples(n: int, seed: int = 0) -> list[Sample]:
    x, y = digits(n, seed=seed)
    return [Sample("dev", i, 0.0, features, int(label)) for i, (features, label) in enumerate(zip(x, y, strict=True))]


def trainer_with_updates(config, n: int = 12) -> Trainer:
    settled: list[tuple[bool, str]] = []
    trainer = Trainer(config, plan_from_config(config), settle=lambda *outcome: settled.append(outcome))
    for sample in samples(n):
        trainer.learn(sample)
    assert trainer.flush(timeout=30) and len(settled) == n
    return trainer


def test_score_round_trip(config):
    learner = make_learner(config)
    score = ScoreComponent(config, lambda: learner)
    arrivals = samples(30)
    for sample in arrivals[:10]:
        score.score_one(sample)
    batch = arrivals[10:]
    score.score_dropped(lambda n: [batch.pop(0) for _ in range(min(n, len(batch)))])
    assert score.seen == 30
    fresh = ScoreComponent(config, lambda: learner)
    fresh.restore(score.capture())
    assert fresh.capture() == score.capture()
    assert fresh.summary() == score.summary()
    learner.close()


def test_ingest_round_trip_counts_what_was_queued_as_lost_in_the_restart(config):
    ingest = IngestComponent(config)
    for sample in samples(6):
        ingest.queue.offer(sample)
    ingest.queue.reject(RejectReason.MALFORMED)
    taken = ingest.queue.take(2)
    ingest.queue.settle(True)  # one trained, one still in flight, four waiting
    assert len(taken) == 2
    state = ingest.capture()
    fresh = IngestComponent(config)
    fresh.restore(state)
    ledger = fresh.queue.snapshot()
    assert (ledger.received, ledger.trained, ledger.invalid) == (7, 1, {"malformed": 1})
    assert ledger.dropped == {"restart": 5} and ledger.queued == 0 and ledger.balanced


def test_trainer_round_trip_keeps_weights_updates_and_predictions(config):
    trainer = trainer_with_updates(config)
    state = trainer.capture()
    fresh = Trainer(config, trainer.plan, settle=lambda trained, reason: None)
    fresh.restore(state)
    assert fresh.updates == trainer.updates == 12
    x = samples(1, seed=1)[0].features
    np.testing.assert_array_equal(fresh.learner.predict_one(x), trainer.learner.predict_one(x))
    for name, tensor in trainer.learner.state_dict()["model"].items():
        assert torch.equal(fresh.learner.state_dict()["model"][name], tensor), name
    trainer.close()
    fresh.close()


def test_replanner_round_trip_keeps_the_operator_budget(config):
    replanner = Replanner(config)
    replanner.override_bytes = 12_345_678
    fresh = Replanner(config)
    fresh.restore(replanner.capture())
    assert fresh.override_bytes == 12_345_678


def test_snapshots_record_the_newest_snapshot_and_take_nothing_back(config):
    learner = make_learner(config)
    snapshots = SnapshotComponent(config, lambda: learner, meta=lambda: {"updates": 0})
    assert snapshots.capture() == {"snapshot_seq": None}
    snapshots.start()  # the exporter thread; no sockets were bound
    assert snapshots.now().result(timeout=60)["seq"] == 1
    snapshots.stop_exporter(timeout=30)
    assert snapshots.capture() == {"snapshot_seq": 1}
    snapshots.restore({"snapshot_seq": 7})
    assert snapshots.capture() == {"snapshot_seq": 1}, "the store on disk is the truth"
    learner.close()


def test_a_checkpoint_file_restores_every_component(config):
    trainer = trainer_with_updates(config)
    score = ScoreComponent(config, lambda: trainer.learner)
    ingest = IngestComponent(config)
    for sample in samples(12):
        ingest.queue.offer(sample)
        score.score_one(sample)
    for _ in ingest.queue.take(12):
        ingest.queue.settle(True)
    replanner = Replanner(config)
    replanner.override_bytes = 99
    checkpoints = CheckpointComponent(config)
    parts = (trainer, score, ingest, replanner)
    checkpoints.save(lifecycle.checkpoint_state(parts, "test"))

    fresh_trainer = Trainer(config, trainer.plan, settle=lambda trained, reason: None)
    fresh_score = ScoreComponent(config, lambda: fresh_trainer.learner)
    fresh = (fresh_trainer, fresh_score, IngestComponent(config), Replanner(config))
    seq = CheckpointComponent(config).resume_newest(
        fresh_trainer.model_template,
        lambda state: lifecycle.restore_checkpoint(fresh, state),
        reset=lambda: pytest.fail("the checkpoint must restore"),
        issues=lifecycle_issues(),
    )
    assert seq == 1
    for before, after in zip(parts[1:], fresh[1:], strict=True):
        assert after.capture() == before.capture(), type(before).__name__
    assert fresh_trainer.updates == trainer.updates
    trainer.close()
    fresh_trainer.close()


def lifecycle_issues():
    from ferretd.health import HealthIssues

    return HealthIssues()


def test_the_daemon_has_a_reconfigurable_component_for_every_name_a_reload_reports(tmp_path):
    from ferretd.daemon import Daemon

    threads = torch.get_num_threads()
    daemon = Daemon(config_from(write_config(tmp_path, daemon={"torch_threads": threads + 1})))
    try:
        assert torch.get_num_threads() == threads + 1, "[daemon] torch_threads is applied with torch.set_num_threads"
        for name in COMPONENTS:
            component = daemon.components[name]
            assert callable(component.reconfigure) and callable(component.capture) and callable(component.restore)
    finally:
        torch.set_num_threads(threads)
        daemon.trainer.close()
        daemon.instance_lock.release()
        daemon.context.term()


def test_dropped_arrivals_are_scored_in_batches_of_one_forward_each(config):
    learner = make_learner(config)
    calls: list[int] = []
    predict_many = learner.predict_many

    def counted(xs):
        calls.append(len(xs))
        return predict_many(xs)

    learner.predict_many = counted  # type: ignore[method-assign]
    score = ScoreComponent(config, lambda: learner)
    dropped = samples(300)
    score.score_dropped(lambda n: [dropped.pop(0) for _ in range(min(n, len(dropped)))])
    assert calls == [256, 44] and score.seen == 300
    learner.close()


def test_under_overload_drops_wait_for_a_large_batch_and_never_overflow_the_side_list(config):
    """The loop scores dropped arrivals only once half the side list is full (or when idle): large
    batches, and room left for the drops of the next turn, so none goes unscored."""
    queue = SampleQueue(capacity=64)
    score = ScoreComponent(config, lambda: make_learner(config))
    for sample in samples(64):
        queue.offer(sample)
    batches: list[int] = []
    for sample in samples(400):  # each turn: one arrival dropped, then the loop's check
        queue.offer(sample)
        if score.batch_due(queue.awaiting_score, queue.capacity):
            batches.append(queue.awaiting_score)
            queue.take_dropped()
    assert batches and all(size == 32 for size in batches)
    assert queue.unscored == 0
    assert score.batch_due(256, 10_000) and not score.batch_due(255, 10_000)  # capped at one forward's batch
    assert score.batch_due(1, 1)
