"""numpy arrays on the wire: dtype + shape + raw bytes, the one strict decoder, and the sample
envelope that carries one array.

A sample on the wire is one msgpack map (one ZeroMQ frame)::

    {"v": 1, "device": "sensor-7", "seq": 42, "ts": 1732200000.5,
     "dtype": "<f4", "shape": [64], "data": <raw bytes>, "label": 3}

Every array on every socket (ingest samples, predict requests) goes through one strict decoder,
:func:`decode_array`: the dtype string must be one of :data:`DTYPES` (looked up in a dict, so
numpy never parses a hostile string), the rank is at most :data:`MAX_RANK`, every dimension is a
plain non-negative int, and the byte size implied by the shape is checked against the limit and
against the data before anything is allocated. Decoding raises only :class:`Rejected`, carrying
one of the :class:`ferretd.messages.RejectReason` values so the caller can count it: an
unexpected exception inside the decoder is turned into a ``malformed`` rejection too.
``seq`` is an unsigned 64-bit integer; ``v`` must be the int 1 (not ``true`` or ``1.0``).

The only transports module that imports numpy (not torch: architecture rule 2); msgpack framing
is ``transports.wire``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ferretd.messages import SCHEMA_VERSION, RejectReason, Sample
from transports.wire import Rejected, pack, short_repr, unpack_strict

MAX_DEVICE_ID_CHARS = 128
MAX_RANK = 8
MAX_SEQ = 2**64 - 1
DEFAULT_MAX_ARRAY_BYTES = 64 << 20
_NUMERIC = ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8")
DTYPES: dict[str, np.dtype[Any]] = {
    f"{order}{code}": np.dtype(f"{order}{code}")
    for code in _NUMERIC
    for order in ("<", ">", *(("|",) if code.endswith("1") else ()))
}
"""The accepted dtype names: little/big-endian floats (2, 4, 8 bytes) and integers, ``|`` for bytes."""

Float32Array = npt.NDArray[np.float32]
"""What clients hand out: class probabilities as received."""
ArrayLike = npt.ArrayLike
"""What clients accept as features: an array, or anything numpy turns into one."""


def as_float32(values: ArrayLike) -> Float32Array:
    """``values`` (an array, a list of floats) as a float32 array."""
    return np.asarray(values, dtype=np.float32)


# --------------------------------------------------------------------------- arrays


def pack_array(array: npt.ArrayLike) -> dict[str, Any]:
    """An array as a msgpack-friendly mapping (used for samples and prediction requests)."""
    array = np.asarray(array, order="C")  # not ascontiguousarray: that turns a 0-d array into shape (1,)
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": array.tobytes()}


def unpack_array(obj: Any, *, max_bytes: int = DEFAULT_MAX_ARRAY_BYTES) -> npt.NDArray[Any]:
    """Inverse of :func:`pack_array` through :func:`decode_array`; raises only :class:`Rejected`."""
    if not isinstance(obj, dict):
        raise Rejected(RejectReason.MALFORMED, "array must be a mapping")
    return decode_array(obj.get("dtype"), obj.get("shape"), obj.get("data"), max_bytes=max_bytes)


def decode_array(dtype_name: Any, shape: Any, data: Any, *, max_bytes: int) -> npt.NDArray[Any]:
    """The one strict array decoder (read-only view on ``data``); raises only :class:`Rejected`."""
    try:
        return _decode_array(dtype_name, shape, data, max_bytes)
    except Rejected:
        raise
    except Exception as exc:  # a bug or a numpy surprise: still a counted rejection, never a traceback
        raise Rejected(RejectReason.MALFORMED, f"array not decodable: {type(exc).__name__}") from None


def _decode_array(dtype_name: Any, shape: Any, data: Any, max_bytes: int) -> npt.NDArray[Any]:
    if type(dtype_name) is not str:
        raise Rejected(RejectReason.WRONG_DTYPE, f"dtype must be a string, got {type(dtype_name).__name__}")
    dtype = DTYPES.get(dtype_name)
    if dtype is None:
        raise Rejected(RejectReason.WRONG_DTYPE, f"dtype {short_repr(dtype_name)} is not one of {' '.join(DTYPES)}")
    if type(shape) not in (list, tuple):
        raise Rejected(RejectReason.WRONG_SHAPE, f"shape must be a list, got {type(shape).__name__}")
    if len(shape) > MAX_RANK:
        raise Rejected(RejectReason.WRONG_SHAPE, f"rank {len(shape)} exceeds {MAX_RANK}")
    max_items = max_bytes // dtype.itemsize
    count = 1
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise Rejected(RejectReason.WRONG_SHAPE, f"shape must be non-negative ints, got {short_repr(shape)}")
        if dim > max_items:
            raise Rejected(RejectReason.TOO_LARGE, f"dimension {dim} exceeds {max_items} items of {dtype_name}")
        count *= dim  # every factor <= max_items, so the product stays a small bignum at worst
    if count > max_items:
        raise Rejected(RejectReason.TOO_LARGE, f"array of {count * dtype.itemsize} bytes exceeds {max_bytes}")
    if type(data) not in (bytes, bytearray):
        raise Rejected(RejectReason.MALFORMED, "data must be raw bytes")
    if len(data) != count * dtype.itemsize:
        raise Rejected(
            RejectReason.MALFORMED,
            f"data has {len(data)} bytes, shape {list(shape)} of {dtype_name} needs {count * dtype.itemsize}",
        )
    return np.frombuffer(data, dtype=dtype).reshape(tuple(shape))


# --------------------------------------------------------------------------- samples


def encode_sample(
    device: str,
    seq: int,
    features: npt.ArrayLike,
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
    return pack(envelope)


class SampleDecoder:
    """Validates frames against the configured input shape, class count and size limit.

    :meth:`decode` returns a :class:`Sample` or raises :class:`Rejected`; nothing else escapes.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, max_message_bytes: int) -> None:
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.max_message_bytes = int(max_message_bytes)

    def decode(self, frame: bytes, received_at: float = 0.0) -> Sample:
        try:
            return self._decode(frame, received_at)
        except Rejected:
            raise
        except Exception as exc:  # whatever slipped past the checks is still counted, by name
            raise Rejected(RejectReason.MALFORMED, f"undecodable frame: {type(exc).__name__}") from None

    def _decode(self, frame: bytes, received_at: float) -> Sample:
        if len(frame) > self.max_message_bytes:
            raise Rejected(RejectReason.TOO_LARGE, f"frame of {len(frame)} bytes exceeds {self.max_message_bytes}")
        msg = unpack_strict(frame)
        if not isinstance(msg, dict):
            raise Rejected(RejectReason.MALFORMED, "envelope must be a map")
        version = msg.get("v")
        if type(version) is not int or version != SCHEMA_VERSION:
            raise Rejected(
                RejectReason.UNKNOWN_VERSION,
                f"schema version {short_repr(version)}, expected the integer {SCHEMA_VERSION}",
            )
        device, seq = msg.get("device"), msg.get("seq")
        ts: Any = msg.get("ts")
        if type(device) is not str or not 0 < len(device) <= MAX_DEVICE_ID_CHARS:
            raise Rejected(RejectReason.MALFORMED, "device must be a non-empty string of at most 128 chars")
        if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
            raise Rejected(RejectReason.MALFORMED, f"seq must be an integer in [0, 2**64), got {short_repr(seq)}")
        if type(ts) not in (int, float) or not math.isfinite(ts):
            raise Rejected(RejectReason.MALFORMED, f"ts must be a finite number, got {short_repr(ts)}")
        array = decode_array(msg.get("dtype"), msg.get("shape"), msg.get("data"), max_bytes=self.max_message_bytes)
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
                RejectReason.BAD_LABEL,
                f"label must be an integer in [0, {self.num_classes}), got {short_repr(label)}",
            )
        return Sample(
            device=device, seq=seq, timestamp=float(ts), features=features, label=label, received_at=received_at
        )


def rows_from_bytes(blob: bytes, count: int, shape: Sequence[int]) -> list[Float32Array]:
    """``count`` float32 arrays of ``shape`` packed back to back in ``blob`` (each its own copy, so a
    queued row never keeps the whole batch alive). Raises ``ValueError`` when the sizes disagree."""
    size = 4 * math.prod(shape)
    if len(blob) != count * size:
        raise ValueError(f"{len(blob)} feature bytes for {count} samples of {size}")
    if not count:
        return []
    rows = np.frombuffer(blob, dtype=np.float32).reshape(count, *shape)
    return [row.copy() for row in rows]

