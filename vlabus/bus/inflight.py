"""QoS 1 publishes sent and not yet acknowledged: a pure table with an injected clock.

The adapters keep one per connection (in :class:`vlabus.bus.session.Session`), keyed by their
message id (paho's ``int`` mid, the hub's ``bytes`` mid). :meth:`InflightTable.settle` decides
what an acknowledgement means, without I/O, so the decision is tested without sockets:

* a reason code of 0x80 or more: rejected (the publisher gets :class:`PublishRejected`);
* 0x10 (accepted, but no subscriber received it) for a message with an expiry that is not
  retained: sent again after a growing delay until someone receives it, or given up
  (``TransportError``) once the next try would land past its expiry;
* anything else: delivered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

NO_MATCHING_SUBSCRIBERS = 0x10  # MQTT 5 PUBACK: accepted, but nobody received it

K = TypeVar("K")


@dataclass(slots=True)
class Inflight:
    """One QoS 1 publish waiting for its acknowledgement. ``data`` is what the adapter sends
    again: the payload (MQTT) or the whole message's frames (hub)."""

    topic: str
    data: Any
    retain: bool
    deadline: float | None  # on the table's clock, when it expires; None: never
    future: asyncio.Future[None]
    retries: int = 0
    timer: asyncio.TimerHandle | None = None  # the adapter's acknowledgement timeout, if any


class Verdict(Enum):
    DELIVERED = "delivered"
    REJECTED = "rejected"
    RETRY = "retry"  # nobody received it yet: send again after ``retry_delay``
    UNROUTED = "unrouted"  # nobody received it before it expired


class InflightTable(Generic[K]):
    """Pending QoS 1 publishes by message id, oldest first."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[K, Inflight] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[K]:
        return iter(self._entries)

    def __contains__(self, mid: object) -> bool:
        return mid in self._entries

    def values(self) -> list[Inflight]:
        return list(self._entries.values())

    def add(self, mid: K, entry: Inflight) -> None:
        self._entries[mid] = entry

    def pop(self, mid: K) -> Inflight | None:
        """Take ``mid`` out (its acknowledgement came, or the adapter gave up on it)."""
        entry = self._entries.pop(mid, None)
        if entry is not None and entry.timer is not None:
            entry.timer.cancel()
        return entry

    def oldest(self) -> K | None:
        return next(iter(self._entries), None)

    def deadline(self, expiry_s: float | None) -> float | None:
        """The table-clock time at which a publish with ``expiry_s`` expires."""
        return None if expiry_s is None else self._clock() + expiry_s

    def remaining(self, entry: Inflight) -> float | None:
        return None if entry.deadline is None else entry.deadline - self._clock()

    def settle(self, entry: Inflight, code: int) -> Verdict:
        """What the acknowledgement ``code`` (an MQTT 5 reason code) means for ``entry``."""
        if code >= 0x80:
            return Verdict.REJECTED
        if code == NO_MATCHING_SUBSCRIBERS and entry.deadline is not None and not entry.retain:
            if self._clock() + retry_delay(entry.retries) >= entry.deadline:
                return Verdict.UNROUTED
            return Verdict.RETRY
        return Verdict.DELIVERED

    def forget_future(self, future: asyncio.Future[None]) -> None:
        """Drop the entries of a publish whose caller gave up waiting."""
        for mid in [m for m, entry in self._entries.items() if entry.future is future]:
            self.pop(mid)

    def clear(self) -> list[Inflight]:
        """Take every entry out (the transport is closing)."""
        entries = list(self._entries.values())
        for entry in entries:
            if entry.timer is not None:
                entry.timer.cancel()
        self._entries.clear()
        return entries


def retry_delay(retries: int) -> float:
    """Seconds before the next try of an unrouted publish: 50 ms doubling, at most 1 s."""
    return min(0.05 * 2.0 ** retries, 1.0)


def fail_quietly(future: asyncio.Future[None], exc: BaseException) -> None:
    """Fail a future that may have no awaiter left (a QoS 1 publish that already returned):
    marking the exception retrieved keeps asyncio from logging it as lost."""
    if not future.done():
        future.set_exception(exc)
        future.exception()


def complete(future: asyncio.Future[None]) -> None:
    """Complete ``future`` unless it is done already."""
    if not future.done():
        future.set_result(None)
