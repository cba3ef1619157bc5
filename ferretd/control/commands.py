"""The one command table (circus's shape): every control command is defined once, here.

An entry holds the command's name, its one-line summary (``ferretctl help``), its CLI arguments
(and which of them travel to the daemon), the handler the daemon runs, whose docstring is the
usage the daemon's ``help`` shows (wire message and CLI line), and the renderer ``ferretctl``
prints the result with. ``ferretctl`` builds its parser and its output from :data:`COMMANDS`;
the daemon's control thread dispatches through :func:`make_handler`.

Handlers run on the control thread. Read-only ones read thread-safe state directly; anything
that changes state runs on the daemon loop through ``daemon.call_in_loop``. Daemon code is
imported inside handlers only (and plain tuples, not dataclasses), so ferretctl imports this
table and still starts fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from ferretd.control import render
from ferretd.control.arguments import Argument, arg, parse_bytes, parse_count, parse_seconds, parse_seq

if TYPE_CHECKING:
    from ferretd.daemon import Daemon
    from ferretd.messages import ControlReply, ControlRequest

Handler = Callable[["Daemon", dict[str, Any]], dict[str, Any]]
Renderer = Callable[..., str]
Answerer = Literal["ferretd", "ferretctl", "ferret-infer"]


class Command(NamedTuple):
    """One command. ``asks`` is the daemon command ferretctl sends (``stats`` asks ``status``);
    ``answered_by`` says who answers it: ferretd, ferretctl itself (``help``) or ferret-infer."""

    name: str
    summary: str
    handler: Handler | None = None
    renderer: Renderer = render.render_generic
    render_with: tuple[str, ...] = ()
    arguments: tuple[Argument, ...] = ()
    asks: str | None = None
    answered_by: Answerer = "ferretd"

    @property
    def usage(self) -> str:
        """The wire message and CLI line (the handler's docstring); the summary without a handler."""
        return (self.handler.__doc__ or "").strip() if self.handler else f"{self.name}: {self.summary}"

    @property
    def request(self) -> str:
        return self.asks or self.name

    def request_args(self, cli: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments sent to the daemon, taken from the parsed CLI options."""
        return {a.wire: cli[a.dest] for a in self.arguments if a.wire is not None}

    def render(self, result: dict[str, Any], cli: Mapping[str, Any]) -> str:
        return self.renderer(result, **{name: cli[name] for name in self.render_with})


COMMANDS: dict[str, Command] = {}
"""Every command, in the order ``ferretctl help`` lists them."""


def command(
    name: str,
    summary: str,
    *,
    renderer: Renderer = render.render_generic,
    render_with: tuple[str, ...] = (),
    arguments: tuple[Argument, ...] = (),
    answered_by: Answerer = "ferretd",
) -> Callable[[Handler], Handler]:
    """Register a command the daemon handles; the decorated function is its handler."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name] = Command(name, summary, handler, renderer, render_with, arguments, answered_by=answered_by)
        return handler

    return register


def client_command(name: str, summary: str, **fields: Any) -> None:
    """Register a command ferretctl answers itself or forwards (no daemon handler of its own)."""
    COMMANDS[name] = Command(name, summary, **fields)


@command("status", "state, counters, online accuracy, model, memory", renderer=render.render_status)
def cmd_status(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """status: state, uptime, counters, online accuracy, model sequence, memory.

    wire: {"cmd": "status"}        cli: ferretctl status [--json]
    """
    return daemon.status()


client_command(
    "stats",
    "status, redrawn every SECONDS with --watch (Ctrl-C ends it)",
    asks="status",
    renderer=render.render_status,
    arguments=(arg("--watch", type=parse_seconds, nargs="?", const=2.0, default=None, metavar="SECONDS"),),
)


@command("plan", "the live plan and the memory budget it runs within", renderer=render.render_plan)
def cmd_plan(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """plan: the live plan (stages, workers, knobs, predictions) and the headroom it was made for.

    wire: {"cmd": "plan"}          cli: ferretctl plan [--json]
    """
    return daemon.replanner.describe(daemon.plan)


@command(
    "history",
    "counters and online accuracy over time; --png FILE writes the learning curve",
    renderer=render.render_history,
    render_with=("last",),
    arguments=(
        arg("--last", type=parse_count, default=30, metavar="N", help="table rows (default 30)"),
        arg("--png", metavar="FILE", help="write the learning curve as a PNG (needs matplotlib)"),
    ),
)
def cmd_history(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """history: the bounded history of counters and online accuracy ([metrics] history_every_s).

    wire: {"cmd": "history", "args": {"last": N}}    cli: ferretctl history [--last N] [--png FILE]
    """
    last = args.get("last")
    if last is not None and (type(last) is not int or last < 0):
        raise ValueError(f"history 'last' must be a non-negative integer, got {last!r}")
    return daemon.history.to_dict(last)


@command("replan", "read the headroom and re-plan now", renderer=render.render_replan)
def cmd_replan(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """replan: read the headroom now and switch plans at a safe point if a better one fits.

    wire: {"cmd": "replan"}        cli: ferretctl replan
    """
    return daemon.call_in_loop(lambda: daemon.replan(force=True, reason="ferretctl replan"), timeout=120)


@command(
    "budget",
    "cap the plan's memory (0 removes the cap) and re-plan",
    renderer=render.render_replan,
    arguments=(arg("bytes", type=parse_bytes, help="e.g. 64M, 1G, 0", wire="bytes"),),
)
def cmd_budget(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """budget: cap the plan's memory at BYTES (0 removes the cap) and re-plan now.

    wire: {"cmd": "budget", "args": {"bytes": N}}    cli: ferretctl budget BYTES (suffixes K, M, G)
    """
    budget = args.get("bytes")
    if type(budget) is not int or budget < 0:
        raise ValueError(f"budget needs a non-negative integer 'bytes', got {budget!r}")
    return daemon.call_in_loop(lambda: daemon.set_budget(budget), timeout=120)


@command("snapshot", "export and announce a snapshot now", renderer=render.render_snapshot)
def cmd_snapshot(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """snapshot: export and announce a snapshot now; returns its manifest.

    wire: {"cmd": "snapshot"}      cli: ferretctl snapshot [--json]
    """
    timeout = daemon.config.control.timeout_s
    future = daemon.call_in_loop(daemon.snapshot_now)
    return {"manifest": future.result(timeout=max(timeout, 30.0))}


@command("checkpoint", "write the full learning state now", renderer=render.render_checkpoint)
def cmd_checkpoint(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """checkpoint: write the full learning state now.

    wire: {"cmd": "checkpoint"}    cli: ferretctl checkpoint
    """
    return {"path": daemon.call_in_loop(lambda: daemon.checkpoint_now("ferretctl"), timeout=120)}


@command("pause", "stop training; samples keep queueing")
def cmd_pause(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """pause: stop training (samples keep queueing, up to the queue's capacity).

    wire: {"cmd": "pause"}         cli: ferretctl pause
    """
    return daemon.call_in_loop(lambda: daemon.set_paused(True), timeout=60)


@command("resume", "continue training after pause")
def cmd_resume(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """resume: continue training after pause.

    wire: {"cmd": "resume"}        cli: ferretctl resume
    """
    return daemon.call_in_loop(lambda: daemon.set_paused(False))


@command("reload", "re-read the config file (like SIGHUP)", renderer=render.render_reload)
def cmd_reload(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """reload: re-read the config file (like SIGHUP); reports what applied and what needs a restart.

    wire: {"cmd": "reload"}        cli: ferretctl reload
    """
    return daemon.call_in_loop(daemon.reload, timeout=120)


@command("health", "exit 0 healthy, 1 degraded, 2 down (for monitoring)", renderer=render.render_health)
def cmd_health(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """health: healthy / degraded / down with reasons (ferretctl exits 0 / 1 / 2).

    wire: {"cmd": "health"}        cli: ferretctl health
    """
    from ferretd.lifecycle import health

    return health(daemon)


@command("version", "ferretctl's and the daemon's version", renderer=render.render_version)
def cmd_version(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """version: the daemon's version and pid.

    wire: {"cmd": "version"}       cli: ferretctl version
    """
    from ferretd import __version__

    return {"version": __version__, "pid": os.getpid()}


@command("stop", "stop the daemon (same path as SIGTERM)")
def cmd_stop(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """stop: the same path as SIGTERM: stop accepting, train what is queued, final snapshot.

    wire: {"cmd": "stop"}          cli: ferretctl stop
    """
    daemon.call_in_loop(lambda: daemon.request_stop("ferretctl stop"))
    return {"stopping": True}


client_command(
    "infer",
    "ferret-infer: status | health | pin SEQ (serve that snapshot, e.g. roll back) | unpin",
    answered_by="ferret-infer",
    arguments=(
        arg("action", nargs="?", default="status", choices=("status", "health", "pin", "unpin")),
        arg("seq", nargs="?", type=parse_seq, help="pin: the snapshot sequence to serve"),
    ),
)


@command(
    "help",
    "this usage (works without a daemon)",
    answered_by="ferretctl",  # the daemon answers it too, for clients other than ferretctl
    # ``choices`` is the table itself, filled by the time anyone parses a command line
    arguments=(arg("topic", nargs="?", choices=COMMANDS, metavar="COMMAND", help="one command"),),
)
def cmd_help(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """help: list the commands with their usage.

    wire: {"cmd": "help"}          cli: ferretctl help
    """
    return {name: cmd.usage for name, cmd in sorted(COMMANDS.items()) if cmd.handler is not None}


def make_handler(daemon: Daemon) -> Callable[[ControlRequest], ControlReply]:
    """The control server's request handler: look the command up, run it, make the result plain."""
    from ferretd.messages import ControlReply
    from ferretd.status import plain

    def handle(request: ControlRequest) -> ControlReply:
        cmd = COMMANDS.get(request.cmd)
        if cmd is None or cmd.handler is None:
            return ControlReply(ok=False, error=f"unknown command {request.cmd!r}; try 'help'")
        try:
            return ControlReply(ok=True, result=plain(cmd.handler(daemon, request.args)))
        except ValueError as exc:
            return ControlReply(ok=False, error=str(exc))

    return handle
