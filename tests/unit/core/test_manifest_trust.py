"""Snapshot manifests and files are untrusted: every field validated, reads confined and bounded."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferretd.messages import SnapshotManifest
from ferretd.snapshot import store as store_module
from ferretd.snapshot.manifest import manifest_name, model_name, read_confined, sha256_hex
from ferretd.snapshot.store import SnapshotStore

DATA = b"model bytes"


def valid(**overrides: object) -> dict:
    fields = dict(
        seq=3,
        created_at=1.0,
        file="model-00000003.onnx",
        sha256=sha256_hex(DATA),
        size_bytes=len(DATA),
        opset=17,
        input_name="x",
        input_shape=[4],
        input_dtype="float32",
        output_names=["logits", "probabilities"],
        classes=3,
        updates=1,
        samples_trained=1,
        online_accuracy=0.5,
        model="mlp",
    )
    fields.update(overrides)
    return fields


def test_a_valid_manifest_round_trips():
    manifest = SnapshotManifest.from_dict(valid(seq=2**62))
    assert SnapshotManifest.from_dict(manifest.to_dict()) == manifest


@pytest.mark.parametrize(
    "overrides",
    [
        {"file": None},
        {"file": "../../etc/passwd"},
        {"file": "/etc/passwd"},
        {"file": "sub/model.onnx"},
        {"file": ".."},
        {"file": ".hidden.onnx"},
        {"file": "model..onnx"},
        {"file": ""},
        {"file": "a\x00b"},
        {"file": 7},
        {"seq": "3"},
        {"seq": True},
        {"seq": 3.0},
        {"seq": 2**64},
        {"seq": 0},
        {"seq": -1},
        {"size_bytes": 0},
        {"size_bytes": 2**40},
        {"sha256": "ab" * 31},
        {"sha256": None},
        {"input_shape": [2**40]},
        {"input_shape": [1] * 65},
        {"input_shape": [4096, 4096]},
        {"input_shape": []},
        {"input_shape": [0]},
        {"input_shape": ["4"]},
        {"input_shape": None},
        {"input_shape": 4},
        {"input_dtype": "(1,2f4"},
        {"classes": True},
        {"classes": 1},
        {"online_accuracy": float("nan")},
        {"online_accuracy": 7.0},
        {"created_at": "yesterday"},
        {"output_names": "probabilities"},
        {"output_names": [None]},
        {"model": "x" * 10_000},
        {"manifest_version": True},
        {"manifest_version": 1.0},
        {"manifest_version": 2},
        {"extra": []},
    ],
)
def test_hostile_fields_are_a_value_error(overrides):
    with pytest.raises(ValueError, match="manifest"):
        SnapshotManifest.from_dict(valid(**overrides))


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from(sorted(valid())),
    value=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=40),
        st.lists(st.integers(min_value=-(2**66), max_value=2**66), max_size=70),
        st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
    ),
)
def test_any_field_value_is_accepted_or_a_value_error(key, value):
    """No field value raises anything but ValueError (a TypeError would kill a loader thread)."""
    try:
        manifest = SnapshotManifest.from_dict(valid(**{key: value}))
    except ValueError:
        return
    assert "/" not in manifest.file and ".." not in manifest.file
    assert type(manifest.seq) is int and 1 <= manifest.seq < 2**63


def write_snapshot(directory, seq: int, data: bytes, **overrides: object) -> None:
    fields = valid(seq=seq, file=model_name(seq), sha256=sha256_hex(data), size_bytes=len(data))
    fields.update(overrides)
    (directory / model_name(seq)).write_bytes(data)
    import json

    (directory / manifest_name(seq)).write_text(json.dumps(fields))


def test_store_skips_a_null_file_manifest_and_keeps_the_good_one(tmp_path):
    write_snapshot(tmp_path, 1, DATA)
    write_snapshot(tmp_path, 2, DATA, file=None)
    store = SnapshotStore(tmp_path)
    assert store.latest().seq == 1
    assert [m.seq for m, _ in store.valid_newest_first()] == [1]


def test_store_does_not_follow_a_symlink_out_of_the_directory(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_bytes(DATA)  # even bytes that would verify are not read through a link
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    write_snapshot(snapshots, 1, DATA)
    (snapshots / model_name(1)).unlink()
    os.symlink(secret, snapshots / model_name(1))
    store = SnapshotStore(snapshots, writable=False)
    assert store.latest() is None
    with pytest.raises(ValueError) as info:
        store.read(1)
    assert "secret" not in str(info.value) and "outside" not in str(info.value)


def test_a_manifest_naming_another_file_is_refused(tmp_path):
    write_snapshot(tmp_path, 1, DATA)
    write_snapshot(tmp_path, 2, DATA, file=model_name(1))
    assert SnapshotStore(tmp_path).latest().seq == 1


def test_read_confined_checks_the_size_before_reading(tmp_path):
    (tmp_path / "big.onnx").write_bytes(b"x" * 5000)
    with pytest.raises(ValueError) as info:
        read_confined(tmp_path, "big.onnx", 10)
    assert "5000" not in str(info.value)
    with pytest.raises(ValueError):
        read_confined(tmp_path, "../big.onnx", 5000)
    assert read_confined(tmp_path, "big.onnx", 5000) == b"x" * 5000


def test_a_read_only_store_never_writes_and_a_stale_temp_does_not_break_it(tmp_path, monkeypatch):
    write_snapshot(tmp_path, 1, DATA)
    (tmp_path / ".model-00000002.onnx.abc.tmp").write_bytes(b"half")

    def refuse(*_args: object) -> int:
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(store_module, "remove_stale_temps", refuse)
    assert SnapshotStore(tmp_path, writable=False).latest().seq == 1
    assert SnapshotStore(tmp_path).latest().seq == 1  # a writer in a read-only directory does not crash either
    assert (tmp_path / ".model-00000002.onnx.abc.tmp").exists()
    assert SnapshotStore(tmp_path / "absent", writable=False).latest() is None
    assert not (tmp_path / "absent").exists()
