"""Configuration schema: one frozen dataclass per TOML section, with embedded defaults and ``check()``.

Every field has an embedded default, so ``ferretd`` runs with no file at all. A section's
``check()`` validates its own ranges through :mod:`ferretd.config.validate`; :class:`Config`
adds the cross-section checks. Loading and directory resolution live in
:mod:`ferretd.config.load`. Stdlib only (architecture rule 1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferretd.config.validate import (
    ConfigError,
    at_least,
    check_message_limits,
    check_tcp_security,
    choice,
    endpoint,
    positive,
)

# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DaemonConfig:
    runtime_dir: str = ""
    state_dir: str = ""
    log_level: str = "info"
    log_format: str = "auto"  # auto: console on a terminal, else JSON | json | console
    torch_threads: int = 1
    shutdown_timeout_s: float = 30.0

    def check(self) -> None:
        choice("daemon", "log_level", self.log_level, ("debug", "info", "warning", "error"))
        choice("daemon", "log_format", self.log_format, ("auto", "json", "console"))
        at_least("daemon", "torch_threads", self.torch_threads, 1)
        positive("daemon", "shutdown_timeout_s", self.shutdown_timeout_s)


@dataclass(frozen=True)
class IngestConfig:
    endpoint: str = ""
    queue_capacity: int = 4096
    overflow: str = "drop_oldest"
    max_message_bytes: int = 64 << 10
    max_devices: int = 10_000
    rcvhwm: int = 1000

    def check(self) -> None:
        endpoint("ingest", "endpoint", self.endpoint)
        at_least("ingest", "queue_capacity", self.queue_capacity, 1)
        choice("ingest", "overflow", self.overflow, ("drop_oldest", "drop_newest"))
        at_least("ingest", "max_message_bytes", self.max_message_bytes, 64)
        at_least("ingest", "max_devices", self.max_devices, 1)
        at_least("ingest", "rcvhwm", self.rcvhwm, 1)


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

    def check(self) -> None:
        positive("training", "lr", self.lr)
        choice("training", "optimizer", self.optimizer, ("sgd", "adam", "adagrad"))
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"[training] {key}: must be in [0, 1), got {getattr(self, key)}")
        positive("training", "eps", self.eps)
        for key in ("guard_loss_factor", "guard_step_ratio"):
            if getattr(self, key) < 0:
                raise ConfigError(f"[training] {key}: must be >= 0 (0 = off), got {getattr(self, key)}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"[training] momentum: must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"[training] weight_decay: must be >= 0, got {self.weight_decay}")
        at_least("training", "microbatch", self.microbatch, 1)


@dataclass(frozen=True)
class MetricsConfig:
    """``max_drop_share``: health is degraded when more than this share of the valid samples of the
    last ``drop_window_s`` seconds were dropped (1.0 turns the check off)."""

    window: int = 500
    max_drop_share: float = 0.5
    drop_window_s: float = 60.0
    listen: str = ""  # OpenMetrics endpoint, e.g. "127.0.0.1:9108"; empty = off
    history_every_s: float = 10.0  # one point of `ferretctl history` every this many seconds
    history_points: int = 720  # points kept (720 x 10 s = 2 h)

    def check(self) -> None:
        at_least("metrics", "window", self.window, 1)
        positive("metrics", "history_every_s", self.history_every_s)
        at_least("metrics", "history_points", self.history_points, 2)
        _, sep, port = self.listen.rpartition(":")
        if self.listen and not (sep and port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"[metrics] listen: expected HOST:PORT like 127.0.0.1:9108, got {self.listen!r}")
        if not 0.0 < self.max_drop_share <= 1.0:
            raise ConfigError(f"[metrics] max_drop_share: must be in (0, 1], got {self.max_drop_share}")
        positive("metrics", "drop_window_s", self.drop_window_s)


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


@dataclass(frozen=True)
class SnapshotConfig:
    every_updates: int = 200
    every_seconds: float = 10.0
    keep: int = 5
    opset: int = 17
    announce_endpoint: str = ""
    latest_endpoint: str = ""
    max_request_bytes: int = 4096
    rcvhwm: int = 16
    export: str = "ema"
    ema_decay: float = 0.995
    gate_window: int = 0  # promotion gate: held-back arrivals a periodic snapshot is judged on; 0 = off
    gate_tolerance: float = 0.02  # promote unless its accuracy is lower than the served one's by more

    def check(self) -> None:
        choice("snapshot", "export", self.export, ("latest", "ema"))
        at_least("snapshot", "gate_window", self.gate_window, 0)
        if not 0.0 <= self.gate_tolerance <= 1.0:
            raise ConfigError(f"[snapshot] gate_tolerance: must be in [0, 1], got {self.gate_tolerance}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"[snapshot] ema_decay: must be in (0, 1), got {self.ema_decay}")
        at_least("snapshot", "every_updates", self.every_updates, 0)
        if self.every_seconds < 0:
            raise ConfigError(f"[snapshot] every_seconds: must be >= 0, got {self.every_seconds}")
        at_least("snapshot", "keep", self.keep, 1)
        if not 13 <= self.opset <= 21:
            raise ConfigError(f"[snapshot] opset: must be between 13 and 21, got {self.opset}")
        endpoint("snapshot", "announce_endpoint", self.announce_endpoint)
        endpoint("snapshot", "latest_endpoint", self.latest_endpoint)
        at_least("snapshot", "max_request_bytes", self.max_request_bytes, 64)
        at_least("snapshot", "rcvhwm", self.rcvhwm, 1)


@dataclass(frozen=True)
class CheckpointConfig:
    every_updates: int = 500
    every_seconds: float = 60.0
    keep: int = 3

    def check(self) -> None:
        at_least("checkpoint", "every_updates", self.every_updates, 0)
        if self.every_seconds < 0:
            raise ConfigError(f"[checkpoint] every_seconds: must be >= 0, got {self.every_seconds}")
        at_least("checkpoint", "keep", self.keep, 1)


@dataclass(frozen=True)
class ControlConfig:
    endpoint: str = ""
    timeout_s: float = 5.0
    max_request_bytes: int = 65536
    rcvhwm: int = 16

    def check(self) -> None:
        endpoint("control", "endpoint", self.endpoint)
        positive("control", "timeout_s", self.timeout_s)
        at_least("control", "max_request_bytes", self.max_request_bytes, 64)
        at_least("control", "rcvhwm", self.rcvhwm, 1)


@dataclass(frozen=True)
class InferenceConfig:
    endpoint: str = ""
    snapshot_dir: str = ""
    intra_op_threads: int = 1
    max_request_bytes: int = 64 << 10
    rcvhwm: int = 64
    metrics_listen: str = ""  # ferret-infer's OpenMetrics endpoint, e.g. "127.0.0.1:9109"; empty = off

    def check(self) -> None:
        endpoint("inference", "endpoint", self.endpoint)
        _, sep, port = self.metrics_listen.rpartition(":")
        if self.metrics_listen and not (sep and port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"[inference] metrics_listen: expected HOST:PORT, got {self.metrics_listen!r}")
        at_least("inference", "intra_op_threads", self.intra_op_threads, 1)
        at_least("inference", "max_request_bytes", self.max_request_bytes, 64)
        at_least("inference", "rcvhwm", self.rcvhwm, 1)


@dataclass(frozen=True)
class SecurityConfig:
    """CURVE keys for tcp endpoints (see docs/security.md). ``server_secret_key_file`` is a
    ``ferretctl keygen`` secret certificate; clients whose public certificates lie in
    ``authorized_keys_dir`` may connect. ``client_secret_key_file`` / ``server_public_key_file``
    are what this process presents when it connects as a client (ferret-infer to the snapshot
    endpoints); empty means the server key pair itself."""

    server_secret_key_file: str = ""
    authorized_keys_dir: str = ""
    client_secret_key_file: str = ""
    server_public_key_file: str = ""
    insecure: bool = False

    @property
    def curve(self) -> bool:
        return bool(self.server_secret_key_file)

    def check(self) -> None:
        for key in ("server_secret_key_file", "client_secret_key_file", "server_public_key_file"):
            value = getattr(self, key)
            if value and not Path(value).expanduser().is_file():
                raise ConfigError(f"[security] {key}: no such file {value!r} (make one with ferretctl keygen)")
        if self.authorized_keys_dir and not Path(self.authorized_keys_dir).expanduser().is_dir():
            raise ConfigError(f"[security] authorized_keys_dir: no such directory {self.authorized_keys_dir!r}")
        if self.curve and not self.authorized_keys_dir:
            raise ConfigError("[security] authorized_keys_dir: needed with server_secret_key_file (allowed clients)")


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    compensation: CompensationConfig = field(default_factory=CompensationConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    ocl: OclConfig = field(default_factory=OclConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)

    def check(self) -> None:
        check_tcp_security(self)
        check_message_limits(self)

    # Resolved locations (always absolute after load_config).
    @property
    def runtime_dir(self) -> Path:
        return Path(self.daemon.runtime_dir)

    @property
    def state_dir(self) -> Path:
        return Path(self.daemon.state_dir)

    @property
    def snapshot_dir(self) -> Path:
        return Path(self.inference.snapshot_dir)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
