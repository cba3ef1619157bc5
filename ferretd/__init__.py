"""ferretd: an edge streaming learner daemon built on the Ferret method (CVPR 2025)."""

__version__ = "0.1.0"
