"""Stale-gradient compensation: one small module per method behind :class:`Compensator`.

``make_compensator(name, **hyper)`` builds one by name; ``COMPENSATORS`` lists every
registered method (the contract tests discover them from it).
"""

from ferretd.compensation.base import COMPENSATORS, Compensator, make_compensator

__all__ = ["COMPENSATORS", "Compensator", "make_compensator"]
