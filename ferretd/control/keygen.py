"""``ferretctl keygen DIR [--name NAME]``: write a CURVE key pair with pyzmq's ``zmq.auth``.

Writes ``DIR/NAME.key`` (the public certificate: copy it into a server's
``[security] authorized_keys_dir``, or give it to clients as ``server_public_key_file``) and
``DIR/NAME.key_secret`` (the secret one, mode 0600; ``server_secret_key_file`` or
``client_secret_key_file``). Never overwrites an existing key. Exit 0 on success, 2 on a usage
or file error. See docs/security.md.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
EXIT_OK, EXIT_USAGE = 0, 2


def generate(directory: str | os.PathLike[str], name: str = "ferretd") -> tuple[Path, Path]:
    """Create ``NAME.key`` and ``NAME.key_secret`` in ``directory``; returns (public, secret) paths."""
    import zmq.auth

    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"--name {name!r}: use letters, digits, '_', '.', '-' (at most 64, no leading '.')")
    folder = Path(directory)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} exists; not overwriting a key")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    old = os.umask(0o077)
    try:
        zmq.auth.create_certificates(os.fspath(folder), name)
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return public, secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ferretctl keygen", description="Write a CURVE key pair (NAME.key public, NAME.key_secret secret)."
    )
    parser.add_argument("directory", help="where to write the two files (created 0700 if missing)")
    parser.add_argument("--name", default="ferretd", help="file name stem (default: ferretd)")
    args = parser.parse_args(argv)
    try:
        public, secret = generate(args.directory, args.name)
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"ferretctl keygen: {exc}\n")
        return EXIT_USAGE
    sys.stdout.write(f"public key  {public}\nsecret key  {secret} (mode 0600; keep it on this machine)\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
