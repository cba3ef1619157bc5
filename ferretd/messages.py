"""Plain-data schemas shared by the daemon, the transports and the clients (stdlib only).

Every message that crosses a process boundary is described here: the labeled sample a device
sends, the snapshot manifest the trainer publishes, and the control request/reply pair that
``ferretctl`` speaks. Wire encoding lives in ``transports.codec``; this module only fixes the
field names, the schema version and the reasons a message can be rejected for.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1
"""Version of the sample envelope; a decoder rejects any other value as ``unknown_version``."""

MANIFEST_VERSION = 1

U63 = (1 << 63) - 1
"""Largest sequence number or counter a manifest may carry (fits every int64 and msgpack)."""

MANIFEST_LIMITS = {
    "max_rank": 8,
    "max_dim": 1 << 20,
    "max_elements": 1 << 22,  # ferret-infer's warm-up allocates 2 x this many float32
    "max_classes": 1 << 16,
    "max_size_bytes": 1 << 30,
    "max_text": 256,
}
"""Bounds :meth:`SnapshotManifest.from_dict` enforces on every field a peer or a file can set."""

_PLAIN_FILE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def is_plain_file_name(name: object) -> bool:
    """A bare file name: no directory part, no ``..``, not hidden, not absolute, no odd bytes."""
    return isinstance(name, str) and bool(_PLAIN_FILE_RE.match(name)) and ".." not in name


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
    def from_dict(cls, data: Any) -> SnapshotManifest:
        """Validate every field (type, range, plain file name); ``ValueError`` naming the field.

        A manifest comes from a socket or a file, so nothing in it is trusted: ``file`` must be a
        plain name (the reader joins it to its own snapshot directory), sizes and shapes are
        bounded (:data:`MANIFEST_LIMITS`), integers are real ints (``True`` is not 1).
        """
        if not isinstance(data, dict):
            raise ValueError("manifest must be a mapping")
        version = data.get("manifest_version", MANIFEST_VERSION)
        if type(version) is not int or version != MANIFEST_VERSION:
            raise ValueError(f"unsupported manifest_version {_short(version)}")
        known = {f for f in cls.__dataclass_fields__}
        missing = known - set(data) - {"manifest_version", "extra"}
        if missing:
            raise ValueError(f"manifest lacks {sorted(missing)}")
        fields = {k: v for k, v in data.items() if k in known}
        _check_manifest_fields(fields)
        return cls(**fields)


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


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int_field(fields: dict[str, Any], name: str, low: int, high: int) -> None:
    value = fields[name]
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"manifest {name}: must be an integer in [{low}, {high}], got {_short(value)}")


def _text_field(fields: dict[str, Any], name: str) -> None:
    value = fields[name]
    if not isinstance(value, str) or not 0 < len(value) <= MANIFEST_LIMITS["max_text"]:
        raise ValueError(f"manifest {name}: must be a non-empty string of at most 256 characters")


def _check_manifest_fields(f: dict[str, Any]) -> None:
    if not is_plain_file_name(f["file"]):
        raise ValueError("manifest file: must be a plain file name (no directory, no '..')")
    if not isinstance(f["sha256"], str) or not _SHA256_RE.match(f["sha256"]):
        raise ValueError("manifest sha256: must be 64 lowercase hex digits")
    _int_field(f, "seq", 1, U63)
    _int_field(f, "size_bytes", 1, MANIFEST_LIMITS["max_size_bytes"])
    _int_field(f, "opset", 1, 100)
    _int_field(f, "classes", 2, MANIFEST_LIMITS["max_classes"])
    _int_field(f, "updates", 0, U63)
    _int_field(f, "samples_trained", 0, U63)
    for name in ("input_name", "input_dtype", "model"):
        _text_field(f, name)
    if f["input_dtype"] != "float32":
        raise ValueError(f"manifest input_dtype: only float32 is served, got {_short(f['input_dtype'])}")
    shape = f["input_shape"]
    if (
        not isinstance(shape, list | tuple)
        or not 0 < len(shape) <= MANIFEST_LIMITS["max_rank"]
        or any(type(d) is not int or not 0 < d <= MANIFEST_LIMITS["max_dim"] for d in shape)
        or math.prod(shape) > MANIFEST_LIMITS["max_elements"]
    ):
        raise ValueError(
            f"manifest input_shape: must be 1-8 dimensions, at most {MANIFEST_LIMITS['max_elements']} elements in all"
        )
    f["input_shape"] = list(shape)
    names = f["output_names"]
    if (
        not isinstance(names, list | tuple)
        or not 0 < len(names) <= 16
        or not all(isinstance(n, str) and 0 < len(n) <= MANIFEST_LIMITS["max_text"] for n in names)
    ):
        raise ValueError("manifest output_names: must be a list of 1-16 short strings")
    f["output_names"] = list(names)
    for name in ("created_at", "online_accuracy"):
        value = f[name]
        if value is None and name == "online_accuracy":
            continue
        if type(value) not in (int, float) or not math.isfinite(value):
            raise ValueError(f"manifest {name}: must be a finite number, got {_short(value)}")
    if f["online_accuracy"] is not None and not 0.0 <= f["online_accuracy"] <= 1.0:
        raise ValueError("manifest online_accuracy: must be in [0, 1]")
    if not isinstance(f.get("extra", {}), dict):
        raise ValueError("manifest extra: must be a mapping")
