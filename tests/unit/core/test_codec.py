"""Wire codec: round trip, every rejection reason, and fuzzing that only ever yields Rejected."""

from __future__ import annotations

import contextlib

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferretd.messages import RejectReason
from transports.codec import Rejected, SampleDecoder, encode_sample, pack_array, unpack_array

DECODER = SampleDecoder((64,), 10, 4096)


def frame(**changes) -> bytes:
    msg = {"v": 1, "device": "d", "seq": 3, "ts": 2.5, **pack_array(np.arange(64, dtype=np.float32)), "label": 4}
    msg.update(changes)
    return msgpack.packb({k: v for k, v in msg.items() if v is not ...}, use_bin_type=True)


def reason_of(data: bytes) -> RejectReason:
    with pytest.raises(Rejected) as info:
        DECODER.decode(data)
    return info.value.reason


def test_round_trip_keeps_every_field():
    features = np.linspace(-1, 1, 64, dtype=np.float32)
    sample = DECODER.decode(encode_sample("sensor-1", 41, features, 7, timestamp=12.5), received_at=3.0)
    assert (sample.device, sample.seq, sample.timestamp, sample.label, sample.received_at) == (
        "sensor-1",
        41,
        12.5,
        7,
        3.0,
    )
    np.testing.assert_array_equal(sample.features, features)
    assert sample.features.dtype == np.float32 and sample.features.flags.writeable


@pytest.mark.parametrize("dtype", ["<f8", ">f4", "<f2", "|u1", "<i2", ">i4"])
def test_numeric_dtypes_are_converted_to_float32(dtype):
    values = np.arange(64).astype(dtype)
    sample = DECODER.decode(frame(**pack_array(values)))
    np.testing.assert_array_equal(sample.features, values.astype(np.float32))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xc1", RejectReason.MALFORMED),
        (msgpack.packb("a string"), RejectReason.MALFORMED),
        (frame(device=""), RejectReason.MALFORMED),
        (frame(device="x" * 129), RejectReason.MALFORMED),
        (frame(seq=-1), RejectReason.MALFORMED),
        (frame(seq=True), RejectReason.MALFORMED),
        (frame(ts=float("nan")), RejectReason.MALFORMED),
        (frame(data=b"\x00" * 7), RejectReason.MALFORMED),
        (frame(data="text"), RejectReason.MALFORMED),
        (frame(v=2), RejectReason.UNKNOWN_VERSION),
        (frame(v=...), RejectReason.UNKNOWN_VERSION),
        (frame(**pack_array(np.zeros((8, 8), np.float32))), RejectReason.WRONG_SHAPE),
        (frame(shape=[-64]), RejectReason.WRONG_SHAPE),
        (frame(dtype="<c16"), RejectReason.WRONG_DTYPE),
        (frame(dtype="|b1"), RejectReason.WRONG_DTYPE),
        (frame(dtype="O"), RejectReason.WRONG_DTYPE),
        (frame(dtype=5), RejectReason.WRONG_DTYPE),
        (frame(**pack_array(np.full(64, np.nan, np.float32))), RejectReason.NON_FINITE),
        (frame(**pack_array(np.full(64, 1e300))), RejectReason.NON_FINITE),  # overflows float32
        (frame(label=10), RejectReason.BAD_LABEL),
        (frame(label=-1), RejectReason.BAD_LABEL),
        (frame(label=False), RejectReason.BAD_LABEL),
        (frame(label=...), RejectReason.BAD_LABEL),
        (b"\x00" * 4097, RejectReason.TOO_LARGE),
    ],
)
def test_each_rejection_has_its_reason(data, reason):
    assert reason_of(data) is reason


def test_array_larger_than_limit_is_too_large_before_allocation():
    with pytest.raises(Rejected) as info:
        unpack_array({"dtype": "<f4", "shape": [10**9], "data": b""}, max_bytes=1024)
    assert info.value.reason is RejectReason.TOO_LARGE


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_ever_raise_rejected(data):
    with contextlib.suppress(Rejected):
        DECODER.decode(data)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["v", "device", "seq", "ts", "dtype", "shape", "data", "label", "extra"]),
        st.one_of(
            st.none(),
            st.integers(-5, 70),
            st.text(max_size=5),
            st.binary(max_size=300),
            st.lists(st.integers(-2, 70), max_size=3),
        ),
    )
)
def test_random_envelopes_only_ever_raise_rejected(fields):
    with contextlib.suppress(Rejected):
        DECODER.decode(msgpack.packb(fields, use_bin_type=True))
