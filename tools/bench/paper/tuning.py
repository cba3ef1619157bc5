"""Learning-rate tuning with the same budget for every strategy family, on a split never reported.

Each family (Oracle, 1-Skip, Random-N, Last-N, Camel, GPipe, DAPPLE, PipeDream, PipeDream-2BW,
Ferret, Ferret no-comp) runs once per learning rate of ``LR_GRID`` (the same grid and so the same
number of trials for all) on the tuning slice of MNIST (data.TUNING_SLICE: images no reported
seed streams), in the same stream order, at one setting (``TUNE_LOAD``, ``TUNE_DEVICES``), with
the family's strategy at that setting (Ferret: its unconstrained plan). The learning rate with the
best online accuracy wins (ties: the smaller rate); it is used for every load, device count and
memory level of the family. The OCL methods use Ferret's rate.
"""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

from ferretd.planner.profile import Profile
from tools.bench.paper.strategies import FERRET, NOCOMP, run, strategies
from tools.streams import Stream

LR_GRID = (0.00625, 0.0125, 0.025, 0.05, 0.1, 0.2)  # the class-incremental order picked 0.025, the old bottom
TUNE_LOAD = 2
TUNE_DEVICES = 4


def tune(streams: dict[str, Stream], profile: Profile, quick: bool) -> dict[str, dict[str, Any]]:
    """``{stream: {family: {"lr": best, "trials": {lr: oacc}}}}``."""
    t_d = profile.total_time_s / TUNE_LOAD
    rows = strategies(profile, t_d, TUNE_DEVICES, quick)
    chosen = []
    for group, s, policy in rows:
        if group in ("stream", "pipeline") or s.name in (f"{FERRET} (unconstrained)", f"{NOCOMP} (unconstrained)"):
            chosen.append((s, policy))
    out: dict[str, dict[str, Any]] = {}
    jobs = [(name, s, policy, lr) for name in streams for s, policy in chosen for lr in LR_GRID]
    for name, s, policy, lr in tqdm(jobs, desc="lr tuning", unit="run", mininterval=5):
        r = run(streams[name], s, policy, profile, t_d, TUNE_DEVICES, seed=100, lr=lr)
        fam = out.setdefault(name, {}).setdefault(s.family, {"trials": {}})
        fam["trials"][lr] = r.online_accuracy
    for fams in out.values():
        for fam in fams.values():
            fam["lr"] = max(sorted(fam["trials"]), key=lambda lr: fam["trials"][lr])
    return out
