"""Control commands, one handler each; the docstring is the usage shown by ``ferretctl help``.

Handlers run on the control thread. Read-only ones read thread-safe state directly; anything
that changes state runs on the daemon loop through ``daemon.call_in_loop``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ferretd.messages import ControlReply, ControlRequest
from ferretd.status import plain

if TYPE_CHECKING:
    from ferretd.daemon import Daemon

Command = Callable[["Daemon", dict[str, Any]], dict[str, Any]]
COMMANDS: dict[str, Command] = {}


def command(fn: Command) -> Command:
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


@command
def cmd_status(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """status: state, uptime, counters, online accuracy, model sequence, memory.

    wire: {"cmd": "status"}        cli: ferretctl status [--json]
    """
    return daemon.status()


@command
def cmd_history(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """history: the bounded history of counters and online accuracy ([metrics] history_every_s).

    wire: {"cmd": "history", "args": {"last": N}}    cli: ferretctl history [--last N] [--png FILE]
    """
    last = args.get("last")
    if last is not None and (type(last) is not int or last < 0):
        raise ValueError(f"history 'last' must be a non-negative integer, got {last!r}")
    return daemon.history.to_dict(last)


@command
def cmd_snapshot(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """snapshot: export and announce a snapshot now; returns its manifest.

    wire: {"cmd": "snapshot"}      cli: ferretctl snapshot [--json]
    """
    timeout = daemon.config.control.timeout_s
    future = daemon.call_in_loop(daemon.snapshot_now)
    return {"manifest": future.result(timeout=max(timeout, 30.0))}


@command
def cmd_stop(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """stop: the same path as SIGTERM: stop accepting, train what is queued, final snapshot.

    wire: {"cmd": "stop"}          cli: ferretctl stop
    """
    daemon.call_in_loop(lambda: daemon.request_stop("ferretctl stop"))
    return {"stopping": True}



@command
def cmd_plan(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """plan: the live plan (stages, workers, knobs, predictions) and the headroom it was made for.

    wire: {"cmd": "plan"}          cli: ferretctl plan [--json]
    """
    return daemon.replanner.describe(daemon.plan)


@command
def cmd_replan(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """replan: read the headroom now and switch plans at a safe point if a better one fits.

    wire: {"cmd": "replan"}        cli: ferretctl replan
    """
    return daemon.call_in_loop(lambda: daemon.replan(force=True, reason="ferretctl replan"), timeout=120)


@command
def cmd_budget(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """budget: cap the plan's memory at BYTES (0 removes the cap) and re-plan now.

    wire: {"cmd": "budget", "args": {"bytes": N}}    cli: ferretctl budget BYTES (suffixes K, M, G)
    """
    budget = args.get("bytes")
    if type(budget) is not int or budget < 0:
        raise ValueError(f"budget needs a non-negative integer 'bytes', got {budget!r}")
    return daemon.call_in_loop(lambda: daemon.set_budget(budget), timeout=120)


@command
def cmd_pause(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """pause: stop training (samples keep queueing, up to the queue's capacity).

    wire: {"cmd": "pause"}         cli: ferretctl pause
    """
    return daemon.call_in_loop(lambda: daemon.set_paused(True), timeout=60)


@command
def cmd_resume(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """resume: continue training after pause.

    wire: {"cmd": "resume"}        cli: ferretctl resume
    """
    return daemon.call_in_loop(lambda: daemon.set_paused(False))


@command
def cmd_reload(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """reload: re-read the config file (like SIGHUP); reports what applied and what needs a restart.

    wire: {"cmd": "reload"}        cli: ferretctl reload
    """
    return daemon.call_in_loop(daemon.reload, timeout=120)


@command
def cmd_checkpoint(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """checkpoint: write the full learning state now.

    wire: {"cmd": "checkpoint"}    cli: ferretctl checkpoint
    """
    return {"path": daemon.call_in_loop(lambda: daemon.checkpoint_now("ferretctl"), timeout=120)}


@command
def cmd_health(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """health: healthy / degraded / down with reasons (ferretctl exits 0 / 1 / 2).

    wire: {"cmd": "health"}        cli: ferretctl health
    """
    from ferretd.lifecycle import health

    return health(daemon)


@command
def cmd_version(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """version: the daemon's version and pid.

    wire: {"cmd": "version"}       cli: ferretctl version
    """
    from ferretd import __version__

    return {"version": __version__, "pid": __import__("os").getpid()}


@command
def cmd_help(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """help: list the commands with their usage.

    wire: {"cmd": "help"}          cli: ferretctl help
    """
    return {name: (fn.__doc__ or "").strip() for name, fn in sorted(COMMANDS.items())}


def make_handler(daemon: Daemon) -> Callable[[ControlRequest], ControlReply]:
    def handle(request: ControlRequest) -> ControlReply:
        fn = COMMANDS.get(request.cmd)
        if fn is None:
            return ControlReply(ok=False, error=f"unknown command {request.cmd!r}; try 'help'")
        try:
            return ControlReply(ok=True, result=plain(fn(daemon, request.args)))
        except ValueError as exc:
            return ControlReply(ok=False, error=str(exc))

    return handle
