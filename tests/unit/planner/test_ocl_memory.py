"""The planner counts the OCL method's own memory (replay buffer, teacher, importance weights)."""

from __future__ import annotations

from ferretd.config import load_config
from ferretd.planner import plan_for_config
from ferretd.planner.headroom import Headroom
from ferretd.planner.memory import predict_memory
from ferretd.planner.planning import memory_params_for_config, ocl_bound_bytes, profile_for_config
from ferretd.planner.profile import Profiler

REPLAY = 3 << 20


def _config(tmp_path, method: str):
    return load_config(
        overrides={
            "daemon": {"state_dir": str(tmp_path)},
            "model": {"hidden": [32, 32]},
            "pipeline": {"plan": "auto", "executor": "realtime"},
            "planner": {"max_stages": 2, "max_workers": 2, "action_overhead_s": 0.0},
            "ocl": {"method": method, "replay_bytes": REPLAY},
        },
        env={},
    )


def test_the_ocl_bound_is_in_every_prediction(tmp_path) -> None:
    profiler = Profiler(cache_dir=tmp_path / "profiles", warmup=1, repeats=2)
    head = Headroom(budget_bytes=1 << 30, raw_bytes=1 << 30, bound_by="cap", safety_factor=1.0, sources={})
    vanilla, er = _config(tmp_path, "vanilla"), _config(tmp_path, "er")
    profile = profile_for_config(er, profiler)
    assert ocl_bound_bytes(er, profile.total_param_bytes) == REPLAY
    assert memory_params_for_config(vanilla, "realtime", profile).ocl_bytes == 0
    assert memory_params_for_config(er, "realtime").ocl_bytes == 0  # no profile: nothing to size it by
    plan = plan_for_config(er, headroom=head, profiler=profiler, num_gpus=0)
    without = predict_memory(profile, plan, memory_params_for_config(vanilla, "realtime", profile))
    assert plan.predicted_memory_bytes == without.total_bytes + REPLAY
    assert predict_memory(profile, plan, memory_params_for_config(er, "realtime", profile)).ocl_bytes == REPLAY
