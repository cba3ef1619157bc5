"""Wire framing: one msgpack message per ZeroMQ frame, and the error every decoder raises.

Control, snapshot and inference messages are plain msgpack maps (:func:`pack` / :func:`unpack`);
snapshot announcements travel under :data:`SNAPSHOT_TOPIC`. Decoders that validate what they read
(samples, arrays: ``transports.arrays``) raise only :class:`Rejected`, which carries one of the
:class:`ferretd.messages.RejectReason` values so the caller can count it.

msgpack and the standard library only (no numpy, no zmq): the control client and ``ferretctl``
import this module and must start fast.
"""

from __future__ import annotations

from typing import Any

import msgpack

from ferretd.messages import RejectReason

SNAPSHOT_TOPIC = b"snapshot"
"""The PUB topic of snapshot announcements: ``[SNAPSHOT_TOPIC, pack(manifest)]``."""


class Rejected(ValueError):
    """A message that failed validation; ``reason`` names the counter it belongs to."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def short_repr(value: Any, limit: int = 40) -> str:
    """A bounded repr for error details (hostile values can be megabytes long)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def pack(obj: Any) -> bytes:
    """msgpack for control, snapshot and inference messages (plain mappings)."""
    frame = msgpack.packb(obj, use_bin_type=True)
    if not isinstance(frame, bytes):  # packb without a stream always returns bytes
        raise TypeError(f"msgpack returned {type(frame).__name__}, expected bytes")
    return frame


def unpack(frame: bytes) -> Any:
    """Inverse of :func:`pack`; raises ``ValueError`` on garbage."""
    try:
        return msgpack.unpackb(frame, raw=False)
    except Exception as exc:
        raise ValueError(f"not a msgpack message: {type(exc).__name__}") from None


def unpack_strict(frame: bytes) -> Any:
    """:func:`unpack` for untrusted sample frames: string map keys only; raises ``Rejected``."""
    try:
        return msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types on garbage
        raise Rejected(RejectReason.MALFORMED, f"not msgpack: {type(exc).__name__}") from None
