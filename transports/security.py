"""Socket hardening shared by every server socket: size limits, high-water marks, owner-only ipc
files and ZeroMQ CURVE authentication (pyzmq's own ``zmq.auth``; no home-made crypto).

* :func:`bind_server` sets ``MAXMSGSIZE`` (a larger message makes ZeroMQ drop that peer before
  any byte reaches Python), ``RCVHWM`` (messages buffered per connected peer), ``LINGER 0``, makes
  the socket a CURVE server when keys are given and the endpoint is tcp, and binds through
  :func:`bind_private` so an ipc socket file is created owner-only (0600).
* :func:`start_authenticator` runs the ZAP handler (``ThreadAuthenticator``) that admits only the
  client public keys found in a directory (``*.key`` certificates from ``ferretctl keygen``).
  One per ZeroMQ context, started before the first CURVE server socket binds.
* :class:`ClientCurve` is what a client presents: its own key pair and the server's public key.
  With CURVE, a client only completes the handshake with the holder of that server key, so a
  rogue process that binds the endpoint first cannot publish snapshots or receive samples.

ipc endpoints stay unauthenticated on purpose: the file mode and the runtime directory's owner
are the access control there (docs/security.md).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


class KeyFileError(ValueError):
    """A certificate file is missing, unreadable or lacks the key we need (one line)."""


@dataclass(frozen=True)
class CurveKeys:
    """A CURVE key pair (Z85-encoded bytes, as ``zmq.auth`` reads them)."""

    public: bytes
    secret: bytes


@dataclass(frozen=True)
class ClientCurve:
    """A client's key pair plus the public key of the server it will accept."""

    keys: CurveKeys
    server_public: bytes


def load_keypair(path: str | os.PathLike[str]) -> CurveKeys:
    """Read a secret certificate (``NAME.key_secret``); :class:`KeyFileError` if it has no secret key."""
    try:
        public, secret = zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read key pair {os.fspath(path)!r}: {exc}") from None
    if not secret:
        raise KeyFileError(f"{os.fspath(path)!r} holds no secret key (use the NAME.key_secret file)")
    return CurveKeys(public=public, secret=secret)


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The public key of a certificate (either ``NAME.key`` or ``NAME.key_secret``)."""
    try:
        public, _secret = zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read public key {os.fspath(path)!r}: {exc}") from None
    return public


def ipc_path(endpoint: str) -> str | None:
    return endpoint[len("ipc://") :] if endpoint.startswith("ipc://") else None


def bind_private(socket: zmq.SyncSocket, endpoint: str) -> None:
    """Bind; an ipc file is created under umask 077 and then set to 0600 explicitly."""
    path = ipc_path(endpoint)
    if path is None:
        socket.bind(endpoint)
        return
    old = os.umask(0o077)
    try:
        socket.bind(endpoint)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)


def bind_server(
    socket: zmq.SyncSocket,
    endpoint: str,
    *,
    max_message_bytes: int,
    rcvhwm: int,
    curve: CurveKeys | None = None,
) -> None:
    """Apply the limits (and CURVE on tcp when ``curve`` is given), then bind privately."""
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, int(max_message_bytes))
    socket.setsockopt(zmq.RCVHWM, int(rcvhwm))
    if curve is not None and endpoint.startswith("tcp://"):
        socket.curve_secretkey = curve.secret
        socket.curve_publickey = curve.public
        socket.curve_server = True
    bind_private(socket, endpoint)


def apply_client_curve(socket: zmq.SyncSocket, curve: ClientCurve | None, endpoint: str) -> None:
    """Make ``socket`` a CURVE client before it connects to a tcp ``endpoint``; no-op without keys or on ipc."""
    if curve is None or not endpoint.startswith("tcp://"):
        return
    socket.curve_secretkey = curve.keys.secret
    socket.curve_publickey = curve.keys.public
    socket.curve_serverkey = curve.server_public


def server_keys_from(security: Any) -> CurveKeys | None:
    """The server key pair named by a ``[security]`` section, or None when CURVE is off."""
    if not security.server_secret_key_file:
        return None
    return load_keypair(Path(security.server_secret_key_file).expanduser())


def client_curve_from(security: Any) -> ClientCurve | None:
    """What this process presents as a client per ``[security]`` (defaults: the server pair)."""
    own = security.client_secret_key_file or security.server_secret_key_file
    server = security.server_public_key_file or security.server_secret_key_file
    if not own or not server:
        return None
    return ClientCurve(
        keys=load_keypair(Path(own).expanduser()), server_public=load_public_key(Path(server).expanduser())
    )


def start_authenticator(context: zmq.SyncContext, authorized_keys_dir: str | os.PathLike[str]) -> ThreadAuthenticator:
    """Start ZAP for ``context``: only clients whose public key is in the directory get in."""
    directory = Path(authorized_keys_dir)
    if not directory.is_dir():
        raise KeyFileError(f"authorized keys directory {os.fspath(directory)!r} does not exist")
    auth = ThreadAuthenticator(context, log=logging.getLogger("ferretd.zap"))
    auth.start()
    auth.configure_curve(domain="*", location=os.fspath(directory))
    return auth
