"""Argument types for ``ferretctl`` (byte counts, sequence numbers, counts, seconds) and the
:class:`Argument` spec the command table declares its CLI arguments with.

A bad value raises ``argparse.ArgumentTypeError`` with one line that says what was expected;
ferretctl prints it and exits 2. Standard library only.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

MAX_BYTES = (1 << 63) - 1


class Argument(NamedTuple):
    """One CLI argument: ``add_argument(*flags, **options)``; ``wire`` names the request key it
    is sent under (None: ferretctl uses it itself, e.g. to render)."""

    flags: tuple[str, ...]
    options: Mapping[str, Any]
    wire: str | None = None

    @property
    def dest(self) -> str:
        return str(self.options.get("dest") or self.flags[0].lstrip("-").replace("-", "_"))

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(*self.flags, **self.options)


def arg(*flags: str, wire: str | None = None, **options: Any) -> Argument:
    """``arg("--last", type=parse_count, default=30)``: an :class:`Argument` in add_argument's words."""
    return Argument(flags=flags, options=options, wire=wire)


def parse_bytes(text: str) -> int:
    """``512M``, ``1G``, ``1.5GiB``, ``1048576``: binary multiples, 0 .. 2**63-1."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    clean = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = units.get(clean[-1:], 1)
    number = clean[:-1] if clean[-1:] in units else clean
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r} (try 512M or 1G)") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r} (try 512M or 1G)")
    if value < 0:
        raise argparse.ArgumentTypeError(f"a budget cannot be negative: {text!r}")
    if value > MAX_BYTES:
        raise argparse.ArgumentTypeError(f"too large: {text!r} (at most 8 EiB)")
    return int(value)


def parse_seq(text: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise argparse.ArgumentTypeError(f"not a snapshot sequence number: {text!r}")
    return int(text)


def parse_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value
