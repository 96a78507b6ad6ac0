"""What every adapter keeps about its connection, without I/O: one :class:`Session` each.

Subscriptions (replayed after a reconnect), retained messages this client published (bounded;
the hub relearns them after a restart), QoS 1 publishes in flight
(:class:`~vlabus.bus.inflight.InflightTable`), the bounded :class:`~vlabus.bus.outbox.Outbox`
for publishes made while disconnected, and the publish and subscribe preconditions, checked
once, in one order: closed, topic name, size cap, QoS. The adapter does the I/O.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from schemas.errors import PublishRejected, SubscribeRejected, TransportError
from schemas.topics import group_problem, topic_filter_problem, topic_name_problem
from vlabus.bus.inflight import InflightTable
from vlabus.bus.outbox import Outbox
from vlabus.bus.transport import TransportOptions

K = TypeVar("K")


class Session(Generic[K]):
    """One connection's state; ``K`` is the adapter's message id type."""

    def __init__(self, name: str, options: TransportOptions, *,
                 clock: Callable[[], float] = time.monotonic, retained_limit: int = 256) -> None:
        self.name = name
        self.options = options
        self.clock = clock
        self.closed = False
        #: (pattern, group or "") -> qos, in the order they were made
        self.subscriptions: dict[tuple[str, str], int] = {}
        #: topic -> (payload, expires at on ``clock`` or None); oldest first
        self.retained: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self.retained_limit = retained_limit
        self.inflight: InflightTable[K] = InflightTable(clock)
        self.outbox = Outbox(options.outbox_size, options.outbox_size, clock=clock)

    def check_open(self) -> None:
        if self.closed:
            raise TransportError(f"{self.name} transport closed")

    def check_publish(self, topic: str, payload: Any, qos: int) -> None:
        """Raise unless a publish may go out: closed, then the topic name, the size cap and
        the QoS, in that order, on every adapter."""
        self.check_open()
        check_topic(topic)
        if len(payload) > self.options.max_payload:
            raise TransportError(f"payload of {len(payload)} bytes over {self.options.max_payload}")
        check_qos(qos)

    def check_subscribe(self, pattern: str, group: str | None) -> None:
        self.check_open()
        check_filter(pattern, group)

    def subscribed(self, pattern: str, group: str | None, qos: int) -> None:
        self.subscriptions[(pattern, group or "")] = qos

    def unsubscribed(self, pattern: str, group: str | None) -> None:
        self.subscriptions.pop((pattern, group or ""), None)

    def retain(self, topic: str, payload: bytes, expiry_s: float | None = None) -> None:
        """Remember (an empty payload: forget) the retained message of ``topic``; the oldest
        goes when more than ``retained_limit`` are kept."""
        self.retained.pop(topic, None)
        if payload:
            expires = None if expiry_s is None else self.clock() + expiry_s
            self.retained[topic] = (payload, expires)
            while len(self.retained) > self.retained_limit:
                self.retained.popitem(last=False)

    def live_retained(self) -> list[tuple[str, bytes]]:
        """The retained messages not yet expired (expired ones are forgotten)."""
        now = self.clock()
        for topic in [t for t, (_, exp) in self.retained.items() if exp is not None and exp <= now]:
            del self.retained[topic]
        return [(topic, payload) for topic, (payload, _) in self.retained.items()]


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
