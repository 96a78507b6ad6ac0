"""The bounded inbox every adapter delivers into, and the consume API read from it.

:class:`Receiving` is the consuming half of :class:`~vlabus.bus.transport.Transport` (pull:
``receive``, ``receive_nowait``, ``async for``; push: ``consume``), written once for the three
adapters; see the :mod:`vlabus.bus.transport` docstring for how the two styles share it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator

from schemas.errors import TransportError
from vlabus.bus.transport import Handler, Message

log = logging.getLogger(__name__)


class Inbox:
    """A bounded queue of received messages; when full the oldest is dropped and counted.

    ``put`` must run on the loop's thread; vendor threads call ``put_threadsafe``.

    ``direct``, when set (through :meth:`Receiving.consume`), is offered each message as it
    arrives while nothing waits in the queue, on the loop thread, inside the adapter's receive
    callback: it returns True when it has taken the message, False to leave it queued. Order
    is kept because it is never offered a message while older ones wait.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._loop = loop
        self._items: deque[Message] = deque()
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.dropped = 0
        self.received = 0
        self.direct: Handler | None = None

    def put(self, message: Message) -> None:
        if self._closed:
            return
        self.received += 1
        direct = self.direct
        if direct is not None and not self._items:
            try:
                if direct(message):
                    return
            except Exception:  # a consumer's bug must not stop the adapter's receive loop
                self.dropped += 1
                log.exception("inbox consumer failed on a message from %r; dropped", message.topic)
                return
        if len(self._items) >= self._limit:
            self._items.popleft()
            self.dropped += 1
        self._items.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def put_threadsafe(self, message: Message) -> None:
        self._loop.call_soon_threadsafe(self.put, message)

    def close(self) -> None:
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def limit(self) -> int:
        return self._limit

    async def get(self) -> Message:
        while not self._items:
            if self._closed:
                raise TransportError("transport closed")
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def get_nowait(self) -> Message | None:
        return self._items.popleft() if self._items else None


async def iterate(inbox: Inbox) -> AsyncIterator[Message]:
    """The body of every adapter's ``messages()``."""
    while True:
        try:
            yield await inbox.get()
        except TransportError:
            return


class Receiving:
    """The consume API over ``self._inbox`` (set by the adapter's ``__init__``)."""

    _inbox: Inbox

    async def receive(self) -> Message:
        """The next message (pull); raises :class:`TransportError` once closed."""
        return await self._inbox.get()

    def receive_nowait(self) -> Message | None:
        """The next message if one waits, else None."""
        return self._inbox.get_nowait()

    def consume(self, handler: Handler | None) -> None:
        """Offer each arriving message to ``handler`` first, on the loop thread, while nothing
        waits in the inbox; it returns True when it took the message. ``None`` stops it."""
        self._inbox.direct = handler

    async def __aiter__(self) -> AsyncIterator[Message]:
        """Messages in order until the transport closes."""
        inbox = self._inbox
        while True:
            try:
                yield await inbox.get()
            except TransportError:
                return
