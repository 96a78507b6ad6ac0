"""Shared fixtures. Broker and hub fixtures live in their own modules, loaded as plugins."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from security.keys import Keyring, Signer, add_key

pytest_plugins: list[str] = ["tests.fixtures_zmq", "tests.fixtures_mqtt", "tests.support.netbed"]


@dataclass(frozen=True)
class KeyDir:
    """A throwaway keyring on disk with a few identities of every role."""

    path: Path
    signers: dict[str, Signer]

    @property
    def ring(self) -> Keyring:
        return Keyring.load(self.path)


IDENTITIES = [
    ("robot", "robot-a"), ("robot", "robot-b"), ("robot", "robot-c"),
    ("worker", "worker-1"), ("worker", "worker-2"),
    ("release", "release"), ("replay", "replay"), ("recorder", "recorder"),
]


@pytest.fixture(scope="session")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> KeyDir:
    path = tmp_path_factory.mktemp("keys")
    signers = {ident: add_key(path, role, ident) for role, ident in IDENTITIES}  # type: ignore[arg-type]
    return KeyDir(path, signers)
