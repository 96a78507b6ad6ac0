"""Running coroutines in tests: one loop per test, an overall timeout, bounded waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

TIMEOUT = 10.0
"""Seconds a single expected message or condition may take on a loaded 2-core machine."""


def run(main: Coroutine[Any, Any, T] | Callable[[], Coroutine[Any, Any, T]],
        timeout: float = 30.0) -> T:
    """Run ``main`` (a coroutine, or a function returning one) on a fresh event loop.

    Fails with ``TimeoutError`` after ``timeout`` seconds instead of hanging the suite.
    """
    coro = main() if callable(main) else main
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def eventually(predicate: Callable[[], bool], timeout: float = TIMEOUT, *,
                     nudge: Callable[[], Awaitable[object]] | None = None,
                     interval: float = 0.005) -> None:
    """Wait until ``predicate()`` holds, checking every ``interval`` seconds.

    ``nudge``, when given, is awaited before each check (e.g. to publish a probe). Raises
    ``AssertionError`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        if nudge is not None:
            await nudge()
        await asyncio.sleep(interval)


async def recv(transport: Any, timeout: float = TIMEOUT) -> Any:
    """The next message of ``transport``, or ``TimeoutError`` after ``timeout`` seconds."""
    return await asyncio.wait_for(transport.receive(), timeout)


async def collect(transport: Any, count: int, timeout: float = TIMEOUT) -> list[Any]:
    """Receive ``count`` messages or fail after ``timeout`` seconds in all."""
    received: list[Any] = []

    async def take() -> None:
        while len(received) < count:
            received.append(await transport.receive())

    await asyncio.wait_for(take(), timeout)
    return received
