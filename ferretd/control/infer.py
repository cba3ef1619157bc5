"""``ferretctl infer``: ask ferret-infer over its own socket (``infer.sock``) which snapshot it
serves, how old and how good it is, how many requests it answered and how fast; pin it to a
snapshot (an older one is a rollback) or unpin it back to the newest.

    ferretctl infer [status]     the table (--json: the raw reply)
    ferretctl infer health       exit 0 serving, 1 up but no model yet, 2 down (for monitoring)
    ferretctl infer pin SEQ      serve snapshot SEQ from the snapshot directory, no newer one
    ferretctl infer unpin        back to the newest snapshot

Pin and unpin are accepted on an ipc endpoint only (owner-only socket file).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ferretd.control.render import age, fmt, table

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def render_infer_status(s: dict[str, Any]) -> str:
    snap = s.get("snapshot")
    serving = "no model yet" if not snap else f"snapshot {snap['seq']}, created {age(snap['created_at'])}"
    if s.get("pinned") is not None:
        serving += f" (PINNED to {s['pinned']}; `ferretctl infer unpin` returns to the newest)"
    bad = ", ".join(f"{k} {v}" for k, v in sorted((s.get("bad_requests") or {}).items())) or "none"
    refused = ", ".join(f"{k} {v}" for k, v in sorted((s.get("rejected_by") or {}).items())) or "none"
    lat = s.get("latency_s")
    latency = "-" if not lat else (
        f"mean {lat['mean'] * 1e3:.2f} ms, p50 {lat['p50'] * 1e3:.2f} ms, p99 {lat['p99'] * 1e3:.2f} ms "
        f"(last {lat['count']})"
    )  # fmt: skip
    rows = [
        ("serving", serving),
        ("manifest accuracy", fmt(snap.get("online_accuracy")) if snap else "-"),
        ("trained updates", fmt(snap.get("updates")) if snap else "-"),
        ("requests", f"{fmt(s.get('requests'))} ({fmt(s.get('failed'))} failed: {bad})"),
        ("predict latency", latency),
        ("model swaps", fmt(s.get("swaps"))),
        ("snapshots refused", f"{fmt(s.get('rejected'))} ({refused})"),
    ]
    if s.get("last_error"):
        rows.append(("last refusal", str(s["last_error"])[:200]))
    return table(rows)


def converse_infer(args: argparse.Namespace, endpoint: str, timeout: float) -> int:
    import zmq

    from transports.client import InferenceClient, InferenceError

    curve = None
    config = getattr(args, "loaded_config", None)
    if config is not None and endpoint.startswith("tcp://"):
        from transports.security import client_curve_from

        curve = client_curve_from(config.security)
    try:
        client = InferenceClient(endpoint, timeout_ms=int(timeout * 1000), curve=curve)
    except zmq.ZMQError as exc:
        sys.stderr.write(f"ferretctl: cannot connect to {endpoint}: {exc}\n")
        return EXIT_USAGE
    health = args.action == "health"
    with client:
        try:
            if args.action == "pin":
                reply = client.pin(args.seq)
            elif args.action == "unpin":
                reply = client.unpin()
            else:
                reply = client.status()
        except TimeoutError as exc:
            sys.stderr.write(f"ferretctl: ferret-infer did not answer: {exc}\n")
            if health:
                sys.stdout.write("down\n")
                return 2
            return EXIT_UNREACHABLE
        except InferenceError as exc:
            sys.stderr.write(f"ferretctl: infer {args.action}: {exc}\n")
            return EXIT_ERROR
    if args.json:
        sys.stdout.write(json.dumps(reply, indent=2, sort_keys=True, default=str) + "\n")
    elif health:
        snap = reply.get("snapshot")
        sys.stdout.write("healthy\n" if snap else "degraded\n  - no model loaded yet\n")
    elif args.action == "status":
        sys.stdout.write(render_infer_status(reply) + "\n")
    elif args.action == "pin":
        sys.stdout.write(f"pinned: serving snapshot {reply['pinned']} until `ferretctl infer unpin`\n")
    else:
        sys.stdout.write(f"unpinned: serving snapshot {reply.get('model_seq')}\n")
    if health:
        return EXIT_OK if reply.get("snapshot") else 1
    return EXIT_OK
