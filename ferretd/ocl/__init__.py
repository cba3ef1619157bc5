"""Online continual-learning methods that plug into the engine (replay at stage 0, extra loss at the last).

The registry: every ``OclMethod`` subclass with a ``name`` in a module of this package registers
itself; ``load_builtin_methods()`` imports them all, ``make_ocl(name, **hyper)`` builds one.
Built in: ``vanilla``, ``er`` (experience replay), ``mir`` (maximally interfered retrieval),
``lwf`` (learning without forgetting), ``mas`` (memory aware synapses).
"""

from ferretd.ocl.base import OCL_METHODS, OclMethod, load_builtin_methods, make_ocl

__all__ = ["OCL_METHODS", "OclMethod", "load_builtin_methods", "make_ocl"]
