"""The bounded outbox that holds publishes while the transport is disconnected.

paho's own queue is unbounded and drops QoS 0 at reconnect even though ``publish()`` returned
(known trap 4), so adapters keep their own: QoS 0 and QoS 1 entries each up to a limit, the
oldest of a class evicted when it is full, and entries whose expiry has passed dropped when the
outbox is drained. Logic only, with an injected clock; the adapter owns the I/O.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from schemas.errors import TransportError


@dataclass(slots=True)
class Pending:
    """One publish waiting for a connection. ``done`` (QoS 1) resolves when it is acknowledged
    and fails with :class:`TransportError` if the outbox drops it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    expires_at: float | None = None  # on the outbox clock
    done: asyncio.Future[None] | None = None
    seq: int = field(default=0, compare=False)

    def remaining_s(self, now: float) -> float | None:
        return None if self.expires_at is None else self.expires_at - now


class Outbox:
    """QoS 0 and QoS 1 publishes kept in order while disconnected, each class bounded."""

    def __init__(self, qos0_limit: int, qos1_limit: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = {0: qos0_limit, 1: qos1_limit}
        self._queues: dict[int, deque[Pending]] = {0: deque(), 1: deque()}
        self._clock = clock
        self._seq = itertools.count()
        self.evicted = 0  # dropped because the outbox was full
        self.expired = 0  # dropped because their expiry passed before a connection came back

    def __len__(self) -> int:
        return len(self._queues[0]) + len(self._queues[1])

    def put(self, topic: str, payload: bytes, qos: int, *, retain: bool = False,
            expiry_s: float | None = None, done: asyncio.Future[None] | None = None) -> Pending:
        """Queue a publish; when its class is full the oldest of that class is evicted."""
        now = self._clock()
        entry = Pending(topic, payload, min(qos, 1), retain,
                        None if expiry_s is None else now + expiry_s, done, next(self._seq))
        queue = self._queues[entry.qos]
        if len(queue) >= self._limits[entry.qos]:
            self._drop(queue.popleft(), "evicted: outbox full")
            self.evicted += 1
        queue.append(entry)
        return entry

    def drain(self) -> list[Pending]:
        """Take every live entry out, in publish order; expired ones are dropped and counted."""
        now = self._clock()
        entries = list(heapq.merge(self._queues[0], self._queues[1], key=lambda p: p.seq))
        for queue in self._queues.values():
            queue.clear()
        live = []
        for entry in entries:
            if entry.expires_at is not None and entry.expires_at <= now:
                self._drop(entry, "expired in the outbox")
                self.expired += 1
            else:
                live.append(entry)
        return live

    def put_back(self, entries: list[Pending]) -> None:
        """Return drained entries that could not be sent, in their order, ahead of anything
        queued since (their expiry is kept)."""
        for entry in reversed(entries):
            self._queues[entry.qos].appendleft(entry)

    def fail_all(self, reason: str) -> None:
        """Drop everything (the transport is closing); waiting publishers get ``reason``."""
        for queue in self._queues.values():
            while queue:
                self._drop(queue.popleft(), reason)

    @staticmethod
    def _drop(entry: Pending, reason: str) -> None:
        if entry.done is not None and not entry.done.done():
            entry.done.set_exception(TransportError(f"publish to {entry.topic!r} {reason}"))
