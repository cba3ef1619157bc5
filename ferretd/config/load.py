"""Loading the configuration: TOML file -> validated frozen dataclasses -> resolved directories.

Walks the dataclasses of :mod:`ferretd.config.schema` generically: unknown sections and keys get a
"did you mean" hint, every value is type-checked against its field, and each section's
``check()`` validates ranges. Empty directories and endpoints are then filled from systemd's
environment (``$RUNTIME_DIRECTORY``, ``$STATE_DIRECTORY``) or the XDG fallbacks. Stdlib only.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from ferretd.config.schema import Config
from ferretd.config.validate import ConfigError


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: typing.Mapping[str, str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Config:
    """Load ``path`` (or the embedded defaults when None), apply ``overrides``, resolve dirs."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    config = _build(Config, raw, "")
    factory_path = config.model.factory_path
    if factory_path and path is not None and not Path(factory_path).expanduser().is_absolute():
        factory_path = str(Path(path).absolute().parent / factory_path)  # relative to the config file
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, factory_path=factory_path))
    return resolve_paths(config, env)


def resolve_paths(config: Config, env: typing.Mapping[str, str]) -> Config:
    """Fill empty directories and endpoints from systemd's environment and the runtime dir."""
    runtime = Path(config.daemon.runtime_dir or default_runtime_dir(env)).expanduser().absolute()
    state = Path(config.daemon.state_dir or default_state_dir(env)).expanduser().absolute()

    def ipc(name: str) -> str:
        return f"ipc://{runtime / name}"

    daemon = dataclasses.replace(config.daemon, runtime_dir=str(runtime), state_dir=str(state))
    ingest = dataclasses.replace(config.ingest, endpoint=config.ingest.endpoint or ipc("ingest.sock"))
    snapshot = dataclasses.replace(
        config.snapshot,
        announce_endpoint=config.snapshot.announce_endpoint or ipc("snapshots.sock"),
        latest_endpoint=config.snapshot.latest_endpoint or ipc("snapshots-latest.sock"),
    )
    control = dataclasses.replace(config.control, endpoint=config.control.endpoint or ipc("control.sock"))
    inference = dataclasses.replace(
        config.inference,
        endpoint=config.inference.endpoint or ipc("infer.sock"),
        snapshot_dir=config.inference.snapshot_dir or str(state / "snapshots"),
    )
    return dataclasses.replace(
        config, daemon=daemon, ingest=ingest, snapshot=snapshot, control=control, inference=inference
    )


def default_runtime_dir(env: typing.Mapping[str, str]) -> str:
    if env.get("RUNTIME_DIRECTORY"):
        return env["RUNTIME_DIRECTORY"].split(":")[0]
    if env.get("XDG_RUNTIME_DIR"):
        return str(Path(env["XDG_RUNTIME_DIR"]) / "ferretd")
    return f"/tmp/ferretd-{os.getuid()}"


def default_state_dir(env: typing.Mapping[str, str]) -> str:
    if env.get("STATE_DIRECTORY"):
        return env["STATE_DIRECTORY"].split(":")[0]
    if env.get("XDG_STATE_HOME"):
        return str(Path(env["XDG_STATE_HOME"]) / "ferretd")
    return str(Path.home() / ".local" / "state" / "ferretd")


def _build(cls: type, raw: Any, where: str) -> Any:
    label = f"[{where}]" if where else "config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: expected a table, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in raw:
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {near[0]}?)" if near else f" (known: {', '.join(names)})"
            what = "section" if not where else "key"
            prefix = f"[{where}] " if where else ""
            raise ConfigError(f"unknown {what} {prefix}{key}{hint}")
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            values[f.name] = _build(hint, raw[f.name], f.name)
        else:
            values[f.name] = _coerce(raw[f.name], hint, f"[{where}] {f.name}")
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if check is not None:
        check()
    return obj


def _coerce(value: Any, hint: Any, label: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise ConfigError(f"{label}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_type, label) for v in value)
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{label}: unsupported field type")  # pragma: no cover - not used
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{label}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{label}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{label}: expected a number, got {value!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{label}: must be finite, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{label}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{label}: unsupported field type {hint}")  # pragma: no cover


