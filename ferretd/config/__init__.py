"""Daemon configuration: frozen dataclasses loaded from TOML, validated with one clear line.

Every field has an embedded default, so ``ferretd`` runs with no file at all. A file only needs
the keys it changes. Unknown sections or keys, wrong types and out-of-range values raise
:class:`ConfigError` whose message names the key (``[ingest] queue_capacity: ...``); the CLI
prints that line and exits 2.

Directories follow systemd: ``$RUNTIME_DIRECTORY`` holds the ipc sockets and
``$STATE_DIRECTORY`` the snapshots and checkpoints. Without systemd the runtime directory is
``$XDG_RUNTIME_DIR/ferretd`` (else ``/tmp/ferretd-$UID``) and the state directory
``$XDG_STATE_HOME/ferretd`` (else ``~/.local/state/ferretd``). Endpoints left empty in the file
are derived from the runtime directory, which is how ``ferretctl`` finds the control socket.

The package: ``schema`` (the service sections and :class:`Config`), ``learning`` (the learning
sections), ``validate`` (ConfigError and the checks), ``load``
(TOML -> dataclasses -> resolved directories), ``live`` (what a reload changes: :func:`diff_live`).
Stdlib only (architecture rule 1).
"""

from __future__ import annotations

from ferretd.config.learning import (
    OCL_METHOD_NAMES,
    CompensationConfig,
    DriftConfig,
    ModelConfig,
    OclConfig,
    PipelineConfig,
    PlannerConfig,
    TrainingConfig,
)
from ferretd.config.live import LiveDiff, diff_live
from ferretd.config.load import default_runtime_dir, default_state_dir, load_config, resolve_paths
from ferretd.config.schema import (
    CheckpointConfig,
    Config,
    ControlConfig,
    DaemonConfig,
    InferenceConfig,
    IngestConfig,
    MetricsConfig,
    SecurityConfig,
    SnapshotConfig,
)
from ferretd.config.validate import ENVELOPE_BYTES, ConfigError

__all__ = [
    "ENVELOPE_BYTES",
    "OCL_METHOD_NAMES",
    "CheckpointConfig",
    "CompensationConfig",
    "Config",
    "ConfigError",
    "ControlConfig",
    "DaemonConfig",
    "DriftConfig",
    "InferenceConfig",
    "IngestConfig",
    "LiveDiff",
    "MetricsConfig",
    "ModelConfig",
    "OclConfig",
    "PipelineConfig",
    "PlannerConfig",
    "SecurityConfig",
    "SnapshotConfig",
    "TrainingConfig",
    "default_runtime_dir",
    "default_state_dir",
    "diff_live",
    "load_config",
    "resolve_paths",
]
