"""Turns a config into a plan and a learner.

``[pipeline] plan = "manual"`` builds the plan from the ``[pipeline]`` keys (P stages cut evenly
unless ``partition`` is given, N workers, the knobs); ``"auto"`` asks the planner for the plan
that maximises the predicted adaptation rate within the memory headroom. A plan with one stage, one
active worker and no OCL method runs on the plain sequential SGD learner (bitwise the same math, no threads);
anything else runs on the Ferret pipeline engine. Both get the configured input normaliser
(``[model] normalize``) and, with ``[snapshot] export = "ema"``, a weight average to export.
"""

from __future__ import annotations

from ferretd.config import Config, ConfigError
from ferretd.engine.learner import OnlineLearner, ema_decay_for
from ferretd.engine.plan import Plan
from ferretd.engine.sequential import SequentialLearner
from ferretd.models import build_model
from ferretd.models.normalize import make_norm_for


def default_devices(stages: int) -> tuple[str, ...]:
    """Stage j on cuda:(j mod GPUs) when GPUs exist, else everything on the CPU."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        count = torch.cuda.device_count()
        return tuple(f"cuda:{j % count}" for j in range(stages))
    return ("cpu",) * stages


def plan_from_config(config: Config) -> Plan:
    pipeline = config.pipeline
    if pipeline.plan == "auto":
        from ferretd.planner import plan_for_config

        return plan_for_config(config)
    num_blocks = len(build_model(config.model, seed=config.training.seed))
    if pipeline.stages > num_blocks:
        raise ConfigError(f"[pipeline] stages: the model has {num_blocks} blocks, cannot cut {pipeline.stages} stages")
    if any(j >= pipeline.stages for j in pipeline.omit_stages):
        raise ConfigError(f"[pipeline] omit_stages: stage indices must be < stages ({pipeline.stages})")
    partition = tuple(pipeline.partition) or Plan.even_partition(num_blocks, pipeline.stages)
    try:
        return Plan.uniform(
            num_blocks,
            partition,
            pipeline.workers,
            recompute=pipeline.recompute,
            accumulation=pipeline.accumulation,
            omit_stages=tuple(pipeline.omit_stages),
            devices=default_devices(pipeline.stages),
        )
    except ValueError as exc:
        raise ConfigError(f"[pipeline] partition: {exc}") from None


def is_sequential(plan: Plan, config: Config) -> bool:
    """Plain SGD suffices: one stage, one active worker, no OCL method (staleness is always 0)."""
    return plan.num_stages == 1 and len(plan.active_workers) == 1 and config.ocl.method == "vanilla"


def learner_kind(plan: Plan, config: Config) -> str:
    return "sequential" if is_sequential(plan, config) else "pipeline"


def make_learner(config: Config, plan: Plan | None = None) -> OnlineLearner:
    plan = plan or plan_from_config(config)
    if is_sequential(plan, config):
        return SequentialLearner(
            build_model(config.model, seed=config.training.seed),
            config.training,
            norm=make_norm_for(config),
            ema_decay=ema_decay_for(config),
        )
    from ferretd.engine.pipeline import PipelineLearner

    return PipelineLearner.from_config(config, plan)
