"""The contract suite's view of a bus: how to reach it, authenticate, stop and start it."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.aio import TIMEOUT
from vlabus.bus.transport import Message, Transport, TransportOptions, open_transport

_names = itertools.count()


@dataclass
class Bus:
    """A bus under test. ``stop``/``start`` are None where there is no connection to lose
    (memory); ``unreachable`` is a URL of this kind where nothing listens (None for memory)."""

    kind: str
    url: str
    options: Callable[..., TransportOptions]
    stop: Callable[[], None] | None = None
    start: Callable[[], None] | None = None
    unreachable: str | None = None
    opened: list[Transport] = field(default_factory=list)

    @property
    def restart(self) -> Callable[[], None] | None:
        """Stop and start again on the same address, or None (see ``stop``)."""
        stop, start = self.stop, self.start
        if stop is None or start is None:
            return None

        def restart() -> None:
            stop()
            start()
        return restart

    def name(self, identity: str = "worker-1") -> str:
        """A client id unique in this test run."""
        return f"{identity}-{next(_names)}"

    async def connect(self, identity: str = "worker-1", **options: Any) -> Transport:
        """A connected transport (closed by :meth:`run`); ``options`` go to TransportOptions."""
        transport = await open_transport(self.url, self.options(self.name(identity), **options))
        self.opened.append(transport)
        return transport

    def run(self, body: Callable[[], Awaitable[None]]) -> None:
        """Run ``body`` on a fresh loop; close every transport it opened, whatever happens."""
        async def main() -> None:
            try:
                await asyncio.wait_for(body(), 3 * TIMEOUT)
            finally:
                for transport in self.opened:
                    await transport.close()

        asyncio.run(main())


async def settle(publisher: Transport, subscriber: Transport, topic: str) -> None:
    """Publish on ``topic`` until ``subscriber`` sees one: its subscription is live (the hub
    and the broker apply subscriptions asynchronously). Drains the probes."""
    for attempt in range(200):
        await publisher.publish(topic, b"probe", qos=0)
        try:
            message = await asyncio.wait_for(subscriber.receive(), 0.05 * (1 + attempt // 20))
        except TimeoutError:
            continue
        assert message.topic == topic
        return
    raise AssertionError(f"subscription to {topic!r} never became live")


async def try_recv(transport: Transport, timeout: float) -> Message | None:
    """The next message, or None after ``timeout`` seconds (for draining, never to assert
    that nothing arrived: publish a marker for that)."""
    try:
        return await asyncio.wait_for(transport.receive(), timeout)
    except TimeoutError:
        return None


async def until_marker(transport: Transport, marker: bytes) -> list[Message]:
    """Everything ``transport`` receives before the message whose payload is ``marker``."""
    seen: list[Message] = []
    while True:
        message = await asyncio.wait_for(transport.receive(), TIMEOUT)
        if bytes(message.payload) == marker:
            return seen
        seen.append(message)
