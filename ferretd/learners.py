"""Chooses the learner for a config: the sequential SGD learner for one stage and one worker,
the Ferret pipeline engine otherwise."""

from __future__ import annotations

from ferretd.config import Config
from ferretd.engine.learner import OnlineLearner
from ferretd.engine.sequential import SequentialLearner
from ferretd.models import build_model


def make_learner(config: Config) -> OnlineLearner:
    model = build_model(config.model, seed=config.training.seed)
    pipeline = config.pipeline
    if pipeline.plan == "manual" and pipeline.stages == 1 and pipeline.workers == 1:
        return SequentialLearner(model, config.training)
    raise NotImplementedError("the pipeline engine is not wired into the daemon yet; use stages = 1, workers = 1")
