"""A blocking, thread-safe front for :class:`EdgeAgent`, for robot control loops without asyncio.

The agent lives on its own event loop in a background thread; ``act`` hands the observation
over and blocks until that step's action is decided (by its deadline, so a timeout here only
guards against a wedged loop). Calls from several threads are serialised by the loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from types import TracebackType

from edge_agent.agent import ActionResult, EdgeAgent
from vlabus.policy import Observation

AgentFactory = Callable[[], Awaitable[EdgeAgent]]


class ThreadedAgent:
    """Starts ``factory()`` on a private loop; use as a context manager or call :meth:`close`."""

    def __init__(self, factory: AgentFactory, *, start_timeout: float = 30.0) -> None:
        self._factory = factory
        self._ready: Future[EdgeAgent] = Future()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name="edge-agent", daemon=True)
        self._thread.start()
        self.agent = self._ready.result(timeout=start_timeout)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            agent = await self._factory()
        except Exception as exc:  # noqa: BLE001 - handed to the thread waiting in __init__
            self._ready.set_exception(exc)
            return
        self._ready.set_result(agent)
        try:
            await self._stop.wait()
        finally:
            await agent.close()
            await agent.transport.close()

    def act(self, observation: Observation, *, safety_critical: bool = False,
            timeout: float | None = None) -> ActionResult:
        """Blocking :meth:`EdgeAgent.act`; safe to call from any thread but the agent's."""
        loop = self._loop
        if loop is None or not self._thread.is_alive():
            raise RuntimeError("the agent's loop is not running")
        with self._lock:  # one step at a time, in call order
            future = asyncio.run_coroutine_threadsafe(
                self.agent.act(observation, safety_critical=safety_critical), loop)
            return future.result(timeout)

    def close(self, timeout: float = 10.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> ThreadedAgent:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
