"""Plain-data schemas shared by the daemon, the transports and the clients (stdlib only).

Every message that crosses a process boundary is described here: the labeled sample a device
sends, the snapshot manifest the trainer publishes, and the control request/reply pair that
``ferretctl`` speaks. Wire encoding lives in ``transports.codec``; this module only fixes the
field names, the schema version and the reasons a message can be rejected for.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1
"""Version of the sample envelope; a decoder rejects any other value as ``unknown_version``."""

MANIFEST_VERSION = 1


class RejectReason(enum.StrEnum):
    """Why an incoming sample was not accepted. Each reason has its own counter."""

    MALFORMED = "malformed"
    UNKNOWN_VERSION = "unknown_version"
    WRONG_SHAPE = "wrong_shape"
    WRONG_DTYPE = "wrong_dtype"
    NON_FINITE = "non_finite"
    TOO_LARGE = "too_large"
    BAD_LABEL = "bad_label"


class DropReason(enum.StrEnum):
    """Why an accepted sample was discarded before it was trained on."""

    QUEUE_FULL = "queue_full"
    SHUTDOWN = "shutdown"
    ENGINE = "engine"


@dataclass(frozen=True, slots=True)
class Sample:
    """One labeled observation from one device.

    ``features`` is the decoded array (numpy in practice; the type is left open so that this
    module stays free of third-party imports). ``received_at`` is the daemon's monotonic clock
    when the frame arrived, used to measure the delay until the sample is trained on.
    """

    device: str
    seq: int
    timestamp: float
    features: Any
    label: int
    received_at: float = 0.0


@dataclass(frozen=True, slots=True)
class SnapshotManifest:
    """Describes one exported ONNX snapshot. Written next to the model as JSON and announced."""

    seq: int
    created_at: float
    file: str
    sha256: str
    size_bytes: int
    opset: int
    input_name: str
    input_shape: list[int]
    input_dtype: str
    output_names: list[str]
    classes: int
    updates: int
    samples_trained: int
    online_accuracy: float | None
    model: str
    manifest_version: int = MANIFEST_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SnapshotManifest:
        if not isinstance(data, dict):
            raise ValueError("manifest must be a mapping")
        version = data.get("manifest_version", MANIFEST_VERSION)
        if version != MANIFEST_VERSION:
            raise ValueError(f"unsupported manifest_version {version!r}")
        known = {f for f in cls.__dataclass_fields__}
        missing = known - set(data) - {"manifest_version", "extra"}
        if missing:
            raise ValueError(f"manifest lacks {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """A control command: ``{"cmd": "status", "args": {...}}`` on the wire."""

    cmd: str
    args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"cmd": self.cmd, "args": dict(self.args)}

    @classmethod
    def from_dict(cls, data: Any) -> ControlRequest:
        if not isinstance(data, dict) or not isinstance(data.get("cmd"), str):
            raise ValueError("control request must be a mapping with a string 'cmd'")
        args = data.get("args") or {}
        if not isinstance(args, dict):
            raise ValueError("control request 'args' must be a mapping")
        return cls(cmd=data["cmd"], args=args)


@dataclass(frozen=True, slots=True)
class ControlReply:
    """Answer to a control command: ``ok`` with a ``result`` mapping, or an ``error`` line."""

    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "result": self.result, "error": self.error}

    @classmethod
    def from_dict(cls, data: Any) -> ControlReply:
        if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
            raise ValueError("control reply must be a mapping with a boolean 'ok'")
        return cls(ok=data["ok"], result=data.get("result") or {}, error=data.get("error"))
