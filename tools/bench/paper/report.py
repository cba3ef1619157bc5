"""Aggregate bench_paper runs into tables, the paper's agm / tagm scores, headline numbers and plots.

Decisions: accuracies are fractions, so ``agm_B(A) = (oacc_A - oacc_B) - ln(M_A / M_B)`` (the
log of the paper's ``exp(oacc_A - oacc_B) / (M_A / M_B)``), computed per seed against the same
seed's baseline, then mean +- population std over seeds; ``tagm`` uses test accuracy. ``M`` is
the planner's predicted memory of each strategy (plans.py). "Memory ratio to reach the best
competitor": among every Ferret plan that ran (levels, equal-memory plans, budget sweep), the
smallest predicted memory whose mean online accuracy is at least the best non-Ferret,
non-Oracle strategy's mean; ratio = that competitor's memory / Ferret's (> 1: Ferret needs less).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REFERENCES = ("1-Skip", "DAPPLE")
TIME_METHODS = (
    "Oracle",
    "1-Skip",
    "GPipe",
    "DAPPLE",
    "PipeDream",
    "PipeDream-2BW",
    "Ferret (min)",
    "Ferret (medium)",
    "Ferret (unconstrained)",
)


def _ms(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    return f"{scale * np.mean(values):.{digits}f} ± {scale * np.std(values):.{digits}f}"


def summarise(results: list[dict[str, Any]]) -> dict[tuple[str, int, str], dict[str, Any]]:
    by: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by[(r["stream"], r["load"], r["method"])].append(r)
    index = {(r["stream"], r["load"], r["seed"], r["method"]): r for r in results}
    out: dict[tuple[str, int, str], dict[str, Any]] = {}
    for key, rows in by.items():
        s: dict[str, Any] = {
            "group": rows[0]["group"],
            "plan": rows[0]["plan"],
            "memory_bytes": rows[0]["memory_bytes"],
            "oacc": [r["online_accuracy"] for r in rows],
            "test": [r["test_accuracy"] for r in rows],
            "dropped": float(np.mean([r["dropped"] for r in rows])),
            "version_bytes": rows[0].get("engine_version_bytes_peak"),
            "fallbacks": sum(r.get("fallbacks") or 0 for r in rows),
        }
        for ref in REFERENCES:
            for metric, field in (("agm", "online_accuracy"), ("tagm", "test_accuracy")):
                vals = []
                for r in rows:
                    b = index.get((r["stream"], r["load"], r["seed"], ref))
                    if b is not None:
                        vals.append(r[field] - b[field] - math.log(r["memory_bytes"] / b["memory_bytes"]))
                s[f"{metric}_{ref}"] = vals
        out[key] = s
    return out


def memory_ratio(summ: dict[tuple[str, int, str], dict[str, Any]], stream: str, load: int) -> dict[str, Any]:
    """Gap of unconstrained Ferret to Oracle, and the memory Ferret needs to reach (a) the best
    non-Ferret strategy and (b) the best stream / synchronous one (PipeDream's plans are part of
    Ferret's search space, so (a) is often Ferret's own plan under another name)."""
    rows = {m: s for (st, ld, m), s in summ.items() if st == stream and ld == load}
    ferret = sorted(
        (s["memory_bytes"], float(np.mean(s["oacc"])), m)
        for m, s in rows.items()
        if m.startswith("Ferret") and "+" not in m
    )
    unc, orc = rows["Ferret (unconstrained)"], rows["Oracle"]
    out: dict[str, Any] = {
        "ferret_best_oacc": max(acc for _, acc, _ in ferret),
        "unconstrained_minus_oracle_points": 100 * (float(np.mean(unc["oacc"])) - float(np.mean(orc["oacc"]))),
    }
    for tag in ("any", "sync"):
        comps = {
            m: s
            for m, s in rows.items()
            if s["group"] in ("stream", "pipeline")
            and (tag == "any" or s["plan"] in ("sequential", "flush"))
            and m != "Oracle"
            and not m.startswith("Ferret")
        }
        best = max(comps, key=lambda m: np.mean(comps[m]["oacc"]))
        target = float(np.mean(comps[best]["oacc"]))
        entry: dict[str, Any] = {"competitor": best, "oacc": target, "memory_bytes": comps[best]["memory_bytes"]}
        reach = next(((mem, acc, m) for mem, acc, m in ferret if acc >= target), None)
        if reach is not None:
            entry.update(ferret_memory_bytes=reach[0], ferret_oacc=reach[1], ferret_method=reach[2])
            entry["ratio"] = comps[best]["memory_bytes"] / reach[0]
        out[tag] = entry
    return out


def plots(
    summ: dict[tuple[str, int, str], dict[str, Any]],
    curves: dict[str, list[float]],
    out_dir: Path,
    streams: list[str],
    loads: list[int],
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    styles = sorted({m for (_, _, m), s in summ.items() if s["group"] in ("stream", "pipeline")})
    fig, axes = plt.subplots(len(streams), len(loads), figsize=(4 * len(loads), 3.2 * len(streams)), squeeze=False)
    for i, st in enumerate(streams):
        for j, ld in enumerate(loads):
            ax = axes[i][j]
            rows = {m: s for (a, b, m), s in summ.items() if a == st and b == ld}
            sweep = sorted(
                (s["memory_bytes"], np.mean(s["oacc"]))
                for m, s in rows.items()
                if m.startswith("Ferret") and "+" not in m
            )
            ax.plot(
                [m / 1024 for m, _ in sweep],
                [100 * a for _, a in sweep],
                "-",
                color="tab:red",
                lw=1,
                label="Ferret plans (sweep)",
            )
            for m, s in sorted(rows.items()):
                if s["group"] in ("stream", "pipeline"):
                    k = styles.index(m)
                    ax.errorbar(
                        s["memory_bytes"] / 1024,
                        100 * np.mean(s["oacc"]),
                        yerr=100 * np.std(s["oacc"]),
                        fmt="os^vDP*Xhd<>p"[k % 13],
                        color=plt.get_cmap("tab20")(k % 20),
                        ms=5,
                        capsize=2,
                        label=m.split(" (B=")[0],
                    )
            ax.set_xscale("log")
            ax.set_title(f"{st}, load {ld}x", fontsize=9)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel("online accuracy %", fontsize=8)
            if i == len(streams) - 1:
                ax.set_xlabel("predicted memory KiB (log)", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=7)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out_dir / "paper_oacc_vs_memory.png", dpi=70)
    plt.close(fig)
    files.append("paper_oacc_vs_memory.png")
    ld = max(loads)
    fig, axes = plt.subplots(1, len(streams), figsize=(4.5 * len(streams), 3.3), squeeze=False)
    for i, st in enumerate(streams):
        ax = axes[0][i]
        for m in TIME_METHODS:
            c = curves.get(f"{st}|{ld}|{m}")
            if c:
                ax.plot(np.linspace(0, 100, len(c)), [100 * v for v in c], label=m, lw=1)
        ax.set_title(f"{st}, load {ld}x, seed 0", fontsize=9)
        ax.set_xlabel("% of stream", fontsize=8)
        ax.set_ylabel("cumulative online accuracy %", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out_dir / "paper_oacc_over_time.png", dpi=70)
    plt.close(fig)
    files.append("paper_oacc_over_time.png")
    return files


def build_report(
    results: list[dict[str, Any]],
    curves: dict[str, list[float]],
    info: dict[str, Any],
    out_dir: Path,
    quick: bool,
    seconds: float,
) -> tuple[str, dict[str, Any]]:
    summ = summarise(results)
    streams = list(info)
    loads = sorted({r["load"] for r in results})
    lines = [
        f"Virtual clock (FLOP cost model, exact), 3 seeds, microbatch 1, plain SGD lr 0.05, "
        f"MLP 128-128-128; quick={quick}; {seconds:.0f} s. Accuracies in %, mean ± std over seeds. "
        "Memory = planner's predicted footprint (same formula for all rows); 'versions KiB' = the "
        "engine's measured peak of live weight versions (engine runs only). agm/tagm use fractions.",
        "",
        "## Streams",
        "",
        "| stream | train samples | test samples | classes | NoChange % | majority % |",
        "|---|---|---|---|---|---|",
    ]
    for st, d in info.items():
        lines.append(
            f"| {st} | {d['samples']} | {d['test_samples']} | {d['classes']} | "
            f"{100 * d['nochange']:.1f} | {100 * d['majority']:.1f} |"
        )
    headline: dict[str, Any] = {}
    lines += [
        "",
        "## Headline: memory Ferret needs to reach the best competitor, gap to Oracle",
        "",
        "'any' = best non-Ferret, non-Oracle strategy; 'sync' = best stream baseline or synchronous "
        "(flush) pipeline. Ratio = competitor memory / memory of the smallest Ferret plan with at least its "
        "mean oacc (> 1: Ferret needs less).",
        "",
        "| stream | load | best 'any' (oacc %, KiB) | Ferret reaching it (oacc %, KiB) | ratio | best 'sync' "
        "(oacc %, KiB) | Ferret reaching it (oacc %, KiB) | ratio | Ferret best oacc % | unconstrained - Oracle |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for st in streams:
        for ld in loads:
            h = memory_ratio(summ, st, ld)
            headline[f"{st}|{ld}"] = h
            cells = []
            for tag in ("any", "sync"):
                e = h[tag]
                reach = (
                    f"{e['ferret_method']} ({100 * e['ferret_oacc']:.1f}, {e['ferret_memory_bytes'] / 1024:.0f})"
                    if "ratio" in e
                    else "not reached"
                )
                ratio = f"{e['ratio']:.2f}x" if "ratio" in e else "-"
                comp = f"{e['competitor'].split(' (B=')[0]} ({100 * e['oacc']:.1f}, {e['memory_bytes'] / 1024:.0f})"
                cells += [comp, reach, ratio]
            lines.append(
                f"| {st} | {ld}x | {' | '.join(cells)} | {100 * h['ferret_best_oacc']:.1f} | "
                f"{h['unconstrained_minus_oracle_points']:+.1f} |"
            )
    lines += [
        "",
        "## Equal memory: each pipeline strategy vs Ferret planned at its memory",
        "",
        "| stream | load | strategy | its oacc % | Ferret @ its memory: plan, oacc % | difference (points) |",
        "|---|---|---|---|---|---|",
    ]
    for st in streams:
        for ld in loads:
            for comp in ("GPipe", "DAPPLE", "PipeDream", "PipeDream-2BW"):
                a, b = summ.get((st, ld, comp)), summ.get((st, ld, f"Ferret @ M({comp})"))
                if a and b:
                    d = 100 * (np.array(b["oacc"]) - np.array(a["oacc"]))
                    lines.append(
                        f"| {st} | {ld}x | {comp} | {_ms(a['oacc'])} | {b['plan']}, {_ms(b['oacc'])} | "
                        f"{d.mean():+.1f} ± {d.std():.1f} |"
                    )
    for st in streams:
        for ld in loads:
            lines += [
                "",
                f"## {st}, load {ld}x",
                "",
                "| method | plan | memory KiB | versions KiB | oacc % | test % | dropped | agm vs 1-Skip | "
                "agm vs DAPPLE | tagm vs 1-Skip | tagm vs DAPPLE |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for (a, b, m), s in summ.items():
                if a != st or b != ld or s["group"] in ("sweep",):
                    continue
                vb = f"{s['version_bytes'] / 1024:.0f}" if s["version_bytes"] else "-"
                scores = " | ".join(
                    _ms(s[f"{k}_{ref}"], 1.0, 3) if s[f"{k}_{ref}"] else "-"
                    for k in ("agm", "tagm")
                    for ref in REFERENCES
                )
                lines.append(
                    f"| {m} | {s['plan']} | {s['memory_bytes'] / 1024:.0f} | {vb} | {_ms(s['oacc'])} | "
                    f"{_ms(s['test'])} | {s['dropped']:.0f} | {scores} |"
                )
    lines += [
        "",
        "## Compensation and OCL on the Ferret (unconstrained) plan",
        "",
        "| stream | load | method | oacc % | vs none (points) | test % | fallbacks |",
        "|---|---|---|---|---|---|---|",
    ]
    comp_summary: dict[str, Any] = {}
    for st in streams:
        for ld in loads:
            base = summ.get((st, ld, "Ferret (unconstrained)"))
            extra = [
                (m, s) for (a, b, m), s in summ.items() if a == st and b == ld and s["group"] in ("compensation", "ocl")
            ]
            if not base or not extra:
                continue
            for m, s in [("Ferret (unconstrained) (none / vanilla)", base), *extra]:
                d = 100 * (np.array(s["oacc"]) - np.array(base["oacc"]))
                comp_summary[f"{st}|{ld}|{m}"] = float(d.mean())
                lines.append(
                    f"| {st} | {ld}x | {m} | {_ms(s['oacc'])} | {d.mean():+.2f} ± {d.std():.2f} | "
                    f"{_ms(s['test'])} | {s['fallbacks']} |"
                )
    files = plots(summ, curves, out_dir, streams, loads)
    lines += ["", "## Plots", ""] + [f"![{f}]({f})" for f in files]
    summary = {
        "headline": headline,
        "compensation_vs_none_points": comp_summary,
        "methods": {
            f"{a}|{b}|{m}": {k: (float(np.mean(v)) if isinstance(v, list) and v else v) for k, v in s.items()}
            for (a, b, m), s in summ.items()
        },
        "plots": files,
    }
    return "\n".join(lines), summary
