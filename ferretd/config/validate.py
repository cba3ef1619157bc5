"""Configuration validation: the one-line :class:`ConfigError` and the checks sections share.

Range helpers (``choice``, ``at_least``, ``positive``, ``endpoint``) phrase every problem as one
line naming ``[section] key``; the cross-section checks (message size limits against the model's
input, tcp endpoints against the security keys) run once the whole :class:`Config` is built.
Stdlib only (architecture rule 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ferretd.config.schema import Config


class ConfigError(ValueError):
    """A configuration problem, phrased as one line that names the offending key."""


def choice(section: str, key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"[{section}] {key}: must be one of {', '.join(allowed)}; got {value!r}")


def at_least(section: str, key: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"[{section}] {key}: must be >= {low}, got {value}")


def positive(section: str, key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"[{section}] {key}: must be > 0, got {value}")


def endpoint(section: str, key: str, value: str) -> None:
    if value and not value.startswith(("ipc://", "tcp://", "inproc://")):
        raise ConfigError(f"[{section}] {key}: must start with ipc://, tcp:// or inproc://, got {value!r}")


ENVELOPE_BYTES = 512
"""Room for a sample envelope's fields besides the array (device id up to 128 chars, seq, ts, ...)."""


def check_message_limits(config: Config) -> None:
    """A size limit below one float32 sample of ``[model] input_shape`` would refuse every sample."""
    needed = 4 * product(config.model.input_shape) + ENVELOPE_BYTES
    for section, key, value in (
        ("ingest", "max_message_bytes", config.ingest.max_message_bytes),
        ("inference", "max_request_bytes", config.inference.max_request_bytes),
    ):
        if value < needed:
            raise ConfigError(
                f"[{section}] {key}: {value} is below one float32 sample of [model] input_shape "
                f"{list(config.model.input_shape)} ({needed} bytes with the envelope); raise it"
            )


def product(values: tuple[int, ...]) -> int:
    result = 1
    for value in values:
        result *= value
    return result


def check_tcp_security(config: Config) -> None:
    """A tcp endpoint needs CURVE keys, or ``insecure = true``; control over tcp always needs keys."""
    sec = config.security
    endpoints = [
        ("control", "endpoint", config.control.endpoint),
        ("ingest", "endpoint", config.ingest.endpoint),
        ("inference", "endpoint", config.inference.endpoint),
        ("snapshot", "announce_endpoint", config.snapshot.announce_endpoint),
        ("snapshot", "latest_endpoint", config.snapshot.latest_endpoint),
    ]
    for section, key, value in endpoints:
        if not value.startswith("tcp://") or sec.curve:
            continue
        if section == "control":
            raise ConfigError(
                f"[control] endpoint: {value} over tcp needs [security] server_secret_key_file (keep control on ipc)"
            )
        if not sec.insecure:
            raise ConfigError(
                f"[{section}] {key}: {value} is tcp without authentication; set [security] "
                "server_secret_key_file and authorized_keys_dir, or insecure = true"
            )
