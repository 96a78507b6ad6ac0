"""The session's throwaway keyring: a few identities of every role, on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from security.keys import Keyring, Signer, add_key

IDENTITIES = [
    ("robot", "robot-a"), ("robot", "robot-b"), ("robot", "robot-c"),
    ("worker", "worker-1"), ("worker", "worker-2"),
    ("release", "release"), ("replay", "replay"), ("recorder", "recorder"),
]
"""(role, identity) of every key in the ``keydir`` fixture."""


@dataclass(frozen=True)
class KeyDir:
    """A throwaway keyring on disk with a few identities of every role."""

    path: Path
    signers: dict[str, Signer]

    @property
    def ring(self) -> Keyring:
        return Keyring.load(self.path)


def make_keydir(path: Path) -> KeyDir:
    """Create every identity of ``IDENTITIES`` under ``path``."""
    signers = {ident: add_key(path, role, ident) for role, ident in IDENTITIES}  # type: ignore[arg-type]
    return KeyDir(path, signers)
