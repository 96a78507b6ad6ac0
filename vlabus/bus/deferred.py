"""A transport that exists before its bus does: a robot acts from its first step.

``DeferredTransport`` is a :class:`~vlabus.bus.transport.Transport` whose connection is opened in
the background by :func:`~vlabus.bus.wait.open_when_up`. Until the bus answers it reports
``connected = False`` (the edge agent then acts on its local policy, cause ``disconnected``),
remembers subscriptions, keeps QoS 1 publishes in a small bounded queue (a robot's status
announcement; like an adapter's outbox, ``publish`` returns at once) and drops QoS 0 ones,
counting them. When the bus appears it subscribes, sends
what it kept, and from then on delegates everything to the real adapter, whose own reconnects
and outbox take over. Messages reach this transport's inbox straight from the adapter's
receive callback (the adapter's ``consume``), so there is no extra hop and the consumer's own
``consume`` handler still works.

``await DeferredTransport.start(url, options, first_wait_s=1.0)`` returns once connected or once
``first_wait_s`` has passed, whichever is first: a robot on a healthy network starts connected,
one without a network starts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from schemas.errors import TransportError
from vlabus.bus.inbox import Inbox, Receiving
from vlabus.bus.session import check_filter, check_qos, check_topic
from vlabus.bus.transport import Message, Transport, TransportOptions, done_future
from vlabus.bus.wait import open_when_up

log = logging.getLogger(__name__)


class DeferredTransport(Receiving):
    """See the module docstring. Build with :meth:`start`; use on one event loop."""

    def __init__(self, url: str, options: TransportOptions, *, what: str,
                 pending_limit: int = 64, **wait: Any) -> None:
        self.url = url
        self.options = options
        self._loop = asyncio.get_running_loop()
        self._inbox = Inbox(self._loop, options.inbox_size)
        self._real: Transport | None = None
        self._subscriptions: list[tuple[str, str | None, int]] = []
        self._pending: deque[tuple[str, bytes, bool]] = deque()
        self._pending_limit = pending_limit
        self._counts = {"dropped_before_connect": 0, "sent_after_connect": 0}
        self._closed = False
        self.up = asyncio.Event()
        #: the background connection; done with an exception when the wait ended in an error
        #: (``--connect-timeout``, a refusal), which :attr:`failure` then holds
        self.connecting = asyncio.create_task(self._connect(what, wait), name=f"connect {url}")
        self.failure: BaseException | None = None
        self.connecting.add_done_callback(self._connect_done)

    @classmethod
    async def start(cls, url: str, options: TransportOptions, *, what: str,
                    first_wait_s: float = 1.0, **wait: Any) -> DeferredTransport:
        """A transport that is connecting; returns when connected or after ``first_wait_s``.
        ``wait`` goes to :func:`open_when_up` (``timeout_s``, ``backoff``, ``opener``)."""
        transport = cls(url, options, what=what, **wait)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(transport.up.wait()), first_wait_s)
        if transport.failure is not None:  # a refusal, or --connect-timeout already
            raise transport.failure
        return transport

    def _connect_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.failure = task.exception()
            log.error("%s: giving up on %s: %s", self.options.client_id, self.url, self.failure)

    async def _connect(self, what: str, wait: dict[str, Any]) -> None:
        real = await open_when_up(self.url, self.options, what=what, **wait)
        if self._closed:
            await real.close()
            return
        real.consume(self._forward)
        for pattern, group, qos in self._subscriptions:
            await real.subscribe(pattern, group=group, qos=qos)
        self._real = real
        while self._pending:
            topic, payload, retain = self._pending.popleft()
            try:
                await real.publish(topic, payload, qos=1, retain=retain)
                self._counts["sent_after_connect"] += 1
            except TransportError as exc:
                log.warning("%s: %r kept while the bus was down was refused: %s",
                            self.options.client_id, topic, exc)
        self.up.set()

    def _forward(self, message: Message) -> bool:
        self._inbox.put(message)
        return True

    @property
    def connected(self) -> bool:
        return self._real is not None and self._real.connected

    async def publish(self, topic: str, payload: bytes | bytearray | memoryview, *, qos: int = 0,
                      retain: bool = False, expiry_s: float | None = None) -> None:
        await self.publish_nowait(topic, payload, qos=qos, retain=retain, expiry_s=expiry_s)

    def publish_nowait(self, topic: str, payload: bytes | bytearray | memoryview, *,
                       qos: int = 0, retain: bool = False,
                       expiry_s: float | None = None) -> asyncio.Future[None]:
        if self._real is not None:
            return self._real.publish_nowait(topic, payload, qos=qos, retain=retain,
                                              expiry_s=expiry_s)
        if self._closed:
            raise TransportError("transport closed")
        check_topic(topic)
        check_qos(qos)
        # like an adapter's outbox while reconnecting: QoS 1 is kept and sent on connect
        if qos == 0 or len(self._pending) >= self._pending_limit:
            self._counts["dropped_before_connect"] += 1
        else:
            self._pending.append((topic, bytes(payload), retain))
        return done_future(self._loop)

    async def subscribe(self, pattern: str, *, group: str | None = None, qos: int = 1) -> None:
        check_filter(pattern, group)
        check_qos(qos)
        self._subscriptions.append((pattern, group, qos))
        if self._real is not None:
            await self._real.subscribe(pattern, group=group, qos=qos)

    async def unsubscribe(self, pattern: str, *, group: str | None = None) -> None:
        self._subscriptions = [s for s in self._subscriptions if (s[0], s[1]) != (pattern, group)]
        if self._real is not None:
            await self._real.unsubscribe(pattern, group=group)

    def counters(self) -> dict[str, int]:
        real = self._real.counters() if self._real is not None else {}
        return {**real, **self._counts, "inbox_dropped": self._inbox.dropped}

    async def close(self) -> None:
        self._closed = True
        self.connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError, TransportError, OSError):
            await self.connecting
        self._pending.clear()
        if self._real is not None:
            await self._real.close()
        self._inbox.close()

    def abort(self) -> None:
        """Vanish without closing: the real adapter's will is published, if it connected."""
        self._closed = True
        self.connecting.cancel()
        self._pending.clear()
        if self._real is not None:
            self._real.abort()
        self._inbox.close()
