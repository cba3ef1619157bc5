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

from ferretd.config.learning import (
    CompensationConfig,
    DriftConfig,
    ModelConfig,
    OclConfig,
    PipelineConfig,
    PlannerConfig,
    TrainingConfig,
)
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
    decode_in: str = "process"

    def check(self) -> None:
        endpoint("ingest", "endpoint", self.endpoint)
        choice("ingest", "decode_in", self.decode_in, ("thread", "process"))
        at_least("ingest", "queue_capacity", self.queue_capacity, 1)
        choice("ingest", "overflow", self.overflow, ("drop_oldest", "drop_newest"))
        at_least("ingest", "max_message_bytes", self.max_message_bytes, 64)
        at_least("ingest", "max_devices", self.max_devices, 1)
        at_least("ingest", "rcvhwm", self.rcvhwm, 1)


@dataclass(frozen=True)
class MetricsConfig:
    """``max_drop_share``: health is degraded when more than this share of the valid samples of the
    last ``drop_window_s`` seconds were dropped (1.0 turns the check off). ``drop_scoring_share``:
    the most of the loop's time that scoring dropped arrivals may take while there are samples to
    train; beyond it a uniform random sample of them is scored and stands for the rest (1.0 scores
    every one exactly)."""

    window: int = 500
    max_drop_share: float = 0.5
    drop_scoring_share: float = 0.2
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
        if not 0.0 < self.drop_scoring_share <= 1.0:
            raise ConfigError(f"[metrics] drop_scoring_share: must be in (0, 1], got {self.drop_scoring_share}")
        positive("metrics", "drop_window_s", self.drop_window_s)


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
