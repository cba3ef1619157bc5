"""``ferretctl``: ask a running ferretd how it is doing, or tell it what to do.

Finds the control socket like the daemon does and also where the systemd unit puts it
(``/run/ferretd``), see :mod:`ferretd.control.discovery`; ``--endpoint`` overrides. The common
options (``--json``, ``--config``, ``--endpoint``, ``--timeout``) go before or after the
command. ``ferretctl help`` and ``-h`` work without a daemon; a bad argument is one line and
exit 2, never a traceback. The parser and the output come from the command table
(:mod:`ferretd.control.commands`). At import it loads only the standard library and the control
package's client side: zmq and the control client are imported when a command talks to a
daemon, the config package when one must be read, numpy/matplotlib only by ``infer`` and
``history --png``; so it starts in well under 50 ms (README, "ferretctl").

Exit codes: 0 ok, 1 the daemon answered with an error, 2 bad usage or config, 3 the daemon is
not running or did not answer. ``ferretctl health`` is made for monitoring and exits 0 healthy,
1 degraded, 2 down (not running or not answering included).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

from ferretd import __version__
from ferretd.control import discovery
from ferretd.control.arguments import MAX_BYTES, parse_bytes, parse_count, parse_seconds, parse_seq
from ferretd.control.commands import COMMANDS, Command

if TYPE_CHECKING:
    from ferretd.config import Config

__all__ = ["CLEAR_HOME", "MAX_BYTES", "main", "parse_bytes", "parse_count", "parse_seconds", "parse_seq", "run"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
HEALTH_DOWN = 2
CLEAR_HOME = "\x1b[H\x1b[2J"  # cursor home + clear screen: ``stats --watch`` redraws in place on a tty


class UsageError(Exception):
    """A bad argument: printed as one line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options every command takes, before or after it (defaults only on the top level)."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS if suppress else False,
                        help="print the raw JSON result")  # fmt: skip
    parser.add_argument("--config", default=default, help="the daemon's TOML config (to find its control socket)")
    parser.add_argument("--endpoint", default=default, help="control endpoint, e.g. ipc:///run/ferretd/control.sock")
    parser.add_argument("--timeout", type=parse_seconds, default=default, help="seconds to wait for an answer")


class BadConfig(Exception):
    """The config file is missing or invalid: printed as one line, exit 2."""


def build_parser() -> Parser:
    """The CLI, built from the command table (``ferretd.control.commands``)."""
    parser = Parser(
        prog="ferretctl",
        description="Control and inspect a running ferretd.",
        epilog="Exit codes: 0 ok, 1 the daemon answered with an error, 2 usage or config error, "
        "3 the daemon is not running or did not answer (health: 2 down).",
    )
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, command in COMMANDS.items():
        cmd = sub.add_parser(name, help=command.summary, description=command.summary)
        _common(cmd, suppress=True)
        for argument in command.arguments:
            argument.add_to(cmd)
    return parser


def usage(parser: Parser, args: argparse.Namespace) -> int:
    topic = getattr(args, "topic", None)
    if args.json:
        summaries = {name: command.summary for name, command in COMMANDS.items()}
        sys.stdout.write(json.dumps(summaries if topic is None else {topic: summaries[topic]}, indent=2) + "\n")
        return EXIT_OK
    if topic is None:
        sys.stdout.write(parser.format_help())
        return EXIT_OK
    choices = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    sys.stdout.write(choices[topic].format_help())
    return EXIT_OK


def load_config(path: str | None) -> Config:
    """The daemon's config (imported only here: most commands with ``--endpoint`` never need it)."""
    from ferretd.config import ConfigError
    from ferretd.config import load_config as load

    try:
        return load(path)
    except ConfigError as exc:
        raise BadConfig(str(exc)) from None


