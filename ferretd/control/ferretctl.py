"""``ferretctl``: ask a running ferretd how it is doing, or tell it what to do.

Finds the control socket like the daemon does and also where the systemd unit puts it
(``/run/ferretd``), see :mod:`ferretd.control.discovery`; ``--endpoint`` overrides. The common
options (``--json``, ``--config``, ``--endpoint``, ``--timeout``) go before or after the
command. ``ferretctl help`` and ``-h`` work without a daemon; a bad argument is one line and
exit 2, never a traceback. Imports only the control client (no torch), so it starts instantly.

Exit codes: 0 ok, 1 the daemon answered with an error, 2 bad usage or config, 3 the daemon is
not running or did not answer. ``ferretctl health`` is made for monitoring and exits 0 healthy,
1 degraded, 2 down (not running or not answering included).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any, NoReturn

from ferretd import __version__
from ferretd.config import ConfigError, load_config
from ferretd.control import discovery
from ferretd.control.render import render, render_history

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
HEALTH_DOWN = 2
MAX_BYTES = (1 << 63) - 1
CLEAR_HOME = "\x1b[H\x1b[2J"  # cursor home + clear screen: ``stats --watch`` redraws in place on a tty


class UsageError(Exception):
    """A bad argument: printed as one line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parse_bytes(text: str) -> int:
    """``512M``, ``1G``, ``1.5GiB``, ``1048576``: binary multiples, 0 .. 2**63-1."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    clean = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = units.get(clean[-1:], 1)
    number = clean[:-1] if clean[-1:] in units else clean
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r} (try 512M or 1G)") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r} (try 512M or 1G)")
    if value < 0:
        raise argparse.ArgumentTypeError(f"a budget cannot be negative: {text!r}")
    if value > MAX_BYTES:
        raise argparse.ArgumentTypeError(f"too large: {text!r} (at most 8 EiB)")
    return int(value)


def parse_seq(text: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise argparse.ArgumentTypeError(f"not a snapshot sequence number: {text!r}")
    return int(text)


def parse_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options every command takes, before or after it (defaults only on the top level)."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS if suppress else False,
                        help="print the raw JSON result")  # fmt: skip
    parser.add_argument("--config", default=default, help="the daemon's TOML config (to find its control socket)")
    parser.add_argument("--endpoint", default=default, help="control endpoint, e.g. ipc:///run/ferretd/control.sock")
    parser.add_argument("--timeout", type=parse_seconds, default=default, help="seconds to wait for an answer")


COMMANDS = {
    "status": "state, counters, online accuracy, model, memory",
    "stats": "status, redrawn every SECONDS with --watch (Ctrl-C ends it)",
    "plan": "the live plan and the memory budget it runs within",
    "history": "counters and online accuracy over time; --png FILE writes the learning curve",
    "replan": "read the headroom and re-plan now",
    "budget": "cap the plan's memory (0 removes the cap) and re-plan",
    "snapshot": "export and announce a snapshot now",
    "checkpoint": "write the full learning state now",
    "pause": "stop training; samples keep queueing",
    "resume": "continue training after pause",
    "reload": "re-read the config file (like SIGHUP)",
    "health": "exit 0 healthy, 1 degraded, 2 down (for monitoring)",
    "version": "ferretctl's and the daemon's version",
    "stop": "stop the daemon (same path as SIGTERM)",
    "infer": "ferret-infer: status | health | pin SEQ (serve that snapshot, e.g. roll back) | unpin",
    "help": "this usage (works without a daemon)",
}


def build_parser() -> Parser:
    parser = Parser(
        prog="ferretctl",
        description="Control and inspect a running ferretd.",
        epilog="Exit codes: 0 ok, 1 the daemon answered with an error, 2 usage or config error, "
        "3 the daemon is not running or did not answer (health: 2 down).",
    )
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, text in COMMANDS.items():
        cmd = sub.add_parser(name, help=text, description=text)
        _common(cmd, suppress=True)
        if name == "stats":
            cmd.add_argument("--watch", type=parse_seconds, nargs="?", const=2.0, default=None, metavar="SECONDS")
        elif name == "history":
            cmd.add_argument("--last", type=parse_count, default=30, metavar="N", help="table rows (default 30)")
            cmd.add_argument("--png", metavar="FILE", help="write the learning curve as a PNG (needs matplotlib)")
        elif name == "infer":
            cmd.add_argument("action", nargs="?", default="status", choices=("status", "health", "pin", "unpin"))
            cmd.add_argument("seq", nargs="?", type=parse_seq, help="pin: the snapshot sequence to serve")
        elif name == "budget":
            cmd.add_argument("bytes", type=parse_bytes, help="e.g. 64M, 1G, 0")
        elif name == "help":
            cmd.add_argument("topic", nargs="?", choices=sorted(COMMANDS), metavar="COMMAND", help="one command")
    return parser


def usage(parser: Parser, args: argparse.Namespace) -> int:
    topic = getattr(args, "topic", None)
    if args.json:
        sys.stdout.write(json.dumps(COMMANDS if topic is None else {topic: COMMANDS[topic]}, indent=2) + "\n")
        return EXIT_OK
    if topic is None:
        sys.stdout.write(parser.format_help())
        return EXIT_OK
    choices = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    sys.stdout.write(choices[topic].format_help())
    return EXIT_OK


def resolve_endpoint(args: argparse.Namespace) -> tuple[str | None, str, float]:
    """(endpoint or None, the reason when None, timeout); raises UsageError/ConfigError."""
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
        if args.command == "infer":
            endpoints = discovery.candidates(config.inference.endpoint, path, name="infer.sock")
        else:
            endpoints = discovery.candidates(config.control.endpoint, path)
    args.loaded_config = config
    timeout = args.timeout or (config.control.timeout_s if config else 5.0)
    located = discovery.locate(endpoints, what="ferret-infer" if args.command == "infer" else "ferretd")
    return located.endpoint, located.problem, timeout


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv)[:1] == ["keygen"]:  # local: needs no daemon (docs/security.md)
        from ferretd.control.keygen import main as keygen

        return keygen((sys.argv[1:] if argv is None else argv)[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "help":
            return usage(parser, args)
        if args.command == "infer" and (args.action == "pin") != (args.seq is not None):
            raise UsageError("infer pin needs a snapshot sequence (and only pin takes one)")
        if args.command == "version" and not args.json:
            sys.stdout.write(f"ferretctl {__version__}\n")
        endpoint, problem, timeout = resolve_endpoint(args)
    except UsageError as exc:
        sys.stderr.write(f"ferretctl: {exc} (see ferretctl help)\n")
        return EXIT_USAGE
    except (ConfigError, OSError) as exc:
        sys.stderr.write(f"ferretctl: {exc}\n")
        return EXIT_USAGE
    if endpoint is None:
        return unreachable(args, problem)
    if args.command == "infer":
        from ferretd.control.infer import converse_infer

        return converse_infer(args, endpoint, timeout)
    return converse(args, endpoint, timeout)


def unreachable(args: argparse.Namespace, reason: str) -> int:
    sys.stderr.write(f"ferretctl: {reason}\n")
    if args.command == "health" or getattr(args, "action", None) == "health":
        sys.stdout.write("down\n")
        return HEALTH_DOWN
    return EXIT_UNREACHABLE


def converse(args: argparse.Namespace, endpoint: str, timeout: float) -> int:
    import zmq

    from transports.zmq_control import ControlClient

    cmd = "status" if args.command == "stats" else args.command
    watch = getattr(args, "watch", None)
    redraw = bool(watch) and sys.stdout.isatty()
    call_args: dict[str, Any] = {"bytes": args.bytes} if cmd == "budget" else {}
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
            elif cmd == "history":
                text = render_history(reply.result, last=args.last)
            else:
                text = render(cmd, reply.result)
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
