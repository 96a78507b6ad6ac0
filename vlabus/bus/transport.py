"""The seam between vlabus and a message bus: one small protocol, three adapters.

``open_transport(url, options)`` picks the adapter from the URL scheme:

* ``memory://NAME`` — in-process bus for unit tests, same semantics (wildcards, shared groups,
  retained messages, wills).
* ``mqtt://HOST:PORT`` / ``mqtts://HOST:PORT`` — paho-mqtt 2.x speaking MQTT 5.
* ``zmq://HOST:PORT`` — the vlabus ZeroMQ hub (``vlabus hub``).

Adapters import their vendor library inside their own module only. Vendor messages become
:class:`Message` on arrival and land in one bounded :class:`Inbox` per transport.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from schemas.errors import PublishRejected, SubscribeRejected, TransportError
from schemas.topics import group_problem, topic_filter_problem, topic_name_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    """One message taken off the bus; ``payload`` is the exact bytes received."""

    topic: str
    payload: bytes | memoryview
    received_ns: int


@dataclass(frozen=True, slots=True)
class Will:
    """Published by the broker (or hub) when the client vanishes without closing."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca: Path
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """CurveZMQ: the hub's public key and this client's key pair (Z85 text)."""

    server_public: bytes
    public: bytes
    secret: bytes


@dataclass(frozen=True)
class TransportOptions:
    client_id: str
    inbox_size: int = 4096
    max_payload: int = 16 << 20
    will: Will | None = None
    username: str | None = None
    password: str | None = None
    tls: TlsFiles | None = None
    curve: CurveKeys | None = None
    keepalive_s: int = 10
    outbox_size: int = 1024
    extra: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Transport(Protocol):
    """What the rest of vlabus needs from a bus."""

    url: str
    #: received messages, in order; a consumer on the loop thread may take them as they
    #: arrive (:attr:`Inbox.direct`)
    inbox: Inbox

    @property
    def connected(self) -> bool: ...

    async def publish(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview,
        *,
        qos: int = 0,
        retain: bool = False,
        expiry_s: float | None = None,
    ) -> None:
        """Send ``payload``. QoS 1 waits for the broker's acknowledgement and raises
        :class:`~schemas.errors.PublishRejected` with its reason code when refused. An invalid
        topic name raises ``PublishRejected`` (0x90) before anything is sent (:func:`check_topic`).
        """

    def publish_nowait(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview,
        *,
        qos: int = 0,
        retain: bool = False,
        expiry_s: float | None = None,
    ) -> asyncio.Future[None]:
        """Send ``payload`` now, on the calling (loop) thread, without waiting for anything.

        Returns a future that completes when :meth:`publish` would return: at once for QoS 0,
        on the acknowledgement for QoS 1 (with the same exceptions). Errors in the arguments,
        or a closed transport, raise here. For a caller that must not wait a loop iteration
        before the bytes leave (a worker's replies): a task wrapped around :meth:`publish`
        starts one iteration later, and awaiting the acknowledgement costs more than the work.
        """

    async def subscribe(self, pattern: str, *, group: str | None = None, qos: int = 1) -> None:
        """Receive messages matching ``pattern``; with ``group``, share them round-robin with
        the other members of that group (MQTT ``$share/group/pattern``). A refused or invalid
        subscription raises :class:`~schemas.errors.SubscribeRejected` (0x8F for an invalid
        filter or group, checked before anything is sent: :func:`check_filter`)."""

    async def recv(self) -> Message:
        """The next message; raises :class:`TransportError` once closed."""

    def messages(self) -> AsyncIterator[Message]:
        """Iterate over received messages until the transport closes."""

    def counters(self) -> dict[str, int]:
        """Monotonic counters, e.g. inbox drops and reconnects."""

    async def close(self) -> None:
        """Disconnect cleanly (no will is published)."""


class Inbox:
    """A bounded queue of received messages; when full the oldest is dropped and counted.

    ``put`` must run on the loop's thread; vendor threads call ``put_threadsafe``.

    ``direct``, when set, is offered each message as it arrives while nothing waits in the
    queue, on the loop thread, inside the adapter's receive callback: it returns True when it
    has taken the message, False to leave it queued. It lets a latency-critical consumer (an
    idle worker) skip the wake-up of the task awaiting :meth:`get`; order is kept because it
    is never offered a message while older ones wait.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._loop = loop
        self._items: deque[Message] = deque()
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.dropped = 0
        self.received = 0
        self.direct: Callable[[Message], bool] | None = None

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


def now_ns() -> int:
    return time.time_ns()


def done_future(loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    """An already completed future: ``publish_nowait``'s answer when there is nothing to wait
    for (QoS 0, or queued in the outbox to be sent after a reconnect)."""
    future: asyncio.Future[None] = loop.create_future()
    future.set_result(None)
    return future


async def open_transport(url: str, options: TransportOptions) -> Transport:
    """Connect to the bus at ``url`` (``memory://``, ``mqtt://``, ``mqtts://``, ``zmq://``)."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from vlabus.bus.memory import open_memory

        return await open_memory(url, options)
    if scheme in ("mqtt", "mqtts"):
        from vlabus.bus.mqtt import open_mqtt

        return await open_mqtt(url, options)
    if scheme == "zmq":
        from vlabus.bus.zmq import open_zmq

        return await open_zmq(url, options)
    raise TransportError(f"unknown bus URL scheme in {url!r}; use memory://, mqtt://, zmq://")


def check_qos(qos: int) -> None:
    """vlabus speaks QoS 0 and 1 on every bus; anything else is the caller's error."""
    if qos not in (0, 1):
        raise TransportError(f"qos {qos!r} not supported; use 0 or 1")


def check_topic(topic: str) -> None:
    """Raise ``PublishRejected`` (0x90 Topic Name invalid) unless ``topic`` is a valid MQTT
    topic name. Every adapter calls it first: Mosquitto answers a bad name by dropping the
    connection, with everything in flight on it."""
    problem = topic_name_problem(topic)
    if problem is not None:
        raise PublishRejected(topic, 0x90, f"Topic Name invalid: it {problem}")


def check_filter(pattern: str, group: str | None) -> None:
    """Raise ``SubscribeRejected`` (0x8F Topic Filter invalid) unless ``pattern`` is a valid
    MQTT topic filter and ``group``, when given, a valid share name (no ``/``, ``+``, ``#``)."""
    problem = topic_filter_problem(pattern)
    if problem is None and group:
        problem = group_problem(group)
    if problem is not None:
        raise SubscribeRejected(pattern, 0x8F, f"Topic Filter invalid: it {problem}")
