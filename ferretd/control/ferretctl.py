"""``ferretctl``: ask a running ferretd how it is doing, or tell it what to do.

Finds the control socket the way the daemon does (``--config``, then ``$RUNTIME_DIRECTORY``,
``$XDG_RUNTIME_DIR/ferretd``, ``/tmp/ferretd-$UID``), or takes ``--endpoint``. Imports only the
control client (no torch), so it starts instantly.

Exit codes: 0 ok, 1 the daemon answered with an error, 2 bad usage or config, 3 the daemon is
not running or did not answer. ``ferretctl health`` is made for monitoring and exits 0 healthy,
1 degraded, 2 down (not running or not answering included).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ferretd import __version__
from ferretd.config import ConfigError, load_config
from transports.zmq_control import ControlClient, ipc_path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}{unit}" if abs(value) < 10 else f"{value:,.1f}{unit}"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f} MiB"


def render_status(status: dict[str, Any]) -> str:
    c, a, t, s, m = (status[k] for k in ("counters", "accuracy", "training", "snapshot", "memory"))
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(c["dropped"].items())) or "none"
    invalid = ", ".join(f"{k} {v}" for k, v in sorted(c["invalid"].items())) or "none"
    rows = [
        ("state", f"{status['state']} (pid {status['pid']}, ferretd {status['version']})"),
        ("uptime", f"{status['uptime_s']:.0f} s"),
        ("received", _fmt(c["received"])),
        ("trained", _fmt(c["trained"])),
        ("queued", f"{_fmt(c['queued'])} ({c['waiting']} waiting, {c['in_flight']} in flight)"),
        ("dropped", f"{_fmt(c['dropped_total'])} ({dropped})"),
        ("invalid", f"{_fmt(c['invalid_total'])} ({invalid})"),
        ("counters add up", "yes" if c["balanced"] else "NO"),
        ("sequence gaps", f"{c['seq_gaps']} over {c['devices']} device(s), {c['seq_resets']} reset(s)"),
        ("online accuracy", _fmt(a["online_accuracy"])),
        (f"  last {a['window']}", _fmt(a["window_accuracy"])),
        ("  NoChange baseline", _fmt(a["nochange_accuracy"])),
        ("  majority baseline", _fmt(a["majority_accuracy"])),
        ("updates", _fmt(t["updates"])),
        ("mean train delay", _fmt(t["mean_delay_s"], " s")),
        ("model snapshot", f"seq {_fmt(s['seq'])} ({s['exported']} exported, {s['failed']} failed)"),
        ("memory RSS", _mib(m["rss_bytes"])),
        ("memory available", _mib(m["available_bytes"])),
    ]
    if m.get("headroom_bytes") is not None:
        rows.append(("memory headroom", f"{_mib(m['headroom_bytes'])} (bound by {m.get('headroom_source', '?')})"))
    rows += engine_rows(status.get("engine") or {})
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def engine_rows(engine: dict[str, Any]) -> list[tuple[str, str]]:
    """Engine summary plus one row per pipeline stage (staleness, versions, compensation)."""
    if not engine:
        return []
    scalars = ", ".join(f"{k}={v}" for k, v in engine.items() if not isinstance(v, dict | list))
    rows = [("engine", scalars)]
    compensator = engine.get("compensator") or {}
    for stage in engine.get("stage") or []:
        j = stage.get("stage")
        comp = compensator.get(str(j)) or {}
        text = (
            f"staleness max {stage.get('max_staleness')} mean {_fmt(stage.get('mean_staleness'))}, "
            f"live versions {stage.get('live_versions')} (peak {stage.get('max_live_versions')}), "
            f"{stage.get('updates')} updates on {stage.get('device')}"
        )
        if comp:
            text += (
                f"; lambda {_fmt(comp.get('lambda'))}, compensated {comp.get('compensated')}, "
                f"fallbacks {comp.get('fallbacks')}"
            )
        rows.append((f"  stage {j}", text))
    lanes = engine.get("lane_utilisation") or {}
    if lanes:
        rows.append(("  lane utilisation", ", ".join(f"{k} {v:.0%}" for k, v in sorted(lanes.items()))))
    return rows


def render_generic(result: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in result.items())


def render_plan(result: dict[str, Any]) -> str:
    lines = [
        result["describe"],
        f"mode: {result['mode']}, re-plans: {result['replans']} (last: {result['last_reason']})",
    ]
    headroom = result.get("headroom")
    if headroom:
        lines.append(
            f"made for budget {_mib(headroom['budget_bytes'])}, bound by {headroom['bound_by']} "
            f"(safety factor {headroom['safety_factor']})"
        )
        lines += [f"  {k}: {_mib(v)}" for k, v in sorted(headroom["sources"].items())]
    if result.get("override_bytes"):
        lines.append(f"ferretctl budget override: {_mib(result['override_bytes'])}")
    return "\n".join(lines)


def render_replan(result: dict[str, Any]) -> str:
    if result.get("changed"):
        return "plan changed:\n" + result["describe"]
    return "plan unchanged" + (f": {result['error']}" if result.get("error") else "")


def render_health(result: dict[str, Any]) -> str:
    return result["status"] + "".join(f"\n  - {r}" for r in result["reasons"])


def render_reload(result: dict[str, Any]) -> str:
    if result.get("note"):
        return result["note"]
    lines = [f"applied: {', '.join(result['applied']) or 'nothing changed'}"]
    if result["needs_restart"]:
        lines.append(f"needs a restart (still running the old value): {', '.join(result['needs_restart'])}")
    return "\n".join(lines)


RENDERERS = {
    "status": render_status,
    "plan": render_plan,
    "replan": render_replan,
    "budget": render_replan,
    "health": render_health,
    "reload": render_reload,
    "version": lambda r: f"ferretd {r['version']} (pid {r['pid']})",
}
HEALTH_DOWN = 2


def parse_bytes(text: str) -> int:
    """``512M``, ``1G``, ``1048576``: binary multiples."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r} (try 512M or 1G)") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a budget cannot be negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferretctl", description="Control and inspect a running ferretd.")
    parser.add_argument("--config", help="the daemon's TOML config (to find its control socket)")
    parser.add_argument("--endpoint", help="control endpoint, e.g. ipc:///run/ferretd/control.sock")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for an answer")
    parser.add_argument("--json", action="store_true", help="print the raw JSON result")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("status", help="state, counters, online accuracy, model, memory")
    watch = sub.add_parser("stats", help="status, refreshed with --watch")
    watch.add_argument("--watch", type=float, nargs="?", const=2.0, default=None, metavar="SECONDS")
    sub.add_parser("snapshot", help="export and announce a snapshot now")
    sub.add_parser("plan", help="the live plan and the headroom it was made for")
    sub.add_parser("replan", help="read the headroom and re-plan now")
    budget = sub.add_parser("budget", help="cap the plan's memory (0 removes the cap) and re-plan")
    budget.add_argument("bytes", type=parse_bytes, help="e.g. 64M, 1G, 0")
    sub.add_parser("pause", help="stop training; samples keep queueing")
    sub.add_parser("resume", help="continue training after pause")
    sub.add_parser("reload", help="re-read the config file (like SIGHUP)")
    sub.add_parser("checkpoint", help="write the full learning state now")
    sub.add_parser("health", help="exit 0 healthy, 1 degraded, 2 down (for monitoring)")
    sub.add_parser("version", help="ferretctl's and the daemon's version")
    sub.add_parser("stop", help="stop the daemon (same path as SIGTERM)")
    sub.add_parser("help", help="list the daemon's commands")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"ferretctl: {exc}\n")
        return EXIT_USAGE
    endpoint = args.endpoint or config.control.endpoint
    socket_file = ipc_path(endpoint)
    if args.command == "version" and not args.json:
        sys.stdout.write(f"ferretctl {__version__}\n")
    unreachable = EXIT_UNREACHABLE if args.command != "health" else HEALTH_DOWN
    if socket_file and not Path(socket_file).exists():
        sys.stderr.write(f"ferretctl: ferretd is not running (no control socket at {socket_file})\n")
        if args.command == "health":
            sys.stdout.write("down\n")
        return unreachable
    cmd = "status" if args.command == "stats" else args.command
    timeout = args.timeout or config.control.timeout_s
    with ControlClient(endpoint, timeout_s=timeout) as client:
        while True:
            try:
                reply = client.call(cmd, **({"bytes": args.bytes} if cmd == "budget" else {}))
            except TimeoutError as exc:
                sys.stderr.write(f"ferretctl: ferretd did not answer: {exc}\n")
                if args.command == "health":
                    sys.stdout.write("down\n")
                return unreachable
            if not reply.ok:
                sys.stderr.write(f"ferretctl: {cmd}: {reply.error}\n")
                return EXIT_ERROR
            if cmd == "version":
                reply.result["ferretctl"] = __version__
            if args.json:
                sys.stdout.write(json.dumps(reply.result, indent=2, sort_keys=True, default=str) + "\n")
            else:
                sys.stdout.write(RENDERERS.get(cmd, render_generic)(reply.result) + "\n")
            sys.stdout.flush()
            watch = getattr(args, "watch", None)
            if cmd == "health":
                return int(reply.result["code"])
            if not watch:
                return EXIT_OK
            time.sleep(watch)
            sys.stdout.write("\n")


def run() -> int:
    """Console entry point: Ctrl-C (e.g. ending ``stats --watch``) exits quietly with 130."""
    try:
        return main()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(run())