def resolve_endpoint(args: argparse.Namespace) -> tuple[str | None, str, float]:
    """(endpoint or None, the reason when None, timeout); raises UsageError/BadConfig."""
    if args.endpoint:
        try:
            endpoints = [discovery.check_endpoint(args.endpoint)]
        except ValueError as exc:
            raise UsageError(f"--endpoint: {exc}") from None
        config = load_config(args.config) if args.config else None
    else:
        path = args.config
        if path is None and discovery.pins_location(discovery.SYSTEM_CONFIG):
            path = discovery.SYSTEM_CONFIG
        config = load_config(path)
        if COMMANDS[args.command].answered_by == "ferret-infer":
            endpoints = discovery.candidates(config.inference.endpoint, path, name="infer.sock")
        else:
            endpoints = discovery.candidates(config.control.endpoint, path)
    args.loaded_config = config
    timeout = args.timeout or (config.control.timeout_s if config else 5.0)
    located = discovery.locate(endpoints, what=COMMANDS[args.command].answered_by)
    return located.endpoint, located.problem, timeout


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv)[:1] == ["keygen"]:  # local: needs no daemon (docs/security.md)
        from ferretd.control.keygen import main as keygen

        return keygen((sys.argv[1:] if argv is None else argv)[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        command = COMMANDS[args.command]
        if command.answered_by == "ferretctl":
            return usage(parser, args)
        if args.command == "infer" and (args.action == "pin") != (args.seq is not None):
            raise UsageError("infer pin needs a snapshot sequence (and only pin takes one)")
        if args.command == "version" and not args.json:
            sys.stdout.write(f"ferretctl {__version__}\n")
        endpoint, problem, timeout = resolve_endpoint(args)
    except UsageError as exc:
        sys.stderr.write(f"ferretctl: {exc} (see ferretctl help)\n")
        return EXIT_USAGE
    except (BadConfig, OSError) as exc:
        sys.stderr.write(f"ferretctl: {exc}\n")
        return EXIT_USAGE
    if endpoint is None:
        return unreachable(args, problem)
    if command.answered_by == "ferret-infer":
        from ferretd.control.infer import converse_infer

        return converse_infer(args, endpoint, timeout)
    return converse(args, command, endpoint, timeout)


def unreachable(args: argparse.Namespace, reason: str) -> int:
    sys.stderr.write(f"ferretctl: {reason}\n")
    if args.command == "health" or getattr(args, "action", None) == "health":
        sys.stdout.write("down\n")
        return HEALTH_DOWN
    return EXIT_UNREACHABLE


def converse(args: argparse.Namespace, command: Command, endpoint: str, timeout: float) -> int:
    """Ask the daemon (again every ``--watch`` seconds) and print its answer as the table says."""
    import zmq

    from transports.control_client import ControlClient

    cmd = command.request
    cli = vars(args)
    watch = getattr(args, "watch", None)
    redraw = bool(watch) and sys.stdout.isatty()
    call_args: dict[str, Any] = command.request_args(cli)
    try:
        client = ControlClient(endpoint, timeout_s=timeout)
    except zmq.ZMQError as exc:
        sys.stderr.write(f"ferretctl: cannot connect to {endpoint}: {exc}\n")
        return EXIT_USAGE
    with client:
        while True:
            try:
                reply = client.call(cmd, **call_args)
            except TimeoutError as exc:
                return unreachable(args, f"ferretd did not answer: {exc}")
            except ValueError as exc:
                sys.stderr.write(f"ferretctl: unreadable answer from {endpoint}: {exc}\n")
                return EXIT_ERROR
            if not reply.ok:
                sys.stderr.write(f"ferretctl: {cmd}: {reply.error}\n")
                return EXIT_ERROR
            if cmd == "version":
                reply.result["ferretctl"] = __version__
            if cmd == "history" and args.png:
                return write_png(reply.result, args.png)
            if args.json:
                text = json.dumps(reply.result, indent=2, sort_keys=True, default=str)
            else:
                text = command.render(reply.result, cli)
            if redraw:
                stamp = time.strftime("%H:%M:%S")
                text = f"{CLEAR_HOME}ferretctl stats: every {watch:g} s at {stamp} (Ctrl-C ends)\n\n{text}"
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
            if cmd == "health":
                return int(reply.result["code"])
            if not watch:
                return EXIT_OK
            time.sleep(watch)
            if not redraw:
                sys.stdout.write("\n")


def write_png(result: dict[str, Any], path: str) -> int:
    from ferretd.control.plot import PlotError, write_learning_curve

    try:
        n = write_learning_curve(result, path)
    except PlotError as exc:
        sys.stderr.write(f"ferretctl: {exc}\n")
        return EXIT_USAGE
    sys.stdout.write(f"learning curve of {n} points written to {path}\n")
    return EXIT_OK


def run() -> int:
    """Console entry point: Ctrl-C (e.g. ending ``stats --watch``) exits quietly with 130."""
    try:
        return main()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # ``ferretctl status | head``
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(run())
