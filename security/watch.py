"""Keys change without restarts: a running process follows its keyring directory.

:class:`KeyringWatcher` compares the keyring's public key files (``ROLE/ID.pub.pem``: name,
size, modification time, inode) with what it saw last; when anything differs it reads the
directory again and swaps the trusted keys *in place* (:meth:`Keyring.replace`), so every
decoder holding that keyring refuses a removed key and accepts an added one from its next
message on. Two triggers, both documented for operators:

* polling: :meth:`KeyringWatcher.run` looks every ``interval_s`` (a few stat calls; works on
  every filesystem, Kubernetes Secret volumes included, which change by swapping a symlink);
* SIGHUP: the command line installs a handler that calls :meth:`KeyringWatcher.poke`, which
  checks at once.

A directory that cannot be read (half-copied key, a typo) keeps the keys in force and is
logged; the next change is tried again. ``on_change(added, removed)`` lets the owner act on
what changed, e.g. a worker dropping the queued requests of a removed key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from schemas.errors import KeyringError
from security.keys import ROLES, Keyring, PublicKey

log = logging.getLogger(__name__)

Snapshot = frozenset[tuple[str, int, int, int]]
OnChange = Callable[[list[PublicKey], list[PublicKey]], None]


def snapshot(directory: Path) -> Snapshot:
    """What the public key files of ``directory`` look like now (name, size, mtime, inode)."""
    seen = []
    for role in ROLES:
        for path in [*(directory / role).glob("*.pub.pem"), *directory.glob(f"{role}.*.pub.pem")]:
            with contextlib.suppress(OSError):  # removed between glob and stat
                stat = path.stat()  # follows symlinks: a swapped Secret volume shows
                seen.append((str(path.relative_to(directory)), stat.st_size, stat.st_mtime_ns,
                             stat.st_ino))
    return frozenset(seen)


class KeyringWatcher:
    """Keeps ``keyring`` equal to the keys in ``directory``; see the module docstring."""

    def __init__(self, directory: str | Path, keyring: Keyring, *, interval_s: float = 2.0,
                 on_change: OnChange | None = None, name: str = "keyring") -> None:
        self.directory = Path(directory)
        self.keyring = keyring
        self.interval_s = interval_s
        self.on_change = on_change
        self.name = name
        self.reloads = 0
        self.failures = 0
        self._seen = snapshot(self.directory)
        self._poke = asyncio.Event()

    def check(self) -> bool:
        """Reload when the files changed since the last look; True when keys changed."""
        now = snapshot(self.directory)
        if now == self._seen:
            return False
        try:
            fresh = Keyring.load(self.directory)
        except (KeyringError, OSError, ValueError) as exc:
            self.failures += 1
            log.warning("%s: %s changed but cannot be read, the keys in force stay: %s",
                        self.name, self.directory, exc)
            return False  # _seen unchanged: tried again on the next look
        self._seen = now
        added, removed = self.keyring.replace(fresh)
        if not added and not removed:
            return False
        self.reloads += 1
        log.warning("%s: keyring %s reloaded: %d added (%s), %d removed (%s)", self.name,
                    self.directory, len(added), _names(added), len(removed), _names(removed))
        if self.on_change is not None:
            self.on_change(added, removed)
        return True

    def poke(self) -> None:
        """Check now (the SIGHUP handler); safe to call from the loop's signal handler."""
        self._poke.set()

    async def run(self) -> None:
        """Check every ``interval_s`` (0: only when poked) until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.interval_s or None)
            self._poke.clear()
            self.check()


def _names(keys: list[PublicKey]) -> str:
    return ", ".join(f"{key.role}/{key.identity}" for key in keys) or "-"
