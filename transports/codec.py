"""The former home of the wire format, kept so existing import lines keep working.

msgpack framing now lives in :mod:`transports.wire` (no numpy) and arrays, the strict decoder and
the sample envelope in :mod:`transports.arrays`; new code imports from those two.
"""

from __future__ import annotations

from transports.arrays import (
    DEFAULT_MAX_ARRAY_BYTES,
    DTYPES,
    MAX_DEVICE_ID_CHARS,
    MAX_RANK,
    MAX_SEQ,
    SampleDecoder,
    decode_array,
    encode_sample,
    pack_array,
    unpack_array,
)
from transports.wire import Rejected, pack, unpack

__all__ = [
    "DEFAULT_MAX_ARRAY_BYTES",
    "DTYPES",
    "MAX_DEVICE_ID_CHARS",
    "MAX_RANK",
    "MAX_SEQ",
    "Rejected",
    "SampleDecoder",
    "decode_array",
    "encode_sample",
    "pack",
    "pack_array",
    "unpack",
    "unpack_array",
]
