"""CurveZMQ key pairs for the hub and its clients, with secret files kept private.

Layout of a curve directory::

    DIR/hub.key                  the hub's public certificate (give to clients)
    DIR/hub.key_secret           the hub's key pair, mode 0600
    DIR/clients/NAME.key_secret  a client's key pair, mode 0600 (copy to that client only)
    DIR/authorized/NAME.key      public certificates the hub admits (the ZAP allow list)

Files use ZeroMQ's certificate format, so ``zmq.auth.load_certificate`` reads them. We write
them ourselves because ``zmq.auth.create_certificates`` leaves secret keys world-readable
(known trap 6); loading refuses a secret file that others can read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import zmq
import zmq.auth

from schemas.errors import KeyringError
from schemas.topics import check_id

_TEMPLATE = """#   ZeroMQ CURVE {kind} Certificate (vlabus)
{warning}
metadata
curve
    public-key = "{public}"
{secret_line}"""


def authorized_dir(directory: str | Path) -> Path:
    return Path(directory) / "authorized"


def init_curve(directory: str | Path) -> bytes:
    """Create the hub's key pair if missing; returns the hub's public key (Z85)."""
    root = Path(directory)
    (root / "clients").mkdir(parents=True, exist_ok=True)
    authorized_dir(root).mkdir(exist_ok=True)
    if not (root / "hub.key_secret").exists():
        _write_pair(root, "hub")
    return load_hub_keys(root)[0]


def add_curve_client(directory: str | Path, name: str) -> bytes:
    """Create a client key pair and admit its public key; returns the public key (Z85)."""
    root = Path(directory)
    init_curve(root)
    public = _write_pair(root / "clients", check_id(name))
    (root / "clients" / f"{name}.key").replace(authorized_dir(root) / f"{name}.key")
    return public


def load_hub_keys(directory: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) of the hub."""
    return _load_secret(Path(directory) / "hub.key_secret")


def load_client_keys(directory: str | Path, name: str) -> tuple[bytes, bytes, bytes]:
    """(hub public, client public, client secret), the three keys a client connects with."""
    root = Path(directory)
    server_public, _ = zmq.auth.load_certificate(root / "hub.key")
    public, secret = _load_secret(root / "clients" / f"{check_id(name)}.key_secret")
    return server_public, public, secret


def _write_pair(directory: Path, name: str) -> bytes:
    public, secret = zmq.curve_keypair()
    text = _TEMPLATE.format(kind="Public", public=public.decode(), secret_line="",
                            warning="#   Give this file to peers that must trust this key.")
    (directory / f"{name}.key").write_text(text)
    secret_text = _TEMPLATE.format(
        kind="**Secret**", public=public.decode(),
        secret_line=f'    secret-key = "{secret.decode()}"\n',
        warning="#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.")
    fd = os.open(directory / f"{name}.key_secret", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is ignored when the file already exists
        os.write(fd, secret_text.encode())
    finally:
        os.close(fd)
    return public


def _load_secret(path: Path) -> tuple[bytes, bytes]:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise KeyringError(f"no CURVE key pair at {path}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyringError(f"{path} is readable by others (mode {mode & 0o777:o}); chmod 600")
    public, secret = zmq.auth.load_certificate(path)
    if secret is None:
        raise KeyringError(f"{path} holds no secret key")
    return public, secret
