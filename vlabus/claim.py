"""Identities for scaled replicas: ``--id auto`` claims the first free key of a role.

``docker compose up --scale cloud-worker=N`` starts N identical containers over one shared
keyring volume. Each replica takes an exclusive ``flock`` on ``DIR/claims/ROLE-ID.lock`` for
the first identity of its role that nobody holds, and keeps it for its lifetime; the kernel
releases the lock when the process dies, so a restarted replica can take the slot again.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import KeyringError
from security.keys import Role


@dataclass
class Claim:
    """A held identity; keep the object alive as long as the identity is in use."""

    identity: str
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def claim_identity(keys_dir: str | Path, role: Role) -> Claim:
    """Lock and return the first identity of ``role`` with a private key and no holder."""
    root = Path(keys_dir)
    candidates = sorted(
        (p.name.removesuffix(".key.pem") for p in (root / role).glob("*.key.pem")),
        key=_natural,
    )
    claims = root / "claims"
    claims.mkdir(exist_ok=True)
    for identity in candidates:
        fd = os.open(claims / f"{role}-{identity}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return Claim(identity, fd)
    raise KeyringError(
        f"every {role} identity in {root} is taken ({len(candidates)}); add more with "
        f"`vlabus keys add {role} ID --dir {root}`")


def _natural(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("-")
    return (stem, int(number)) if number.isdigit() else (name, -1)
