"""In-process bus with MQTT semantics, for unit tests of logic.

Wildcards, shared groups (round-robin among members), retained messages and wills behave as on
a broker; there is no network and no serialisation beyond the bytes handed in.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from schemas.errors import TransportError
from schemas.topics import matches
from vlabus.bus.transport import (
    Inbox,
    Message,
    TransportOptions,
    check_filter,
    check_qos,
    check_topic,
    done_future,
    iterate,
    now_ns,
)


@dataclass
class _Group:
    members: list[MemoryTransport] = field(default_factory=list)
    turn: itertools.count[int] = field(default_factory=itertools.count)


class MemoryBroker:
    """The shared state behind every ``memory://NAME`` transport of one name."""

    def __init__(self) -> None:
        self.plain: list[tuple[str, MemoryTransport]] = []
        self.groups: dict[tuple[str, str], _Group] = {}
        self.retained: dict[str, bytes] = {}

    def deliver(self, topic: str, payload: bytes, retain: bool) -> None:
        if retain:
            if payload:
                self.retained[topic] = payload
            else:
                self.retained.pop(topic, None)
        received = now_ns()
        seen: set[int] = set()
        for pattern, client in self.plain:
            if id(client) not in seen and matches(pattern, topic):
                seen.add(id(client))
                client.inbox.put(Message(topic, payload, received))
        for (_, pattern), group in self.groups.items():
            if group.members and matches(pattern, topic):
                member = group.members[next(group.turn) % len(group.members)]
                member.inbox.put(Message(topic, payload, received))

    def detach(self, client: MemoryTransport) -> None:
        self.plain = [(p, c) for p, c in self.plain if c is not client]
        for group in self.groups.values():
            if client in group.members:
                group.members.remove(client)


_BROKERS: dict[str, MemoryBroker] = {}


def broker_for(name: str) -> MemoryBroker:
    """The broker behind ``memory://name`` (created on first use)."""
    return _BROKERS.setdefault(name, MemoryBroker())


def reset_memory(name: str) -> None:
    """Forget a named memory bus (tests)."""
    _BROKERS.pop(name, None)


class MemoryTransport:
    """A client of a :class:`MemoryBroker`."""

    def __init__(self, url: str, broker: MemoryBroker, options: TransportOptions) -> None:
        self.url = url
        self.options = options
        self._broker = broker
        self._loop = asyncio.get_running_loop()
        self.inbox = Inbox(self._loop, options.inbox_size)
        self._open = True

    @property
    def connected(self) -> bool:
        return self._open

    async def publish(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview,
        *,
        qos: int = 0,
        retain: bool = False,
        expiry_s: float | None = None,
    ) -> None:
        await self.publish_nowait(topic, payload, qos=qos, retain=retain, expiry_s=expiry_s)

    def publish_nowait(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview,
        *,
        qos: int = 0,
        retain: bool = False,
        expiry_s: float | None = None,
    ) -> asyncio.Future[None]:
        if not self._open:
            raise TransportError("memory transport closed")
        check_topic(topic)
        check_qos(qos)
        if len(payload) > self.options.max_payload:
            raise TransportError(f"payload of {len(payload)} bytes over {self.options.max_payload}")
        self._broker.deliver(topic, bytes(payload), retain)
        return done_future(self._loop)

    async def subscribe(self, pattern: str, *, group: str | None = None, qos: int = 1) -> None:
        if not self._open:
            raise TransportError("memory transport closed")
        check_filter(pattern, group)
        if group is None:
            self._broker.plain.append((pattern, self))
            for topic, payload in self._broker.retained.items():
                if matches(pattern, topic):
                    self.inbox.put(Message(topic, payload, now_ns()))
        else:
            self._broker.groups.setdefault((group, pattern), _Group()).members.append(self)

    async def recv(self) -> Message:
        return await self.inbox.get()

    def messages(self) -> AsyncIterator[Message]:
        return iterate(self.inbox)

    def counters(self) -> dict[str, int]:
        return {"inbox_dropped": self.inbox.dropped, "received": self.inbox.received}

    async def close(self) -> None:
        self._shutdown(publish_will=False)

    def abort(self) -> None:
        """Vanish without closing: the broker publishes the will (tests of liveness)."""
        self._shutdown(publish_will=True)

    def _shutdown(self, *, publish_will: bool) -> None:
        if not self._open:
            return
        self._open = False
        self._broker.detach(self)
        self.inbox.close()
        will = self.options.will
        if publish_will and will is not None:
            self._broker.deliver(will.topic, will.payload, will.retain)


async def open_memory(url: str, options: TransportOptions) -> MemoryTransport:
    """Connect to ``memory://NAME``."""
    name = urlsplit(url).netloc or "default"
    return MemoryTransport(url, broker_for(name), options)
