"""In-process bus with MQTT semantics, for unit tests of logic.

Wildcards, shared groups (round-robin among members), retained messages, wills and message
expiry behave as on a broker (a retained message is forgotten once its expiry passes; a publish
whose expiry has already passed reaches nobody, counted in ``expired``); there is no network and
no serialisation beyond the bytes handed in.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from schemas.topics import matches
from vlabus.bus.inbox import Inbox, Receiving
from vlabus.bus.session import Session
from vlabus.bus.transport import Message, TransportOptions, done_future, now_ns


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
        self._expires: dict[str, float] = {}  # retained topic -> monotonic expiry

    def deliver(self, topic: str, payload: bytes, retain: bool,
                expiry_s: float | None = None) -> None:
        if retain:
            self._expires.pop(topic, None)
            if payload:
                self.retained[topic] = payload
                if expiry_s is not None:
                    self._expires[topic] = time.monotonic() + expiry_s
            else:
                self.retained.pop(topic, None)
        received = now_ns()
        seen: set[int] = set()
        for pattern, client in self.plain:
            if id(client) not in seen and matches(pattern, topic):
                seen.add(id(client))
                client._inbox.put(Message(topic, payload, received))
        for (_, pattern), group in self.groups.items():
            if group.members and matches(pattern, topic):
                member = group.members[next(group.turn) % len(group.members)]
                member._inbox.put(Message(topic, payload, received))

    def retained_for(self, pattern: str) -> list[tuple[str, bytes]]:
        """The live retained messages matching ``pattern`` (expired ones are forgotten)."""
        now = time.monotonic()
        for topic in [t for t, expires in self._expires.items() if expires <= now]:
            del self._expires[topic]
            self.retained.pop(topic, None)
        return [(t, p) for t, p in self.retained.items() if matches(pattern, t)]

    def detach(self, client: MemoryTransport, pattern: str | None = None,
               group: str | None = None) -> None:
        """Remove ``client``'s subscriptions: all of them, or the one to ``pattern``/``group``."""
        if pattern is None or not group:
            self.plain = [(p, c) for p, c in self.plain
                          if c is not client or (pattern is not None and p != pattern)]
        for (name, filt), members in self.groups.items():
            if client in members.members and (pattern is None or (name, filt) == (group, pattern)):
                members.members.remove(client)


_BROKERS: dict[str, MemoryBroker] = {}


def broker_for(name: str) -> MemoryBroker:
    """The broker behind ``memory://name`` (created on first use)."""
    return _BROKERS.setdefault(name, MemoryBroker())


def reset_memory(name: str) -> None:
    """Forget a named memory bus (tests)."""
    _BROKERS.pop(name, None)


class MemoryTransport(Receiving):
    """A client of a :class:`MemoryBroker`."""

    def __init__(self, url: str, broker: MemoryBroker, options: TransportOptions) -> None:
        self.url = url
        self.options = options
        self._broker = broker
        self._loop = asyncio.get_running_loop()
        self._inbox = Inbox(self._loop, options.inbox_size)
        self._session: Session[int] = Session("memory", options)
        self._expired = 0

    @property
    def connected(self) -> bool:
        return not self._session.closed

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
        self._session.check_publish(topic, payload, qos)
        if expiry_s is not None and expiry_s <= 0:
            self._expired += 1  # expired before it left: a broker would deliver it to nobody
        else:
            self._broker.deliver(topic, bytes(payload), retain, expiry_s)
        return done_future(self._loop)

    async def subscribe(self, pattern: str, *, group: str | None = None, qos: int = 1) -> None:
        self._session.check_subscribe(pattern, group)
        self._session.subscribed(pattern, group, qos)
        if group is None:
            self._broker.plain.append((pattern, self))
            for topic, payload in self._broker.retained_for(pattern):
                self._inbox.put(Message(topic, payload, now_ns()))
        else:
            self._broker.groups.setdefault((group, pattern), _Group()).members.append(self)

    async def unsubscribe(self, pattern: str, *, group: str | None = None) -> None:
        self._session.unsubscribed(pattern, group)
        self._broker.detach(self, pattern, group)

    def counters(self) -> dict[str, int]:
        return {"inbox_dropped": self._inbox.dropped, "received": self._inbox.received,
                "expired": self._expired}

    async def close(self) -> None:
        self._shutdown(publish_will=False)

    def abort(self) -> None:
        """Vanish without closing: the broker publishes the will (tests of liveness)."""
        self._shutdown(publish_will=True)

    def _shutdown(self, *, publish_will: bool) -> None:
        if self._session.closed:
            return
        self._session.closed = True
        self._broker.detach(self)
        self._inbox.close()
        will = self.options.will
        if publish_will and will is not None:
            self._broker.deliver(will.topic, will.payload, will.retain)


async def open_memory(url: str, options: TransportOptions) -> MemoryTransport:
    """Connect to ``memory://NAME``."""
    name = urlsplit(url).netloc or "default"
    return MemoryTransport(url, broker_for(name), options)
