"""A real worker serving on any bus, for the worker tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager

from cloud_workers.metrics import WorkerMetrics
from cloud_workers.runner import PolicyRunner
from cloud_workers.tasks import default_handlers
from cloud_workers.worker import Worker, WorkerConfig, open_worker
from tests.support.aio import run
from tests.support.clock import MS
from tests.support.keys import KeyDir
from vlabus.bus.memory import reset_memory
from vlabus.bus.transport import TransportOptions
from vlabus.policy import Policy
from vlabus.policy.reference import ReferencePolicy


def small_policy() -> ReferencePolicy:
    """A seeded reference policy small enough for a test: 4 steps of 3 values."""
    return ReferencePolicy.seeded(device="cpu", width=16, horizon=4, action_dim=3, version=7)


@asynccontextmanager
async def serving(url: str, keydir: KeyDir, policies: dict[str, Policy] | None = None,
                  worker_id: str = "worker-1", options: TransportOptions | None = None,
                  **cfg: object) -> AsyncIterator[Worker]:
    """A worker of the ``pool`` group on ``url``, ready when entered, stopped on exit;
    ``options`` (credentials on an authenticating broker) go to the transport."""
    policies = policies or {"reference": small_policy()}
    runner = PolicyRunner(policies, default_handlers({}))
    runner.handlers = default_handlers(runner.models)
    config = WorkerConfig(worker_id=worker_id, group="pool",
                          **{"max_delay_ns": 1 * MS, **cfg})  # type: ignore[arg-type]
    worker = await open_worker(url, keydir.signers[worker_id], keydir.ring, runner,
                               config=config, metrics=WorkerMetrics(), options=options)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(worker.ready.wait(), 30)
    try:
        yield worker
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 30)
        finally:
            await worker.transport.close()


def run_on_memory(body: Callable[[str], Coroutine[object, object, None]],
                  timeout: float = 60.0) -> None:
    """Run ``body(url)`` on a fresh ``memory://`` bus, released afterwards."""
    url = f"memory://{uuid.uuid4().hex}"
    try:
        run(body(url), timeout)
    finally:
        reset_memory(url.removeprefix("memory://"))
