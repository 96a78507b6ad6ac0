"""The robot's model feed: signed manifests and chunks in, installs off the loop, rollback.

Messages on the model topics are verified (a ``release`` key signs both), handed to the
:class:`~edge_agent.updates.ModelUpdater` (manifest checks, capped chunk download), and a
complete download is installed on a worker thread, then staged on the
:class:`~edge_agent.local.LocalPolicy` to be swapped in between two steps. When the new model
fails in service the agent rolls back and tells the feed, which points the store back too.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from edge_agent.local import LocalPolicy
from edge_agent.metrics import EdgeMetrics
from edge_agent.store import Installed, sha256_file
from edge_agent.updates import Download, ModelUpdater, UpdateResult
from schemas.messages import ModelChunk, ModelManifest
from schemas.topics import model_chunk_topic, model_manifest_topic
from security.keys import Keyring
from security.replay import ReplayGuard
from vlabus.bus.transport import Message
from vlabus.inbound import Rejections, accept
from vlabus.wire import Decoder


class ModelFeed:
    """Takes releases of ``updater.name`` for ``local``; run on the agent's event loop."""

    def __init__(self, updater: ModelUpdater, local: LocalPolicy, keyring: Keyring, *,
                 metrics: EdgeMetrics, rejections: Rejections) -> None:
        self.updater = updater
        self.local = local
        self.metrics = metrics
        self.rejections = rejections
        self.topics = (model_manifest_topic(updater.name), model_chunk_topic(updater.name))
        self._decoder = Decoder(keyring, ReplayGuard())
        self._installs: set[asyncio.Task[None]] = set()
        # read when Prometheus scrapes
        metrics.download_missing.set_function(lambda: self._progress("missing"))
        metrics.download_idle.set_function(lambda: self._progress("idle_s"))

    def handle(self, message: Message) -> None:
        """Verify one model message and act on it; never raises for bad input."""
        received = accept(self._decoder, message, self.rejections)
        if received is None:
            return
        body = received.message
        updater = self.updater
        if isinstance(body, ModelManifest):
            self._count(updater.on_manifest(body, received.role))
        elif isinstance(body, ModelChunk):
            self._count(updater.on_chunk(body))
            download = updater.take()
            if download is not None:
                task = asyncio.create_task(self._install(download))
                self._installs.add(task)
                task.add_done_callback(self._installs.discard)

    async def _install(self, download: Download) -> None:
        result, ready = await asyncio.to_thread(self.updater.finish, download)
        self._count(result)
        if ready is not None:
            self.local.stage(ready.policy, ready.installed.version)

    def rolled_back(self, failed_version: int) -> None:
        """The agent went back to its previous policy: point the store back at it too."""
        updater = self.updater
        current = updater.store.active(updater.name)
        target = None
        if current is not None and current.previous is not None:
            path = updater.store.path_of(updater.name, current.previous)
            if path.is_file():
                target = Installed(updater.name, current.previous, path, sha256_file(path))
        updater.rolled_back(target, failed_version)
        self._count(UpdateResult.ROLLED_BACK)

    async def settle(self) -> None:
        """Wait for model installs in progress (tests, orderly shutdown)."""
        while self._installs:
            await asyncio.gather(*self._installs, return_exceptions=True)

    def counters(self) -> dict[str, Any]:
        return {"model_updates": dict(self.updater.results),
                "model_download": self.updater.progress()}

    async def close(self) -> None:
        """Cancel installs in progress."""
        for task in list(self._installs):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _count(self, result: UpdateResult) -> None:
        self.metrics.model_updates.labels(result.value).inc()

    def _progress(self, key: str) -> float:
        progress = self.updater.progress()
        if progress is None:
            return 0.0
        if key == "missing":
            return float(progress["total"] - progress["chunks"])
        return float(progress[key])
