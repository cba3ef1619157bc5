"""The daemon's components: each owns its state; the daemon (the arbiter) only composes them.

gunicorn's arbiter shape: :class:`ferretd.daemon.Daemon` builds the components, runs the one
loop, and asks them to act; it keeps no state of theirs. Every component answers the same three
questions (:class:`Component`):

* ``capture()``: its part of a checkpoint, as top-level keys of the checkpoint dict;
* ``restore(state)``: take its keys back from a loaded checkpoint (resume);
* ``reconfigure(config)``: apply a reloaded config; :func:`ferretd.config.diff_live` says which
  components a reload concerns, and only those are asked.

The components: ``ingest`` (sample queue, decoder, ingest socket), ``trainer`` (the learner and
the plan it runs), ``score`` (prequential accuracy, drift), ``snapshots`` (store, exporter,
promotion gate, snapshot sockets), ``checkpoints`` (store, cadence, outcomes, resume), ``control``
(control socket, metrics endpoint), the re-planner (:class:`ferretd.replan.Replanner`) and
logging (:class:`ferretd.logs.LogSettings`).
"""

from __future__ import annotations

from typing import Any, Protocol

from ferretd.config import Config


class Component(Protocol):
    def capture(self) -> dict[str, Any]:
        """This component's part of a checkpoint (top-level keys of the checkpoint dict)."""
        ...

    def restore(self, state: dict[str, Any]) -> None:
        """Take this component's keys back from a checkpoint dict."""
        ...

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded config (only the live keys differ from the running one)."""
        ...
