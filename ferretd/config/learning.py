"""Configuration sections of the learning side: model, training, pipeline, compensation, planner,
OCL and drift (one frozen dataclass per TOML section, embedded defaults, ``check()``).

:mod:`ferretd.config.schema` holds the service sections and the whole :class:`Config`; this
module is split from it only to keep each file small. Stdlib only (architecture rule 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from ferretd.config.validate import (
    ConfigError,
    at_least,
    choice,
    positive,
)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"
    input_shape: tuple[int, ...] = (64,)
    num_classes: int = 10
    hidden: tuple[int, ...] = (128, 64)
    channels: tuple[int, ...] = (8, 16)
    factory: str = ""
    factory_path: str = ""  # a directory put first on sys.path before importing the factory
    normalize: str = "running"
    normalize_decay: float = 0.0
    normalize_clip: float = 10.0

    def check(self) -> None:
        choice("model", "name", self.name, ("mlp", "convnet", "custom"))
        choice("model", "normalize", self.normalize, ("running", "none"))
        if not 0.0 <= self.normalize_decay < 1.0:
            raise ConfigError(f"[model] normalize_decay: must be in [0, 1) (0 = exact), got {self.normalize_decay}")
        if self.normalize_clip < 0:
            raise ConfigError(f"[model] normalize_clip: must be >= 0 (0 = no clipping), got {self.normalize_clip}")
        if not self.input_shape or any(d < 1 for d in self.input_shape):
            raise ConfigError(f"[model] input_shape: dimensions must be >= 1, got {list(self.input_shape)}")
        at_least("model", "num_classes", self.num_classes, 2)
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"[model] hidden: layer widths must be >= 1, got {list(self.hidden)}")
        if any(c < 1 for c in self.channels):
            raise ConfigError(f"[model] channels: must be >= 1, got {list(self.channels)}")
        if self.name == "custom" and ":" not in self.factory:
            raise ConfigError("[model] factory: name 'custom' needs factory = 'package.module:function'")
        if self.name == "convnet" and len(self.input_shape) != 3:
            raise ConfigError(
                f"[model] input_shape: convnet needs (channels, height, width), got {list(self.input_shape)}"
            )


@dataclass(frozen=True)
class TrainingConfig:
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    microbatch: int = 1
    seed: int = 0
    optimizer: str = "sgd"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    guard_loss_factor: float = 100.0
    guard_step_ratio: float = 1.0
    idle_flush_s: float = 1.0

    def check(self) -> None:
        positive("training", "lr", self.lr)
        choice("training", "optimizer", self.optimizer, ("sgd", "adam", "adagrad"))
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"[training] {key}: must be in [0, 1), got {getattr(self, key)}")
        positive("training", "eps", self.eps)
        for key in ("guard_loss_factor", "guard_step_ratio", "idle_flush_s"):
            if getattr(self, key) < 0:
                raise ConfigError(f"[training] {key}: must be >= 0 (0 = off), got {getattr(self, key)}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"[training] momentum: must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"[training] weight_decay: must be >= 0, got {self.weight_decay}")
        at_least("training", "microbatch", self.microbatch, 1)


@dataclass(frozen=True)
class PipelineConfig:
    """Hand-set pipeline shape; ``plan = "auto"`` lets the planner choose instead."""

    plan: str = "auto"
    stages: int = 1
    partition: tuple[int, ...] = ()
    workers: int = 1
    recompute: bool = False
    accumulation: int = 1
    omit_stages: tuple[int, ...] = ()
    executor: str = "realtime"

    def check(self) -> None:
        choice("pipeline", "plan", self.plan, ("manual", "auto"))
        at_least("pipeline", "stages", self.stages, 1)
        at_least("pipeline", "workers", self.workers, 1)
        at_least("pipeline", "accumulation", self.accumulation, 1)
        choice("pipeline", "executor", self.executor, ("realtime", "virtual", "process", "auto"))
        if self.partition and len(self.partition) != self.stages - 1:
            raise ConfigError(
                f"[pipeline] partition: {self.stages} stages need {self.stages - 1} cut points, "
                f"got {list(self.partition)}"
            )


@dataclass(frozen=True)
class CompensationConfig:
    """Stale-gradient compensation (ferretd/compensation). ``beta`` is the rate of the lambda
    fitter's statistics EMAs; ``nu``/``alpha``/``beta`` defaults are measured in
    tools/bench/bench_compensation.py (docs/benchmarks/compensation.md)."""

    method: str = "iter_fisher"
    lambda0: float = 0.04
    nu: float = 1e-4
    alpha: float = 0.9
    beta: float = 0.999
    eta_lambda: float = 0.0
    fit: str = "closed_form"
    scope: str = "stage"

    def check(self) -> None:
        choice(
            "compensation",
            "method",
            self.method,
            ("none", "step_aware", "gap_aware", "fisher", "iter_fisher"),
        )
        if self.lambda0 < 0:
            raise ConfigError(f"[compensation] lambda0: must be >= 0, got {self.lambda0}")
        if self.nu < 0:
            raise ConfigError(f"[compensation] nu: must be >= 0, got {self.nu}")
        if not 0.0 <= self.alpha < 1.0:
            raise ConfigError(f"[compensation] alpha: must be in [0, 1), got {self.alpha}")
        if not 0.0 <= self.beta < 1.0:
            raise ConfigError(f"[compensation] beta: must be in [0, 1), got {self.beta}")
        if self.eta_lambda < 0:
            raise ConfigError(f"[compensation] eta_lambda: must be >= 0, got {self.eta_lambda}")
        choice("compensation", "fit", self.fit, ("closed_form", "gradient"))
        choice("compensation", "scope", self.scope, ("stage", "tensor"))


@dataclass(frozen=True)
class PlannerConfig:
    """Planner knobs. ``arrival_interval_s`` is the expected t_d (0: the daemon measures it at
    ingest; before any sample, and for ``--plan-only``, plan for arrivals as fast as the model can
    train with ``max_workers`` workers); ``rate_decay`` is c * b * t_d, the adaptation-rate decay per
    microbatch interval (b = microbatch); ``action_overhead_s`` is the real-time engine's cost per lane action
    (negative: measure once and cache)."""

    memory_cap_bytes: int = 0
    safety_factor: float = 0.8
    replan_check_s: float = 5.0
    hysteresis: float = 0.15
    max_workers: int = 4
    max_stages: int = 4
    arrival_interval_s: float = 0.0
    rate_decay: float = 0.1
    action_overhead_s: float = -1.0

    def check(self) -> None:
        if self.arrival_interval_s < 0:
            raise ConfigError(
                f"[planner] arrival_interval_s: must be >= 0 (0 = measured at ingest), got {self.arrival_interval_s}"
            )
        if self.rate_decay < 0:
            raise ConfigError(f"[planner] rate_decay: must be >= 0, got {self.rate_decay}")
        if self.memory_cap_bytes < 0:
            raise ConfigError(f"[planner] memory_cap_bytes: must be >= 0 (0 = no cap), got {self.memory_cap_bytes}")
        if not 0.0 < self.safety_factor <= 1.0:
            raise ConfigError(f"[planner] safety_factor: must be in (0, 1], got {self.safety_factor}")
        positive("planner", "replan_check_s", self.replan_check_s)
        if not 0.0 <= self.hysteresis < 1.0:
            raise ConfigError(f"[planner] hysteresis: must be in [0, 1), got {self.hysteresis}")
        at_least("planner", "max_workers", self.max_workers, 1)
        at_least("planner", "max_stages", self.max_stages, 1)


@dataclass(frozen=True)
class OclConfig:
    """Online continual-learning method (ferretd/ocl): ``replay_*`` for er and mir, ``mir_*``,
    ``lwf_*``, ``mas_*`` for their method; ``*_refresh`` counts stream samples."""

    method: str = "vanilla"
    replay_bytes: int = 4 << 20
    replay_per_sample: int = 1
    mir_candidates: int = 50
    lwf_alpha: float = 1.0
    lwf_temperature: float = 2.0
    lwf_refresh: int = 1000
    mas_lambda: float = 1.0
    mas_refresh: int = 1000

    def check(self) -> None:
        choice("ocl", "method", self.method, OCL_METHOD_NAMES)
        at_least("ocl", "replay_bytes", self.replay_bytes, 0)
        at_least("ocl", "replay_per_sample", self.replay_per_sample, 0)
        at_least("ocl", "mir_candidates", self.mir_candidates, 1)
        if self.lwf_alpha < 0:
            raise ConfigError(f"[ocl] lwf_alpha: must be >= 0, got {self.lwf_alpha}")
        positive("ocl", "lwf_temperature", self.lwf_temperature)
        at_least("ocl", "lwf_refresh", self.lwf_refresh, 1)
        if self.mas_lambda < 0:
            raise ConfigError(f"[ocl] mas_lambda: must be >= 0, got {self.mas_lambda}")
        at_least("ocl", "mas_refresh", self.mas_refresh, 1)


#: The registered OCL methods (ferretd/ocl; a contract test keeps this list equal to the registry).
OCL_METHOD_NAMES = ("vanilla", "er", "mir", "lwf", "mas")


@dataclass(frozen=True)
class DriftConfig:
    """Drift detection on the online 0/1 error (ferretd/drift.py): Page-Hinkley with River's
    defaults (false alarms and delays measured in drift.py's docstring); ``reaction =
    "norm_decay"`` raises the normaliser's decay to ``reaction_decay`` for ``reaction_samples``
    arrivals after a detection (off by default)."""

    detector: str = "page_hinkley"
    delta: float = 0.005
    threshold: float = 50.0
    min_samples: int = 30
    alpha: float = 0.9999
    reaction: str = "none"
    reaction_decay: float = 0.01
    reaction_samples: int = 1000

    def check(self) -> None:
        choice("drift", "detector", self.detector, ("page_hinkley", "none"))
        if self.delta < 0:
            raise ConfigError(f"[drift] delta: must be >= 0, got {self.delta}")
        positive("drift", "threshold", self.threshold)
        at_least("drift", "min_samples", self.min_samples, 1)
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"[drift] alpha: must be in (0, 1], got {self.alpha}")
        choice("drift", "reaction", self.reaction, ("none", "norm_decay"))
        if not 0.0 < self.reaction_decay < 1.0:
            raise ConfigError(f"[drift] reaction_decay: must be in (0, 1), got {self.reaction_decay}")
        at_least("drift", "reaction_samples", self.reaction_samples, 1)
