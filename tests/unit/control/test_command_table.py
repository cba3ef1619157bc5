"""The one command table drives both sides: ferretctl's parser, help and request arguments come
from it, and the daemon's handler dispatches through it (a stand-in daemon isolates the unit)."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest

from ferretd.control import ferretctl
from ferretd.control.commands import COMMANDS, make_handler
from ferretd.messages import ControlRequest

DAEMON_COMMANDS = sorted(name for name, cmd in COMMANDS.items() if cmd.handler is not None)


def parse(*argv: str) -> dict[str, Any]:
    return vars(ferretctl.build_parser().parse_args(list(argv)))


def test_ferretctl_offers_every_command_of_the_table_in_its_order() -> None:
    parser = ferretctl.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == list(COMMANDS)
    assert {"status", "stats", "budget", "history", "infer", "help", "stop"} <= set(COMMANDS)


@pytest.mark.parametrize("name", DAEMON_COMMANDS)
def test_every_daemon_command_documents_its_wire_message_and_cli_line(name: str) -> None:
    usage = COMMANDS[name].usage
    assert usage.startswith(f"{name}:")
    assert f'"cmd": "{name}"' in usage and f"ferretctl {name}" in usage


def test_arguments_travel_to_the_daemon_only_where_the_table_says() -> None:
    budget = COMMANDS["budget"]
    assert budget.request_args(parse("budget", "64M")) == {"bytes": 64 << 20}
    assert COMMANDS["history"].request_args(parse("history", "--last", "5")) == {}
    stats = COMMANDS["stats"]
    assert stats.request == "status" and stats.request_args(parse("stats", "--watch", "1")) == {}


def test_the_renderer_gets_the_cli_options_it_names() -> None:
    result = {"fields": ["t"], "points": [], "every_s": 5.0, "capacity": 10}
    assert "no history yet" in COMMANDS["history"].render(result, parse("history", "--last", "3"))
    assert COMMANDS["version"].render({"version": "9", "pid": 1}, {}) == "ferretd 9 (pid 1)"


class StandIn:
    """Just what the handlers under test touch; the real Daemon keeps these methods (a facade)."""

    def __init__(self) -> None:
        self.budgets: list[int] = []
        self.history = SimpleNamespace(to_dict=lambda last: {"last": last})

    def call_in_loop(self, fn: Any, timeout: float | None = None) -> Any:
        return fn()

    def set_budget(self, value: int) -> dict[str, Any]:
        self.budgets.append(value)
        return {"changed": False}


def test_the_daemon_dispatches_through_the_table() -> None:
    daemon = StandIn()
    handle = make_handler(daemon)  # type: ignore[arg-type]
    assert handle(ControlRequest("budget", {"bytes": 1024})).ok and daemon.budgets == [1024]
    refused = handle(ControlRequest("budget", {"bytes": -1}))
    assert not refused.ok and "non-negative" in refused.error
    assert handle(ControlRequest("history", {"last": 3})).result == {"last": 3}
    assert handle(ControlRequest("version", {})).result["pid"] == os.getpid()
    assert set(handle(ControlRequest("help", {})).result) == set(DAEMON_COMMANDS)
    for client_only in ("stats", "infer", "frobnicate"):
        reply = handle(ControlRequest(client_only, {}))
        assert not reply.ok and "unknown command" in reply.error
