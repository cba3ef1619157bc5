"""The one strict array decoder (transports.codec.decode_array) and the sample envelope around it:
only Rejected ever escapes, hostile dtype/shape/seq/version values from issue 10 are refused by
reason before numpy parses or allocates anything, and every valid array round-trips."""

from __future__ import annotations

import contextlib

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferretd.messages import RejectReason
from transports.codec import (
    DTYPES,
    MAX_RANK,
    MAX_SEQ,
    Rejected,
    SampleDecoder,
    decode_array,
    encode_sample,
    pack_array,
    unpack_array,
)

DECODER = SampleDecoder((64,), 10, 4096)
LIMIT = 1 << 16


def envelope(**changes) -> bytes:
    msg = {"v": 1, "device": "d", "seq": 3, "ts": 2.5, **pack_array(np.arange(64, dtype=np.float32)), "label": 4}
    msg.update(changes)
    return msgpack.packb(msg, use_bin_type=True)


def reason(fn, *args, **kwargs) -> RejectReason:
    with pytest.raises(Rejected) as info:
        fn(*args, **kwargs)
    return info.value.reason


# --------------------------------------------------------------------------- the frames


@pytest.mark.parametrize(
    "dtype",
    [
        "(1,2f4",
        "(-1,)f4",
        "f4," * 20_000,
        "(2,)<f4",
        "<f4,<f4",
        "O",
        "V8",
        "S4",
        "<U4",
        "<M8[s]",
        "b",
        "?",
        "<c8",
        "<f16",
        "float32",
        "f4",
        "d",
        "=f4",
        "<f4 ",
        "",
        "[('a', '<f4')]",
    ],
)
def test_dtype_outside_the_whitelist_is_wrong_dtype(dtype):
    assert reason(decode_array, dtype, [1], b"\x00" * 4, max_bytes=LIMIT) is RejectReason.WRONG_DTYPE


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ([1] * (MAX_RANK + 1), RejectReason.WRONG_SHAPE),
        ([1] * 65, RejectReason.WRONG_SHAPE),
        ([0, 2**64 - 1], RejectReason.TOO_LARGE),
        ([2**63, 0], RejectReason.TOO_LARGE),
        ([LIMIT, LIMIT], RejectReason.TOO_LARGE),
        ([-1], RejectReason.WRONG_SHAPE),
        ([1.0], RejectReason.WRONG_SHAPE),
        ([True], RejectReason.WRONG_SHAPE),
        (["1"], RejectReason.WRONG_SHAPE),
        ("64", RejectReason.WRONG_SHAPE),
        ({"a": 1}, RejectReason.WRONG_SHAPE),
        (None, RejectReason.WRONG_SHAPE),
    ],
)
def test_hostile_shapes_are_refused_before_allocation(shape, expected):
    assert reason(decode_array, "<f4", shape, b"", max_bytes=LIMIT) is expected


def test_data_must_match_the_shape_exactly():
    assert reason(decode_array, "<f4", [4], b"\x00" * 15, max_bytes=LIMIT) is RejectReason.MALFORMED
    assert reason(decode_array, "<f4", [4], "x" * 16, max_bytes=LIMIT) is RejectReason.MALFORMED
    assert reason(decode_array, "<f4", [4], [0] * 16, max_bytes=LIMIT) is RejectReason.MALFORMED


def test_envelope_version_must_be_the_integer_one():
    for version in (True, 1.0, "1", 2, None, [1]):
        assert reason(DECODER.decode, envelope(v=version)) is RejectReason.UNKNOWN_VERSION, version
    assert DECODER.decode(envelope(v=1)).seq == 3


def test_seq_is_an_unsigned_64_bit_integer():
    assert DECODER.decode(envelope(seq=MAX_SEQ)).seq == MAX_SEQ
    assert DECODER.decode(envelope(seq=0)).seq == 0
    for seq in (-1, -(2**63), 1.0, True, "3", None):
        assert reason(DECODER.decode, envelope(seq=seq)) is RejectReason.MALFORMED, seq


def test_an_unexpected_error_inside_decoding_is_a_counted_rejection(monkeypatch):
    def boom(*_args, **_kwargs):
        raise SyntaxError("numpy surprise")

    monkeypatch.setattr(np, "frombuffer", boom)
    assert reason(DECODER.decode, envelope()) is RejectReason.MALFORMED
    assert reason(unpack_array, pack_array(np.zeros(3, np.float32))) is RejectReason.MALFORMED


# --------------------------------------------------------------------------- properties

HOSTILE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["(1,2f4", "(-1,)f4", "<f4", ">i8", "|u1", "f4,f4", "O", "<U3"]),
    st.binary(max_size=64),
    st.lists(st.integers(min_value=-(2**63), max_value=2**64 - 1), max_size=12),
    st.lists(st.one_of(st.integers(-3, 9), st.floats(), st.text(max_size=2), st.booleans()), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(-(2**63), 2**64 - 1), max_size=2),
)


@settings(max_examples=400, deadline=None)
@given(dtype=HOSTILE_VALUES, shape=HOSTILE_VALUES, data=HOSTILE_VALUES, max_bytes=st.integers(0, 1 << 20))
def test_decode_array_raises_nothing_but_rejected(dtype, shape, data, max_bytes):
    try:
        array = decode_array(dtype, shape, data, max_bytes=max_bytes)
    except Rejected:
        return
    assert array.nbytes <= max_bytes and array.nbytes == len(data)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["v", "device", "seq", "ts", "dtype", "shape", "data", "label", "x"]),
        HOSTILE_VALUES,
        max_size=9,
    )
)
def test_sample_decoder_raises_nothing_but_rejected(fields):
    with contextlib.suppress(Rejected):
        DECODER.decode(msgpack.packb(fields, use_bin_type=True))


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(DTYPES)),
    shape=st.lists(st.integers(0, 4), max_size=MAX_RANK),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_whitelisted_array_round_trips(name, shape, seed):
    dtype = DTYPES[name]
    raw = np.random.default_rng(seed).bytes(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    original = np.frombuffer(raw, dtype=dtype).reshape(shape)
    packed = pack_array(original)
    decoded = unpack_array(msgpack.unpackb(msgpack.packb(packed, use_bin_type=True), raw=False), max_bytes=1 << 20)
    assert decoded.shape == original.shape and decoded.dtype == original.dtype
    assert decoded.tobytes() == original.tobytes()


@settings(max_examples=200, deadline=None)
@given(
    features=st.lists(st.floats(-1e6, 1e6, width=32), min_size=64, max_size=64),
    label=st.integers(0, 9),
    seq=st.integers(0, MAX_SEQ),
    device=st.text(min_size=1, max_size=128),
)
def test_valid_samples_round_trip(features, label, seq, device):
    x = np.asarray(features, dtype=np.float32)
    sample = DECODER.decode(encode_sample(device, seq, x, label, timestamp=1.5))
    assert (sample.device, sample.seq, sample.label, sample.timestamp) == (device, seq, label, 1.5)
    np.testing.assert_array_equal(sample.features, x)
