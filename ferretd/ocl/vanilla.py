"""Vanilla online learning: train on the stream as it comes (no replay, no extra loss)."""

from __future__ import annotations

from ferretd.ocl.base import OclMethod


class Vanilla(OclMethod):
    name = "vanilla"
