"""bench_paper's two figures: online accuracy vs measured memory per strategy, and over time.

* ``paper_oacc_vs_memory.png``: one panel per (stream, D) at every load side by side; each
  competitor a marker (mean oacc +- std over seeds, x = allocator-measured peak), Ferret's plans
  as dots, red (iter_fisher) and grey (no compensation), with a line through the best accuracy
  reached at no more memory.
* ``paper_oacc_over_time.png``: cumulative online accuracy of seed 0 at the highest load and the
  largest D, one panel per stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tools.bench.paper.strategies import FERRET, NOCOMP

TIME_METHODS = (
    "Oracle",
    "1-Skip",
    "Camel",
    "GPipe",
    "DAPPLE",
    "PipeDream",
    "PipeDream-2BW",
    f"{FERRET} (min)",
    f"{FERRET} (unconstrained)",
    f"{NOCOMP} (unconstrained)",
)
MARKERS = "os^vDP*Xhd<>p"
MIB = 2**20


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_memory(summ: dict[Any, dict[str, Any]], out_dir: Path, streams: list[str], loads: list[int],
                devices: list[int]) -> str:  # fmt: skip
    plt = _plt()
    panels = [(st, d) for st in streams for d in devices]
    fig, axes = plt.subplots(len(panels), len(loads), figsize=(3.6 * len(loads), 2.8 * len(panels)), squeeze=False)
    names = sorted({m for (_, _, _, m), s in summ.items() if s["group"] in ("stream", "pipeline")})
    for i, (st, d) in enumerate(panels):
        for j, ld in enumerate(loads):
            ax = axes[i][j]
            rows = {m: s for (a, b, c, m), s in summ.items() if (a, b, c) == (st, ld, d) and s["measured_bytes"]}
            for family, color in ((FERRET, "tab:red"), (NOCOMP, "0.5")):
                pts = sorted(
                    (s["measured_bytes"] / MIB, 100 * np.mean(s["oacc"]))
                    for s in rows.values()
                    if s["family"] == family and s["ocl"] == "vanilla"
                )
                frontier = [p for i, p in enumerate(pts) if all(p[1] > q[1] for q in pts[:i])]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], ".", color=color, ms=3)
                ax.plot([p[0] for p in frontier], [p[1] for p in frontier], "-", color=color, lw=1.2,
                        label=f"{family} plans (best at <= memory)")  # fmt: skip
            for m, s in sorted(rows.items()):
                if s["group"] in ("stream", "pipeline"):
                    k = names.index(m)
                    ax.errorbar(s["measured_bytes"] / MIB, 100 * np.mean(s["oacc"]), yerr=100 * np.std(s["oacc"]),
                                fmt=MARKERS[k % len(MARKERS)], color=plt.get_cmap("tab10")(k % 10), ms=4, capsize=2,
                                label=m.split(" (B=")[0])  # fmt: skip
            ax.set_title(f"{st}, load {ld}x, D={d}", fontsize=8)
            ax.tick_params(labelsize=6)
            if j == 0:
                ax.set_ylabel("online acc %", fontsize=7)
            if i == len(panels) - 1:
                ax.set_xlabel("allocator-measured peak MiB", fontsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out_dir / "paper_oacc_vs_memory.png", dpi=72)
    plt.close(fig)
    return "paper_oacc_vs_memory.png"


def plot_time(curves: dict[str, list[float]], out_dir: Path, streams: list[str], loads: list[int],
              devices: list[int]) -> str:  # fmt: skip
    plt = _plt()
    ld, d = max(loads), max(devices)
    fig, axes = plt.subplots(1, len(streams), figsize=(5 * len(streams), 3.4), squeeze=False)
    for i, st in enumerate(streams):
        ax = axes[0][i]
        for m in TIME_METHODS:
            prefix = f"{st}|{ld}|{d}|{m}"
            c = next((v for k, v in curves.items() if k == prefix or k.startswith(f"{prefix} (B=")), None)
            if c:
                style = "-" if m.startswith("Ferret") else "--"
                ax.plot(np.linspace(0, 100, len(c)), [100 * v for v in c], style, label=m, lw=1.1)
        ax.set_title(f"{st}, load {ld}x, D={d}, seed 0", fontsize=9)
        ax.set_xlabel("% of stream", fontsize=8)
        ax.set_ylabel("cumulative online accuracy %", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out_dir / "paper_oacc_over_time.png", dpi=72)
    plt.close(fig)
    return "paper_oacc_over_time.png"
