"""Wire format: msgpack envelopes for samples, arrays as dtype + shape + raw bytes.

A sample on the wire is one msgpack map (one ZeroMQ frame)::

    {"v": 1, "device": "sensor-7", "seq": 42, "ts": 1732200000.5,
     "dtype": "<f4", "shape": [64], "data": <raw bytes>, "label": 3}

``dtype`` is a numpy type string; little- and big-endian integers and floats are accepted and
converted to float32. Decoding validates everything and raises :class:`Rejected` with one of
the :class:`ferretd.messages.RejectReason` values, so the caller can count it by reason.

Besides msgpack this module uses numpy (not torch): the transports stay free of the training
core (architecture rule 2).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

from ferretd.messages import SCHEMA_VERSION, RejectReason, Sample

ACCEPTED_KINDS = frozenset("fiu")  # float, signed int, unsigned int
MAX_DEVICE_ID_CHARS = 128


class Rejected(ValueError):
    """A message that failed validation; ``reason`` names the counter it belongs to."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- arrays


def pack_array(array: np.ndarray) -> dict[str, Any]:
    """An array as a msgpack-friendly mapping (used for samples and prediction requests)."""
    array = np.ascontiguousarray(array)
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": array.tobytes()}


def unpack_array(obj: Any, *, max_bytes: int | None = None) -> np.ndarray:
    """Inverse of :func:`pack_array`, validating dtype, shape and the byte count."""
    if not isinstance(obj, dict):
        raise Rejected(RejectReason.MALFORMED, "array must be a mapping")
    return _array_from(obj.get("dtype"), obj.get("shape"), obj.get("data"), max_bytes=max_bytes)


def _array_from(dtype_str: Any, shape: Any, data: Any, *, max_bytes: int | None) -> np.ndarray:
    if not isinstance(dtype_str, str):
        raise Rejected(RejectReason.WRONG_DTYPE, f"dtype must be a string, got {type(dtype_str).__name__}")
    try:
        dtype = np.dtype(dtype_str)
    except TypeError:
        raise Rejected(RejectReason.WRONG_DTYPE, f"unknown dtype {dtype_str!r}") from None
    if dtype.kind not in ACCEPTED_KINDS or dtype.itemsize > 8 or dtype.fields is not None:
        raise Rejected(RejectReason.WRONG_DTYPE, f"dtype {dtype_str!r} is not a real number type")
    if not isinstance(shape, list | tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise Rejected(RejectReason.WRONG_SHAPE, f"shape must be a list of non-negative ints, got {shape!r}")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise Rejected(RejectReason.MALFORMED, "data must be raw bytes")
    count = math.prod(shape)
    if max_bytes is not None and count * dtype.itemsize > max_bytes:
        raise Rejected(RejectReason.TOO_LARGE, f"array of {count * dtype.itemsize} bytes exceeds {max_bytes}")
    if len(data) != count * dtype.itemsize:
        raise Rejected(
            RejectReason.MALFORMED,
            f"data has {len(data)} bytes, shape {list(shape)} of {dtype_str} needs {count * dtype.itemsize}",
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


# --------------------------------------------------------------------------- samples


def encode_sample(
    device: str,
    seq: int,
    features: np.ndarray,
    label: int,
    timestamp: float | None = None,
) -> bytes:
    """One sample as a single frame, ready for ``socket.send``."""
    envelope = {
        "v": SCHEMA_VERSION,
        "device": device,
        "seq": int(seq),
        "ts": time.time() if timestamp is None else float(timestamp),
        **pack_array(np.asarray(features)),
        "label": int(label),
    }
    return msgpack.packb(envelope, use_bin_type=True)


class SampleDecoder:
    """Validates frames against the configured input shape, class count and size limit."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, max_message_bytes: int) -> None:
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.max_message_bytes = int(max_message_bytes)

    def decode(self, frame: bytes, received_at: float = 0.0) -> Sample:
        if len(frame) > self.max_message_bytes:
            raise Rejected(RejectReason.TOO_LARGE, f"frame of {len(frame)} bytes exceeds {self.max_message_bytes}")
        try:
            msg = msgpack.unpackb(frame, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises many types on garbage
            raise Rejected(RejectReason.MALFORMED, f"not msgpack: {type(exc).__name__}") from None
        if not isinstance(msg, dict):
            raise Rejected(RejectReason.MALFORMED, "envelope must be a map")
        version = msg.get("v")
        if version != SCHEMA_VERSION:
            raise Rejected(RejectReason.UNKNOWN_VERSION, f"schema version {version!r}, expected {SCHEMA_VERSION}")
        device, seq, ts = msg.get("device"), msg.get("seq"), msg.get("ts")
        if not isinstance(device, str) or not 0 < len(device) <= MAX_DEVICE_ID_CHARS:
            raise Rejected(RejectReason.MALFORMED, "device must be a non-empty string of at most 128 chars")
        if type(seq) is not int or seq < 0:
            raise Rejected(RejectReason.MALFORMED, f"seq must be a non-negative integer, got {seq!r}")
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
            raise Rejected(RejectReason.MALFORMED, f"ts must be a finite number, got {ts!r}")
        shape = msg.get("shape")
        array = _array_from(msg.get("dtype"), shape, msg.get("data"), max_bytes=None)
        if tuple(array.shape) != self.input_shape:
            raise Rejected(RejectReason.WRONG_SHAPE, f"shape {list(array.shape)}, expected {list(self.input_shape)}")
        if array.dtype == np.float32:
            features = array.copy()
        else:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is caught just below
                features = array.astype(np.float32)
        if not np.isfinite(features).all():
            raise Rejected(RejectReason.NON_FINITE, "features contain NaN or Inf")
        label = msg.get("label")
        if type(label) is not int or not 0 <= label < self.num_classes:
            raise Rejected(
                RejectReason.BAD_LABEL, f"label must be an integer in [0, {self.num_classes}), got {label!r}"
            )
        return Sample(
            device=device, seq=seq, timestamp=float(ts), features=features, label=label, received_at=received_at
        )


# --------------------------------------------------------------------------- generic messages


def pack(obj: Any) -> bytes:
    """msgpack for control, snapshot and inference messages (plain mappings)."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(frame: bytes) -> Any:
    """Inverse of :func:`pack`; raises ``ValueError`` on garbage."""
    try:
        return msgpack.unpackb(frame, raw=False)
    except Exception as exc:
        raise ValueError(f"not a msgpack message: {type(exc).__name__}") from None
