"""Where is ferretd's control socket, and is anybody listening there? (used by ``ferretctl``)

An explicit ``--endpoint`` is the only candidate. Otherwise the configured endpoint comes first
(``--config``, else ``/etc/ferretd/ferretd.toml`` when it exists, else the embedded defaults);
when the config does not pin the location (no ``[control] endpoint`` and no
``[daemon] runtime_dir``) the usual runtime directories follow: ``$RUNTIME_DIRECTORY``,
``/run/ferretd`` (the systemd unit's ``RuntimeDirectory=``), ``$XDG_RUNTIME_DIR/ferretd`` and
``/tmp/ferretd-$UID``. A pinned location is never second-guessed, so a test daemon is never
confused with the system's.

Each candidate is probed with a plain connect (no ZeroMQ), which answers at once: a socket file
nobody listens on (left by a clean stop) is "not running", not a 5 s timeout, and a socket or
directory we may not open is reported as a permission problem. Stdlib only; ``socket`` and
``tomllib`` are imported when first needed (ferretctl's start-up time, README "ferretctl").
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

SYSTEM_RUNTIME_DIR = "/run/ferretd"
SYSTEM_CONFIG = "/etc/ferretd/ferretd.toml"
SOCKET_NAME = "control.sock"
PROBE_TIMEOUT_S = 1.0


class Probe(enum.Enum):
    LISTENING = "listening"
    MISSING = "missing"  # no socket file
    STALE = "stale"  # a socket file, but nothing accepts on it (e.g. left by a stop)
    DENIED = "denied"  # the file or its directory may not be opened by this user
    REFUSED = "refused"  # tcp: nothing listens on that port
    UNKNOWN = "unknown"  # could not tell (e.g. a tcp host that does not answer): let ZeroMQ try


class Located(NamedTuple):
    endpoint: str | None
    problem: str = ""  # one line when endpoint is None
    denied: bool = False


def check_endpoint(endpoint: str) -> str:
    """A usable client endpoint, or ``ValueError`` with one line saying what is wrong."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return endpoint
    if endpoint.startswith("tcp://"):
        host, sep, port = endpoint[len("tcp://") :].rpartition(":")
        if sep and host and host != "*" and port.isdigit() and 0 < int(port) < 65536:
            return endpoint
    raise ValueError(f"bad endpoint {endpoint!r}: expected ipc:///path/control.sock or tcp://HOST:PORT")


def probe(endpoint: str, timeout_s: float = PROBE_TIMEOUT_S) -> Probe:
    """Is something accepting connections at ``endpoint``? Answers without waiting on ZeroMQ."""
    import socket

    if endpoint.startswith("ipc://"):
        return _probe_unix(endpoint[len("ipc://") :], timeout_s)
    host, _, port = endpoint[len("tcp://") :].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return Probe.LISTENING
    except ConnectionRefusedError:
        return Probe.REFUSED
    except OSError:
        return Probe.UNKNOWN


def _probe_unix(path: str, timeout_s: float) -> Probe:
    import socket

    address = "\0" + path[1:] if path.startswith("@") else path
    if not path.startswith("@"):
        try:
            os.stat(path)
        except FileNotFoundError:
            return Probe.MISSING
        except PermissionError:
            return Probe.DENIED
        except OSError:
            return Probe.MISSING
        if not os.access(path, os.R_OK | os.W_OK):
            return Probe.DENIED
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(address)
        except PermissionError:
            return Probe.DENIED
        except FileNotFoundError:
            return Probe.MISSING
        except ConnectionRefusedError:
            return Probe.MISSING if path.startswith("@") else Probe.STALE
        except OSError:
            return Probe.UNKNOWN
    return Probe.LISTENING


def pins_location(config_path: str | os.PathLike[str] | None) -> bool:
    """Does this config file fix where the control socket is?"""
    import tomllib

    if config_path is None:
        return False
    try:
        with open(config_path, "rb") as fh:
            raw = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return False
    control, daemon = raw.get("control"), raw.get("daemon")
    return bool(
        (isinstance(control, dict) and control.get("endpoint"))
        or (isinstance(daemon, dict) and daemon.get("runtime_dir"))
    )


def candidates(
    configured: str, config_path: str | None, env: Mapping[str, str] | None = None, name: str = SOCKET_NAME
) -> list[str]:
    """Endpoints to try, in order; ``configured`` is the endpoint the loaded config resolves to."""
    env = os.environ if env is None else env
    found = [configured]
    if not pins_location(config_path):
        dirs = []
        if env.get("RUNTIME_DIRECTORY"):
            dirs.append(env["RUNTIME_DIRECTORY"].split(":")[0])
        dirs.append(SYSTEM_RUNTIME_DIR)
        if env.get("XDG_RUNTIME_DIR"):
            dirs.append(str(Path(env["XDG_RUNTIME_DIR"]) / "ferretd"))
        dirs.append(f"/tmp/ferretd-{os.getuid()}")
        found += [f"ipc://{Path(d) / name}" for d in dirs]
    return list(dict.fromkeys(found))


def locate(endpoints: list[str], timeout_s: float = PROBE_TIMEOUT_S, what: str = "ferretd") -> Located:
    """The first endpoint somebody listens on; else one line saying where we looked and why not."""
    results = [(e, probe(e, timeout_s)) for e in endpoints]
    for endpoint, result in results:
        if result in (Probe.LISTENING, Probe.UNKNOWN):
            return Located(endpoint)
    denied = [e for e, r in results if r is Probe.DENIED]
    if denied:
        where = _where(denied[0])
        return Located(
            None,
            f"permission denied on {where}: ferretd's sockets are mode 0600 for the daemon's user "
            f"(systemd: user ferretd); run ferretctl as that user (sudo -u ferretd ferretctl ...) or as root",
            denied=True,
        )
    stale = [_where(e) for e, r in results if r in (Probe.STALE, Probe.REFUSED)]
    looked = ", ".join(_where(e) for e in endpoints)
    if stale:
        return Located(None, f"{what} is not running (nothing listens on {stale[0]}; looked at {looked})")
    return Located(None, f"{what} is not running (no socket; looked at {looked})")


def _where(endpoint: str) -> str:
    return endpoint[len("ipc://") :] if endpoint.startswith("ipc://") else endpoint
