"""``diff_live``: every live key belongs to a component that reconfigures, changing it is applied
live (and only it), and anything else is reported as needing a restart."""

from __future__ import annotations

import dataclasses

import pytest

from ferretd.config import Config, diff_live
from ferretd.config.live import COMPONENTS, LIVE_KEYS


def other_value(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 1.0
    return {"info": "debug", "drop_oldest": "drop_newest"}[value]  # type: ignore[index]


def with_key(config: Config, section: str, key: str, value: object) -> Config:
    return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **{key: value})})


LIVE = [(section, key) for section, keys in LIVE_KEYS.items() for key in keys]


def test_every_live_key_names_a_known_component_and_a_real_field():
    for section, keys in LIVE_KEYS.items():
        fields = {f.name for f in dataclasses.fields(getattr(Config(), section))}
        for key, component in keys.items():
            assert key in fields, f"[{section}] {key} is not a config key"
            assert component in COMPONENTS, f"[{section}] {key} -> {component!r}"


@pytest.mark.parametrize(("section", "key"), LIVE)
def test_a_live_key_is_applied_for_its_component(section, key):
    old = Config()
    new = with_key(old, section, key, other_value(getattr(getattr(old, section), key)))
    diff = diff_live(old, new)
    assert diff.components == {LIVE_KEYS[section][key]}
    assert diff.needs_restart == ()
    assert diff.applied and all(entry.startswith(f"[{section}]") for entry in diff.applied)
    assert diff.merged == new


def test_a_restart_key_is_reported_and_keeps_its_running_value():
    old = Config()
    new = with_key(with_key(old, "model", "hidden", (32,)), "snapshot", "every_updates", 7)
    new = with_key(new, "snapshot", "announce_endpoint", "ipc:///tmp/elsewhere")
    diff = diff_live(old, new)
    assert diff.needs_restart == ("[model] hidden", "[snapshot] announce_endpoint")
    assert diff.applied == ("[snapshot]",)
    assert diff.components == {"snapshots"}
    assert diff.merged.model == old.model
    assert diff.merged.snapshot.announce_endpoint == old.snapshot.announce_endpoint
    assert diff.merged.snapshot.every_updates == 7


def test_no_change_changes_no_component():
    diff = diff_live(Config(), Config())
    assert (diff.components, diff.applied, diff.needs_restart) == (frozenset(), (), ())
