"""Human-readable tables for ``ferretctl``: byte sizes in KiB/MiB/GiB, durations and ages
("12 s ago") instead of epochs, and one memory budget per plan. ``--json`` bypasses all of it.
Which renderer shows which command's result is said once, in the command table
(``ferretd.control.commands``). Standard library only."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any


def scored_note(accuracy: dict[str, Any]) -> str:
    """``(N estimated from a sample)`` when dropped arrivals were scored by sample under overload, and
    ``(N dropped unscored)`` when the queue dropped more than it could keep aside for scoring."""
    notes = []
    if estimated := accuracy.get("estimated") or 0:
        stderr = accuracy.get("online_accuracy_stderr")
        margin = f", standard error {stderr:.4f}" if stderr is not None else ""
        notes.append(f"{fmt(estimated)} estimated from a sample{margin}")
    if unscored := accuracy.get("unscored") or 0:
        notes.append(f"{fmt(unscored)} dropped unscored")
    return f" ({'; '.join(notes)})" if notes else ""


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}{unit}" if abs(value) < 10 else f"{value:,.1f}{unit}"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def size(value: int | float | None) -> str:
    """Binary units: ``512 B``, ``68.5 KiB``, ``1.2 GiB``."""
    if value is None:
        return "-"
    value = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return "-"  # pragma: no cover


def duration(seconds: float | None) -> str:
    """``0.42 s``, ``12 s``, ``3 min 05 s``, ``2 h 03 min``, ``4 d 01 h``."""
    if seconds is None:
        return "-"
    s = max(0.0, float(seconds))
    if s < 10:
        return f"{s:.2f} s" if s < 1 else f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h} h {m:02d} min"
    d, h = divmod(h, 24)
    return f"{d} d {h:02d} h"


def age(epoch: float | None, now: float | None = None) -> str:
    """``12 s ago (2026-12-03 12:30:09 UTC)`` for an epoch timestamp."""
    if epoch is None:
        return "-"
    now = time.time() if now is None else now
    stamp = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{duration(now - epoch)} ago ({stamp})"


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def render_status(status: dict[str, Any]) -> str:
    c, a, t, s, m = (status[k] for k in ("counters", "accuracy", "training", "snapshot", "memory"))
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(c["dropped"].items())) or "none"
    invalid = ", ".join(f"{k} {v}" for k, v in sorted(c["invalid"].items())) or "none"
    snapshot = "none yet"
    if s.get("seq") is not None:
        snapshot = f"seq {s['seq']}, {age(s.get('created_at'))}"
    snapshot += f"; {s['exported']} exported, {s['failed']} failed"
    if s.get("last_export_s"):
        snapshot += f", last export took {duration(s['last_export_s'])}"
    rows = [
        ("state", f"{status['state']} (pid {status['pid']}, ferretd {status['version']})"),
        ("uptime", duration(status["uptime_s"])),
        ("received", fmt(c["received"])),
        ("trained", fmt(c["trained"])),
        ("queued", f"{fmt(c['queued'])} ({c['waiting']} waiting, {c['in_flight']} in flight)"),
        ("dropped", f"{fmt(c['dropped_total'])} ({dropped})"),
        ("invalid", f"{fmt(c['invalid_total'])} ({invalid})"),
        ("counters add up", "yes" if c["balanced"] else "NO"),
        ("sequence gaps", f"{c['seq_gaps']} over {c['devices']} device(s), {c['seq_resets']} reset(s)"),
        ("online accuracy", f"{fmt(a['online_accuracy'])} over {fmt(a['samples'])} arrivals" + scored_note(a)),
        (f"  last {a['window']}", fmt(a["window_accuracy"])),
        ("  trained share", fmt(a.get("trained_share"))),
        ("  NoChange baseline", fmt(a["nochange_accuracy"])),
        ("  majority baseline", fmt(a["majority_accuracy"])),
        *drift_rows(status.get("drift") or {}),
        ("updates", fmt(t["updates"])),
        ("mean train delay", duration(t["mean_delay_s"])),
        ("model snapshot", snapshot),
        ("memory RSS", size(m["rss_bytes"])),
        ("memory available", size(m["available_bytes"])),
    ]
    if m.get("headroom_bytes") is not None:
        rows.append(("memory headroom", f"{size(m['headroom_bytes'])} (bound by {m.get('headroom_source', '?')})"))
    rows += engine_rows(status.get("engine") or {})
    return table(rows)


def drift_rows(drift: dict[str, Any]) -> list[tuple[str, str]]:
    """Page-Hinkley on the online error (ferretd/drift.py): state, detections, the last one's age."""
    if not drift:
        return []
    text = f"{drift.get('state')}, {drift.get('detections')} detection(s)"
    if drift.get("last_at") is not None:
        text += f", last {age(drift['last_at'])} (arrival {drift.get('last_at_sample')})"
    return [("drift", text)]


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
            f"staleness max {stage.get('max_staleness')} mean {fmt(stage.get('mean_staleness'))}, "
            f"live versions {stage.get('live_versions')} (peak {stage.get('max_live_versions')}), "
            f"{stage.get('updates')} updates on {stage.get('device')}"
        )
        if comp:
            text += (
                f"; lambda {fmt(comp.get('lambda'))}, compensated {comp.get('compensated')}, "
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
    """The plan with ONE budget: the one the daemon plans within now (cap included).

    The plan's own description carries the budget it was searched under; after ``ferretctl
    budget`` kept the plan (it still fits) that figure is stale, so it is replaced here."""
    lines = [line for line in result["describe"].splitlines() if not line.strip().startswith("budget:")]
    plan = result.get("plan") or {}
    headroom = result.get("headroom")
    override = result.get("override_bytes")
    if headroom:
        line = f"  memory budget: {size(headroom['budget_bytes'])}, bound by {headroom['bound_by']}"
        if headroom["bound_by"] != "ferretctl budget":
            line += f" (safety factor {headroom['safety_factor']})"
        lines.append(line)
        predicted = plan.get("predicted_memory_bytes")
        if predicted is not None and predicted > headroom["budget_bytes"]:
            lines.append(f"  WARNING: the running plan needs {size(predicted)}, over this budget")
        sources = ", ".join(f"{k} {size(v)}" for k, v in sorted(headroom["sources"].items()))
        lines.append(f"  measured headroom: {sources}")
    elif plan.get("budget_bytes"):
        lines.append(f"  memory budget: {size(plan['budget_bytes'])}")
    lines.append(f"mode: {result['mode']}, re-plans: {result['replans']} (last: {result['last_reason']})")
    lines.append(f"budget cap (ferretctl budget): {size(override) if override else 'none'}")
    return "\n".join(lines)


def render_snapshot(result: dict[str, Any]) -> str:
    m = result.get("manifest") or {}
    if not m:
        return "no snapshot"
    rows = [
        ("snapshot", f"seq {m.get('seq')}: {m.get('file')} ({size(m.get('size_bytes'))})"),
        ("created", age(m.get("created_at"))),
        ("model", f"{m.get('model')}, input {m.get('input_shape')} {m.get('input_dtype')}, {m.get('classes')} classes"),
        ("trained on", f"{fmt(m.get('samples_trained'))} samples, {fmt(m.get('updates'))} updates"),
        ("online accuracy", fmt(m.get("online_accuracy"))),
        ("onnx opset", fmt(m.get("opset"))),
        ("sha256", str(m.get("sha256"))),
    ]
    return table(rows)


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


def history_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Points as mappings, with ``trained_per_s`` and ``dropped_per_s`` from consecutive points."""
    rows = [dict(zip(result["fields"], p, strict=False)) for p in result["points"]]
    for prev, row in zip([None, *rows], rows, strict=False):  # (None, first), (first, second), ...
        dt = row["t"] - prev["t"] if prev else 0.0
        row["trained_per_s"] = (row["trained"] - prev["trained"]) / dt if prev and dt > 0 else None
        row["dropped_per_s"] = (row["dropped"] - prev["dropped"]) / dt if prev and dt > 0 else None
    return rows


def render_history(result: dict[str, Any], last: int = 30, now: float | None = None) -> str:
    rows = history_rows(result)
    if not rows:
        return f"no history yet (one point every {duration(result['every_s'])})"
    now = time.time() if now is None else now
    head = ("time (UTC)", "ago", "received", "trained/s", "dropped", "invalid", "online acc", "window acc")
    lines = [head]
    for r in rows[-last:]:
        lines.append((
            datetime.fromtimestamp(r["t"], UTC).strftime("%H:%M:%S"), duration(now - r["t"]), fmt(r["received"]),
            "-" if r["trained_per_s"] is None else f"{r['trained_per_s']:,.1f}", fmt(r["dropped"]),
            fmt(r["invalid"]), fmt(r["online_accuracy"]), fmt(r["window_accuracy"]),
        ))  # fmt: skip
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    text = ["  ".join(str(c).rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    shown = min(last, len(rows))
    text.append(f"{shown} of {len(rows)} point(s), one every {duration(result['every_s'])}, "
                f"{result['capacity']} kept")  # fmt: skip
    return "\n".join(text)


def render_checkpoint(result: dict[str, Any]) -> str:
    return f"checkpoint written: {result.get('path')}"


def render_version(result: dict[str, Any]) -> str:
    return f"ferretd {result['version']} (pid {result['pid']})"
