"""A transport laid over another one: what both ends of the direct data plane build on.

:class:`Overlay` is a :class:`~vlabus.bus.transport.Transport` that delegates publishing,
subscriptions and the connection to the transport it wraps (the hub or broker), and owns one
inbox that receives both what that transport delivers (through its ``consume``) and what the
overlay's own sockets receive. The consume API (pull and push) is the inbox's, so a consumer
cannot tell, and need not care, which path a message took. Subclasses route some publishes
elsewhere by overriding :meth:`publish_nowait`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from vlabus.bus.inbox import Inbox, Receiving
from vlabus.bus.transport import Message, Transport


class Overlay(Receiving):
    """Delegates to ``inner``; subclasses add sockets that :meth:`deliver` into the inbox."""

    def __init__(self, inner: Transport, *, inbox_size: int = 4096) -> None:
        self.inner = inner
        self.url = inner.url
        self._loop = asyncio.get_running_loop()
        self._inbox = Inbox(self._loop, inbox_size)
        self.closed = False
        while (waiting := inner.receive_nowait()) is not None:
            self._inbox.put(waiting)
        inner.consume(self.deliver)

    @property
    def options(self) -> Any:
        return getattr(self.inner, "options", None)

    def deliver(self, message: Message) -> bool:
        """Hand ``message`` to this transport's consumers (the wrapped transport's and the
        overlay's own sockets both arrive here)."""
        self._inbox.put(message)
        return True

    @property
    def connected(self) -> bool:
        return self.inner.connected

    async def publish(self, topic: str, payload: bytes | bytearray | memoryview, *, qos: int = 0,
                      retain: bool = False, expiry_s: float | None = None) -> None:
        await asyncio.shield(self.publish_nowait(topic, payload, qos=qos, retain=retain,
                                                 expiry_s=expiry_s))

    def publish_nowait(self, topic: str, payload: bytes | bytearray | memoryview, *,
                       qos: int = 0, retain: bool = False,
                       expiry_s: float | None = None) -> asyncio.Future[None]:
        return self.inner.publish_nowait(topic, payload, qos=qos, retain=retain,
                                         expiry_s=expiry_s)

    async def subscribe(self, pattern: str, *, group: str | None = None, qos: int = 1) -> None:
        await self.inner.subscribe(pattern, group=group, qos=qos)

    async def unsubscribe(self, pattern: str, *, group: str | None = None) -> None:
        await self.inner.unsubscribe(pattern, group=group)

    def own_counters(self) -> dict[str, int]:
        """The overlay's counters, added to the wrapped transport's in :meth:`counters`."""
        return {}

    def counters(self) -> dict[str, int]:
        return {**self.inner.counters(), **self.own_counters(),
                "direct_inbox_dropped": self._inbox.dropped}

    def close_sockets(self) -> None:
        """Close the overlay's own sockets (once)."""

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.close_sockets()
        self.inner.consume(None)
        await self.inner.close()
        self._inbox.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.close_sockets()
        self.inner.abort()
        self._inbox.close()
