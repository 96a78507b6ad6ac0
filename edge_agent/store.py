"""The robot's on-disk model store: complete files only, switched by an atomic pointer.

Layout under ``root/NAME/``::

    v7.safetensors          a complete, hash-checked release (never written in place)
    .v8.part                a download in progress (deleted on restart)
    active.json             {"version": 7, "file": "v7.safetensors", "sha256": ..., "previous": 6,
                             "epoch": 0}

Every file that becomes visible is written to a temporary name, fsynced, renamed, and its
directory fsynced, so a kill at any instant leaves ``active.json`` naming either the old or the
new complete file. ``checkpoint(point)`` is an observation hook (called between the steps with
the step's name) used by the crash tests to stop the process at each point.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

POINTER = "active.json"
#: How far one release may raise the installed version (``vlabus edge --max-version-step``).
MAX_VERSION_STEP = 1000
Checkpoint = Callable[[str], None]


def _no_checkpoint(point: str) -> None:
    del point


@dataclass(frozen=True, slots=True)
class Installed:
    name: str
    version: int
    path: Path
    sha256: str
    previous: int | None = None
    epoch: int = 0


class ModelStore:
    """Installs and points at model files for one robot; one writer per directory."""

    def __init__(self, root: str | Path, *, checkpoint: Checkpoint = _no_checkpoint) -> None:
        self.root = Path(root)
        self._checkpoint = checkpoint

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def part_path(self, name: str, version: int) -> Path:
        return self.folder(name) / f".v{version}.part"

    def clean_partials(self, name: str) -> int:
        """Delete leftover downloads (a restart after a kill); returns how many."""
        removed = 0
        for part in self.folder(name).glob(".*.part"):
            part.unlink(missing_ok=True)
            removed += 1
        for tmp in self.folder(name).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            removed += 1
        return removed

    def active(self, name: str) -> Installed | None:
        """The installed model ``active.json`` names, verified by hash; None if none or bad."""
        folder = self.root / name
        try:
            meta = json.loads((folder / POINTER).read_text())
            path = folder / str(meta["file"])
            version, digest = int(meta["version"]), str(meta["sha256"])
            previous = meta.get("previous")
            epoch = int(meta.get("epoch", 0))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not path.is_file() or sha256_file(path) != digest:
            return None
        return Installed(name, version, path, digest,
                         None if previous is None else int(previous), epoch)

    def commit_part(self, name: str, version: int, sha256: str) -> Path:
        """Make a fully written ``.part`` file durable under its final name."""
        part = self.part_path(name, version)
        final = self.folder(name) / f"v{version}.safetensors"
        with open(part, "rb+") as handle:
            os.fsync(handle.fileno())
        self._checkpoint("part_synced")
        if sha256_file(part) != sha256:
            part.unlink(missing_ok=True)
            raise ValueError(f"{part.name} does not hash to {sha256}")
        os.replace(part, final)
        self._checkpoint("file_renamed")
        _fsync_dir(final.parent)
        return final

    def point(self, name: str, version: int, path: Path, sha256: str,
              previous: int | None, *, epoch: int = 0) -> Installed:
        """Atomically make ``path`` the active model (write, fsync, rename, fsync dir)."""
        folder = self.folder(name)
        tmp = folder / f".{POINTER}.tmp"
        body = json.dumps({"version": version, "file": path.name, "sha256": sha256,
                           "previous": previous, "epoch": epoch}).encode()
        with open(tmp, "wb") as handle:
            handle.write(body)
            self._checkpoint("pointer_written")
            handle.flush()
            os.fsync(handle.fileno())
        self._checkpoint("pointer_synced")
        os.replace(tmp, folder / POINTER)
        self._checkpoint("pointer_renamed")
        _fsync_dir(folder)
        return Installed(name, version, path, sha256, previous, epoch)

    def path_of(self, name: str, version: int) -> Path:
        return self.folder(name) / f"v{version}.safetensors"

    def prune(self, name: str, keep: set[int]) -> None:
        """Delete complete versions other than ``keep`` (the active and its rollback)."""
        for path in self.folder(name).glob("v*.safetensors"):
            try:
                version = int(path.stem[1:])
            except ValueError:
                continue
            if version not in keep:
                path.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
