"""What a config reload may change while the daemon runs, and which component each change is for.

:func:`diff_live` compares the running config with a freshly loaded one and answers with a
:class:`LiveDiff`: the keys applied live, grouped by the component that must reconfigure
(``LIVE_KEYS``), the keys that need a restart (everything else: sockets, model, training,
compensation, ...) and the config to run from now on (the old one with only the live keys
taken from the new one). Pure data; stdlib only (architecture rule 1).

Live keys and their components:

* ``[daemon] log_level`` -> ``logging``
* ``[ingest] queue_capacity``, ``overflow`` -> ``ingest`` (the queue's size and drop policy)
* ``[snapshot]`` cadence, ``keep`` and ``opset`` -> ``snapshots`` (the socket keys, the exported
  weights (``export``, ``ema_decay``: the learner keeps the average) and the promotion gate's
  keys need a restart)
* ``[checkpoint]`` (cadence and ``keep``) -> ``checkpoints``
* ``[planner]`` (budget, safety, hysteresis, search limits) -> ``replanner``, which re-plans
* ``[metrics] drop_scoring_share`` -> ``score`` (how much of the loop's time scoring drops may take)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ferretd.config.schema import CheckpointConfig, Config, PlannerConfig

SNAPSHOT_LIVE = ("every_updates", "every_seconds", "keep", "opset")
LIVE_KEYS: Mapping[str, Mapping[str, str]] = {
    "daemon": {"log_level": "logging"},
    "ingest": {"queue_capacity": "ingest", "overflow": "ingest"},
    "snapshot": dict.fromkeys(SNAPSHOT_LIVE, "snapshots"),
    "checkpoint": {f.name: "checkpoints" for f in dataclasses.fields(CheckpointConfig)},
    "planner": {f.name: "replanner" for f in dataclasses.fields(PlannerConfig)},
    "metrics": {"drop_scoring_share": "score"},
}
"""Section -> key -> the component that applies it; a key not listed needs a restart."""

COMPONENTS = ("logging", "ingest", "snapshots", "checkpoints", "replanner", "score")
"""Every component a reload can reconfigure."""

WHOLE_SECTIONS = ("snapshot", "checkpoint", "planner")
"""Sections reported as ``[name]`` when their live keys change (the others as ``[name] key``)."""


@dataclasses.dataclass(frozen=True)
class LiveDiff:
    """The answer of :func:`diff_live`."""

    merged: Config
    components: frozenset[str]
    applied: tuple[str, ...]
    needs_restart: tuple[str, ...]

    def changes(self, component: str) -> bool:
        return component in self.components


def changed_keys(old: object, new: object) -> list[str]:
    """Field names whose values differ between two dataclass instances of the same type."""
    return [f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name)]  # type: ignore[arg-type]


def diff_live(old: Config, new: Config) -> LiveDiff:
    """Which components a reload from ``old`` to ``new`` changes, and which keys need a restart."""
    merged = old
    components: set[str] = set()
    applied: list[str] = []
    needs_restart: list[str] = []
    for section in dataclasses.fields(Config):
        name = section.name
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        live = LIVE_KEYS.get(name, {})
        changed = changed_keys(before, after)
        taken = {key: getattr(after, key) for key in changed if key in live}
        if taken:
            merged = dataclasses.replace(merged, **{name: dataclasses.replace(getattr(merged, name), **taken)})
            components.update(live[key] for key in taken)
            applied += [f"[{name}]"] if name in WHOLE_SECTIONS else [f"[{name}] {key}" for key in taken]
        needs_restart += [f"[{name}] {key}" for key in changed if key not in live]
    return LiveDiff(merged, frozenset(components), tuple(applied), tuple(needs_restart))
