"""Scoring dropped arrivals by sample under overload (``[metrics] drop_scoring_share``): the
budget keeps scoring within its share of the loop's time, every arrival still counts once, and
the weighted online accuracy is an unbiased estimate of the exact one."""

from __future__ import annotations

import numpy as np
import pytest

from ferretd.components.score import ScoreComponent, ScoringBudget
from ferretd.engine.learner import PrequentialScore
from ferretd.messages import Sample
from tests.integration.harness import config_from, write_config


class FeatureLearner:
    """Predicts the class written in the sample's first feature: which samples hit is known exactly."""

    def __init__(self) -> None:
        self.predicted = 0

    def predict_many(self, xs: np.ndarray) -> np.ndarray:
        self.predicted += len(xs)
        return np.eye(3)[xs[:, 0].astype(int)]

    def predict_one(self, x: np.ndarray) -> np.ndarray:
        return self.predict_many(x[None, :])[0]


def stream(n: int, hit_rate: float, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    hits = rng.random(n) < hit_rate
    guesses = np.where(hits, labels, (labels + 1) % 3)
    pairs = enumerate(zip(guesses, labels, strict=True))
    return [Sample("d", i, 0.0, np.array([g, 0.0], np.float32), int(y)) for i, (g, y) in pairs]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_affords_its_share_of_the_loop_time():
    clock = FakeClock()
    budget = ScoringBudget(0.2, clock)
    assert budget.affordable(256) == 256  # cost unknown yet: score the batch, measure it
    budget.spent(0.256, 256)  # 1 ms per sample
    clock.now += 1.0  # 0.1 s banked at the start - 0.256 spent + 0.2 s per second = 0.044 s
    assert budget.affordable(256) == 44
    budget.spent(0.044, 44)
    assert budget.affordable(256) == 1  # nothing left: one sample still stands for the batch
    clock.now += 10.0  # a long quiet spell banks at most share x BURST_S = 0.1 s
    assert budget.affordable(256) == 100
    assert ScoringBudget(1.0, clock).affordable(256) == 256


def test_budget_spends_at_most_its_share_over_time():
    clock = FakeClock()
    budget = ScoringBudget(0.25, clock)
    spent = 0.0
    for _ in range(2000):  # a batch of 256 drops every 10 ms, 0.5 ms to score each sample
        clock.now += 0.010
        m = budget.affordable(256)
        clock.now += 0.0005 * m
        budget.spent(0.0005 * m, m)
        spent += 0.0005 * m
    assert spent / clock.now == pytest.approx(0.25, abs=0.03)


def test_weighted_accuracy_is_exact_with_unit_weights_and_counts_every_arrival():
    score = PrequentialScore(window=4)
    for guess, label in [(1, 1), (0, 1), (2, 2)]:
        score.record(guess, label)
    score.count(2)  # an arrival left unscored: its hit is carried by a weighted one
    assert score.seen == 4 and score.scored == 3 and score.summary()["estimated"] == 1
    assert score.accuracy == pytest.approx(2 / 4)
    assert score.summary()["nochange_accuracy"] == pytest.approx(2 / 4)  # labels 1, 1, 2, 2: the unscored one counts
    restored = PrequentialScore(window=4)
    restored.load_state_dict(score.state_dict())
    assert restored.summary() == score.summary()


def test_checkpoints_from_before_sampled_scoring_still_load():
    old = {"seen": 3, "hits": 2, "nochange_hits": 1, "majority_hits": 1, "recent": [1, 0, 1],
           "last_label": 2, "label_counts": {"1": 2, "2": 1}, "majority": 1}  # fmt: skip
    score = PrequentialScore(window=4)
    score.load_state_dict(old)
    assert score.scored == 3 and score.accuracy == pytest.approx(2 / 3)
    assert score.summary()["window_accuracy"] == pytest.approx(2 / 3)


@pytest.fixture
def config(tmp_path):
    return config_from(write_config(tmp_path, metrics={"drop_scoring_share": 0.2}))


def test_sampled_scoring_estimates_the_exact_accuracy_without_bias(config):
    learner = FeatureLearner()
    score = ScoreComponent(config, lambda: learner, seed=1)  # type: ignore[arg-type, return-value]
    score.budget = ScoringBudget(0.2, FakeClock())
    score.budget.spent(1.0, 1)  # scoring seems to cost 1 s per sample and no time passes: 1 per batch
    drops = stream(25_600, hit_rate=0.7)
    while drops:  # one batch per loop turn
        score.score_dropped(lambda n: [drops.pop(0) for _ in range(min(n, len(drops)))], exact=False)
    summary = score.summary()
    assert summary["samples"] == 25_600 and summary["scored"] == 100 == learner.predicted
    # 100 scored samples, each standing for 256: standard error sqrt(0.7 x 0.3 / 100) = 0.046
    assert summary["online_accuracy"] == pytest.approx(0.7, abs=3 * 0.046)


def test_estimates_over_many_seeds_average_to_the_exact_accuracy(config):
    drops = stream(2_560, hit_rate=0.6, seed=3)
    exact = float(np.mean([s.features[0] == s.label for s in drops]))
    estimates, stderrs = [], []
    for seed in range(200):
        score = ScoreComponent(config, lambda: FeatureLearner(), seed=seed)  # type: ignore[arg-type, return-value]
        score.budget = ScoringBudget(0.2, FakeClock())
        score.budget.spent(1.0, 1)
        pending = list(drops)
        while pending:
            score.score_dropped(lambda n, p=pending: [p.pop(0) for _ in range(min(n, len(p)))], exact=False)
        estimates.append(score.summary()["online_accuracy"])
        stderrs.append(score.summary()["online_accuracy_stderr"])
    # 200 estimates from 10 samples each: the mean's standard error is about 0.49 / sqrt(2000) = 0.011
    assert np.mean(estimates) == pytest.approx(exact, abs=0.035)
    assert np.std(estimates) > 0.05  # they really are estimates from a sample
    assert np.mean(stderrs) == pytest.approx(np.std(estimates), rel=0.25)  # the reported error is their spread


def test_exact_scoring_predicts_every_dropped_arrival(config):
    learner = FeatureLearner()
    score = ScoreComponent(config, lambda: learner)  # type: ignore[arg-type, return-value]
    score.budget.spent(1.0, 1)
    drops = stream(600, hit_rate=0.5)
    exact = float(np.mean([s.features[0] == s.label for s in drops]))
    score.score_dropped(lambda n: [drops.pop(0) for _ in range(min(n, len(drops)))], exact=True)
    assert learner.predicted == 600 and score.summary()["estimated"] == 0
    assert score.summary()["online_accuracy_stderr"] == 0.0
    assert score.summary()["online_accuracy"] == pytest.approx(exact)


def test_each_sampled_prediction_is_scored_against_its_own_label(config):
    """A learner right on every sample must score exactly 1.0 from any subset (a mix-up would not)."""
    learner = FeatureLearner()
    score = ScoreComponent(config, lambda: learner, seed=2)  # type: ignore[arg-type, return-value]
    score.budget = ScoringBudget(0.2, FakeClock())
    score.budget.spent(0.0, 1_000)
    score.budget.spent(0.05, 1)  # 0.05 s left, 10 ms per sample so far: a few of each batch
    drops = stream(512, hit_rate=1.0)
    while drops:  # one batch per loop turn
        score.score_dropped(lambda n: [drops.pop(0) for _ in range(min(n, len(drops)))], exact=False)
    summary = score.summary()
    assert 2 < summary["scored"] < 512 and summary["samples"] == 512
    assert summary["online_accuracy"] == pytest.approx(1.0, abs=1e-12)


def test_the_scoring_share_is_live_on_reload(config, tmp_path):
    score = ScoreComponent(config, lambda: FeatureLearner())  # type: ignore[arg-type, return-value]
    assert score.budget.share == 0.2
    (tmp_path / "new").mkdir()
    score.reconfigure(config_from(write_config(tmp_path / "new", metrics={"drop_scoring_share": 1.0})))
    assert score.budget.share == 1.0 and score.budget.affordable(256) == 256


@pytest.mark.parametrize("m", [1, 5, 9])
def test_the_reported_standard_error_matches_the_spread_of_the_estimates(m):
    """Batches of 10 arrivals scored by a random m (recorded with weight 10/m): the standard error
    the score reports (finite-population corrected) matches how much the estimates really vary."""
    rng = np.random.default_rng(m)
    hits = rng.random((60, 10)) < 0.7  # the fixed population: which of 600 arrivals the model gets right
    estimates, stderrs = [], []
    for _ in range(400):
        score = PrequentialScore()
        for batch in hits:
            chosen = set(rng.choice(10, size=m, replace=False).tolist())
            for i, hit in enumerate(batch):
                if i in chosen:
                    score.record(1 if hit else 0, 1, weight=10 / m)
                else:
                    score.count(1)
            score.sampled(10, m)
        estimates.append(score.accuracy)
        stderrs.append(score.stderr())
    assert np.mean(estimates) == pytest.approx(hits.mean(), abs=0.01)
    assert np.mean(stderrs) == pytest.approx(np.std(estimates), rel=0.2)
