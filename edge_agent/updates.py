"""Signed model updates on the robot: manifest checks, capped chunk download, atomic install.

The envelope layer already guarantees that manifests and chunks were signed by a ``release``
key (``SENDER_ROLES``); this module checks what they say. A manifest is accepted only for the
robot's model, newer than the installed version but not by more than ``max_version_step``,
unexpired and under the size cap. Releases are ordered by (epoch, version): a ``release`` key
publishes within the installed epoch; only the offline ``root`` key opens a higher one, with any
version (the recovery from a release that pushed the version too far, docs/hardening.md). Chunks are
written at their offset into a ``.part`` file, each hash-checked against the manifest, and none
may carry more bytes than the manifest declared. When every chunk is in, :meth:`finish` (run off
the event loop: it touches disk and torch) hashes the file, renames it into place, loads it,
health-checks it on a probe input and only then moves the active pointer. Every outcome is
counted in ``results`` by :class:`UpdateResult`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

from edge_agent.store import MAX_VERSION_STEP, Installed, ModelStore
from schemas.messages import ModelChunk, ModelManifest
from security.keys import Role
from vlabus.policy import Observation, Policy

log = logging.getLogger(__name__)
Loader = Callable[[Path], Policy]


class UpdateResult(StrEnum):
    ACCEPTED = "accepted"
    CHUNK_OK = "chunk_ok"
    INSTALLED = "installed"
    OTHER_MODEL = "other_model"
    STALE_VERSION = "stale_version"
    VERSION_JUMP = "version_jump"
    NEEDS_ROOT = "needs_root"
    STALE_EPOCH = "stale_epoch"
    EXPIRED = "expired"
    TOO_LARGE = "too_large"
    BAD_MANIFEST = "bad_manifest"
    BAD_CHUNK_HASH = "bad_chunk_hash"
    OVERSIZE_CHUNK = "oversize_chunk"
    UNEXPECTED_CHUNK = "unexpected_chunk"
    DUPLICATE_CHUNK = "duplicate_chunk"
    BAD_FILE_HASH = "bad_file_hash"
    LOAD_FAILED = "load_failed"
    UNHEALTHY = "unhealthy"
    SUPERSEDED = "superseded"
    ROLLED_BACK = "rolled_back"
    FAILED_BEFORE = "failed_before"


@dataclass
class Download:
    manifest: ModelManifest
    path: Path
    have: set[int] = field(default_factory=set)
    last_ns: int = 0  # when the manifest was accepted or a chunk last written (updater clock)

    @property
    def complete(self) -> bool:
        return len(self.have) == len(self.manifest.chunk_sha256)


@dataclass(frozen=True, slots=True)
class Ready:
    """A loaded, health-checked policy waiting to be swapped in between steps."""

    policy: Policy
    installed: Installed


def health_check(policy: Policy, probe: Observation, shape: tuple[int, int]) -> str | None:
    """None when ``policy`` gives a finite (1, H, D) output on ``probe``, else why not."""
    try:
        out = np.asarray(policy.infer([probe]))
    except Exception as exc:  # noqa: BLE001 - any failure of foreign weights is a failed check
        return f"infer raised {exc!r}"
    if out.shape != (1, *shape):
        return f"output shape {out.shape}, expected {(1, *shape)}"
    if not np.isfinite(out).all():
        return "output is not finite"
    return None


class ModelUpdater:
    """Receives releases of one model for one robot; not thread-safe except :meth:`finish`,
    which the agent runs in a worker thread while the loop keeps going."""

    def __init__(self, store: ModelStore, name: str, *, installed: int, loader: Loader,
                 probe: Observation, shape: tuple[int, int], max_bytes: int = 256 << 20,
                 clock: Callable[[], int] = time.time_ns, epoch: int = 0,
                 max_version_step: int = MAX_VERSION_STEP) -> None:
        self.store = store
        self.name = name
        self.installed = installed
        self.epoch = epoch
        self.max_version_step = max_version_step
        self.loader = loader
        self.probe = probe
        self.shape = shape
        self.max_bytes = max_bytes
        self._clock = clock
        self._download: Download | None = None
        # (epoch, version) of releases that failed to load or in service: never again
        self._failed: set[tuple[int, int]] = set()
        self.results: Counter[str] = Counter()
        store.clean_partials(name)

    def _count(self, result: UpdateResult, detail: str = "") -> UpdateResult:
        self.results[result.value] += 1
        if result not in (UpdateResult.ACCEPTED, UpdateResult.CHUNK_OK, UpdateResult.INSTALLED):
            log.warning("model update %s: %s", result.value, detail)
        return result

    def _outlived(self) -> bool:
        """Drop an open download whose manifest has expired: a release is not installed after
        its expiry, however it was delayed (missed chunks, a robot offline for days)."""
        download = self._download
        if download is None or download.manifest.expires_ns > self._clock():
            return False
        self._abort(UpdateResult.EXPIRED, f"download of v{download.manifest.version} outlived "
                    f"its manifest ({len(download.have)} of "
                    f"{len(download.manifest.chunk_sha256)} chunks)")
        return True

    def on_manifest(self, manifest: ModelManifest, role: Role = "release") -> UpdateResult:
        """Check a verified manifest (signed by a ``role`` key) and start its download when it
        qualifies."""
        self._outlived()
        if manifest.name != self.name:
            return self._count(UpdateResult.OTHER_MODEL, repr(manifest.name))
        refused = self._order(manifest, role)
        if refused is not None:
            return refused
        if (manifest.epoch, manifest.version) in self._failed:
            return self._count(UpdateResult.FAILED_BEFORE, f"v{manifest.version}")
        current = self._download
        if current is not None and (manifest.epoch, manifest.version) <= (
                current.manifest.epoch, current.manifest.version):
            return self._count(UpdateResult.STALE_VERSION,
                               f"v{manifest.version} <= downloading v{current.manifest.version}")
        if manifest.expires_ns <= self._clock():
            return self._count(UpdateResult.EXPIRED, f"v{manifest.version}")
        if manifest.size > self.max_bytes:
            return self._count(UpdateResult.TOO_LARGE, f"{manifest.size} > {self.max_bytes}")
        if manifest.size == 0 or len(manifest.chunk_sha256) != math.ceil(
                manifest.size / manifest.chunk_size):
            return self._count(UpdateResult.BAD_MANIFEST, "chunk count does not match the size")
        if current is not None:
            self._abort(UpdateResult.SUPERSEDED, f"by v{manifest.version}")
        path = self.store.part_path(self.name, manifest.version)
        with open(path, "wb") as handle:
            handle.truncate(manifest.size)
        self._download = Download(manifest, path, last_ns=self._clock())
        return self._count(UpdateResult.ACCEPTED, "")

    def _order(self, manifest: ModelManifest, role: Role) -> UpdateResult | None:
        """Refuse a manifest out of order for its signer (counted), else None."""
        epoch, version = manifest.epoch, manifest.version
        if role == "root":
            # the recovery: a new epoch, any version; a recovery seen before is stale
            if epoch <= self.epoch:
                return self._count(UpdateResult.STALE_EPOCH,
                                   f"recovery epoch {epoch} <= installed epoch {self.epoch}")
            return None
        if epoch < self.epoch:
            return self._count(UpdateResult.STALE_EPOCH,
                               f"epoch {epoch} < installed epoch {self.epoch}")
        if epoch > self.epoch:
            return self._count(UpdateResult.NEEDS_ROOT,
                               f"epoch {epoch} > installed epoch {self.epoch}: only the offline "
                               "root key opens an epoch")
        if version <= self.installed:
            return self._count(UpdateResult.STALE_VERSION,
                               f"v{version} <= installed v{self.installed}")
        if self.installed and version - self.installed > self.max_version_step:
            return self._count(UpdateResult.VERSION_JUMP,
                               f"v{version} is more than {self.max_version_step} above "
                               f"installed v{self.installed}")
        return None

    def on_chunk(self, chunk: ModelChunk) -> UpdateResult:
        """Write a verified chunk if it belongs to the download and hashes right."""
        if self._outlived():
            return UpdateResult.EXPIRED
        download = self._download
        if download is None or chunk.name != self.name or \
                chunk.version != download.manifest.version:
            return self._count(UpdateResult.UNEXPECTED_CHUNK, f"{chunk.name} v{chunk.version}")
        manifest = download.manifest
        if chunk.index >= len(manifest.chunk_sha256):
            return self._count(UpdateResult.UNEXPECTED_CHUNK, f"index {chunk.index}")
        offset = chunk.index * manifest.chunk_size
        expected = min(manifest.chunk_size, manifest.size - offset)
        if len(chunk.data) > expected:
            # More bytes than declared is never a transmission error: drop the whole release.
            self._abort(UpdateResult.OVERSIZE_CHUNK,
                        f"chunk {chunk.index} has {len(chunk.data)} bytes, declared {expected}")
            return UpdateResult.OVERSIZE_CHUNK
        if chunk.index in download.have:
            return self._count(UpdateResult.DUPLICATE_CHUNK, f"index {chunk.index}")
        if len(chunk.data) != expected or \
                hashlib.sha256(chunk.data).hexdigest() != manifest.chunk_sha256[chunk.index]:
            return self._count(UpdateResult.BAD_CHUNK_HASH, f"index {chunk.index}")
        fd = os.open(download.path, os.O_WRONLY)
        try:
            os.pwrite(fd, chunk.data, offset)
        finally:
            os.close(fd)
        download.have.add(chunk.index)
        download.last_ns = self._clock()
        return self._count(UpdateResult.CHUNK_OK, "")

    def progress(self) -> dict[str, int | float] | None:
        """The open download, or None: ``version``, ``chunks`` written of ``total``, and
        ``idle_s`` since the last one (a stalled rollout: publish the release again)."""
        download = self._download
        if download is None:
            return None
        return {"version": download.manifest.version, "chunks": len(download.have),
                "total": len(download.manifest.chunk_sha256),
                "idle_s": round(max(0, self._clock() - download.last_ns) / 1e9, 3)}

    def take(self) -> Download | None:
        """Hand over the download once every chunk is in (then :meth:`finish` it)."""
        download = self._download
        if download is None or not download.complete:
            return None
        self._download = None
        return download

    def finish(self, download: Download) -> tuple[UpdateResult, Ready | None]:
        """Commit, load and health-check a complete download; blocking (run in a thread)."""
        manifest = download.manifest
        try:
            path = self.store.commit_part(self.name, manifest.version, manifest.sha256)
        except ValueError as exc:
            self._failed.add((manifest.epoch, manifest.version))
            return self._count(UpdateResult.BAD_FILE_HASH, str(exc)), None
        try:
            policy = self.loader(path)
        except Exception as exc:  # noqa: BLE001 - foreign file: any loader failure is a reject
            path.unlink(missing_ok=True)
            self._failed.add((manifest.epoch, manifest.version))
            return self._count(UpdateResult.LOAD_FAILED, repr(exc)), None
        problem = health_check(policy, self.probe, self.shape)
        if problem is not None:
            path.unlink(missing_ok=True)
            self._failed.add((manifest.epoch, manifest.version))
            return self._count(UpdateResult.UNHEALTHY, problem), None
        installed = self.store.point(self.name, manifest.version, path, manifest.sha256,
                                     previous=self.installed or None, epoch=manifest.epoch)
        self.store.prune(self.name, {manifest.version, self.installed})
        self.installed = manifest.version
        self.epoch = manifest.epoch
        return self._count(UpdateResult.INSTALLED, ""), Ready(policy, installed)

    def rolled_back(self, to: Installed | None, failed_version: int) -> None:
        """Record a rollback to ``to`` after the new model failed in service."""
        self._failed.add((self.epoch, failed_version))
        if to is not None:
            # the epoch stays: a recovery still stands when its release fails in service
            self.store.point(self.name, to.version, to.path, to.sha256, previous=None,
                             epoch=self.epoch)
            self.installed = to.version
        self._count(UpdateResult.ROLLED_BACK, f"v{failed_version} failed in service")

    def _abort(self, result: UpdateResult, detail: str) -> None:
        download = self._download
        self._download = None
        if download is not None:
            download.path.unlink(missing_ok=True)
        self._count(result, detail)
