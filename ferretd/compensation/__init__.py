"""Stale-gradient compensation: one small module per method behind :class:`Compensator`.

``make_compensator(name, **hyper)`` builds one by name; ``COMPENSATORS`` lists every
registered method once ``load_builtin_methods()`` has imported every module of the package
(the contract tests discover them that way, so a new module needs no test edit).
"""

from ferretd.compensation.base import COMPENSATORS, Compensator, load_builtin_methods, make_compensator

__all__ = ["COMPENSATORS", "Compensator", "load_builtin_methods", "make_compensator"]
