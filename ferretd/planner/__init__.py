"""Planner: profile -> headroom -> memory/rate models -> search -> Plan (section 4 of the notes).

``memory``, ``rate`` and ``search`` are torch-free; ``profile`` and ``planning`` import torch.
``plan_for_config`` is re-exported lazily so importing the package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferretd.config import Config
    from ferretd.engine.plan import Plan


def plan_for_config(config: Config, **kwargs: Any) -> Plan:
    """See :func:`ferretd.planner.planning.plan_for_config`."""
    from ferretd.planner.planning import plan_for_config as _impl

    return _impl(config, **kwargs)
