"""The outbox and the reconnect backoff: logic only, with an injected clock."""

from __future__ import annotations

import asyncio

import pytest

from schemas.errors import TransportError
from tests.support.clock import FakeClock
from vlabus.bus.backoff import Backoff
from vlabus.bus.outbox import Outbox


def test_drain_keeps_publish_order_across_classes() -> None:
    box = Outbox(10, 10, clock=FakeClock(100.0, per_ms=0.001))
    for i in range(6):
        box.put("t", b"%d" % i, i % 2)
    assert [e.payload for e in box.drain()] == [b"0", b"1", b"2", b"3", b"4", b"5"]
    assert len(box) == 0
    assert box.drain() == []


def test_each_class_evicts_its_oldest_when_full() -> None:
    box = Outbox(qos0_limit=2, qos1_limit=3, clock=FakeClock(100.0, per_ms=0.001))
    for i in range(5):
        box.put("frame", b"f%d" % i, 0)
        box.put("task", b"t%d" % i, 1)
    assert box.evicted == 3 + 2
    assert [e.payload for e in box.drain()] == [b"t2", b"f3", b"t3", b"f4", b"t4"]


def test_expired_entries_are_dropped_at_drain() -> None:
    clock = FakeClock(100.0, per_ms=0.001)
    box = Outbox(10, 10, clock=clock)
    box.put("frame", b"short", 0, expiry_s=0.1)
    box.put("frame", b"long", 0, expiry_s=5)
    box.put("task", b"forever", 1)
    clock.now += 1.0
    live = box.drain()
    assert [e.payload for e in live] == [b"long", b"forever"]
    assert box.expired == 1
    assert live[0].remaining_s(clock.now) == pytest.approx(4.0)
    assert live[1].remaining_s(clock.now) is None


def test_dropped_qos1_fails_its_waiter() -> None:
    async def body() -> None:
        clock = FakeClock(100.0, per_ms=0.001)
        box = Outbox(10, 1, clock=clock)
        loop = asyncio.get_running_loop()
        first, second, third = (loop.create_future() for _ in range(3))
        box.put("task", b"1", 1, done=first)
        box.put("task", b"2", 1, done=second, expiry_s=0.5)  # evicts the first
        with pytest.raises(TransportError, match="outbox full"):
            await first
        clock.now += 1
        assert box.drain() == []
        with pytest.raises(TransportError, match="expired"):
            await second
        box.put("task", b"3", 1, done=third)
        box.fail_all("dropped: closing")
        with pytest.raises(TransportError, match="closing"):
            await third

    asyncio.run(body())


def test_backoff_grows_with_jitter_and_resets() -> None:
    draws: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        draws.append((low, high))
        return high

    backoff = Backoff(first_s=0.1, cap_s=1.0, uniform=uniform)
    delays = [backoff.next_delay() for _ in range(6)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert draws[0] == pytest.approx((0.05, 0.1))  # equal jitter: the upper half
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.1)
    real = Backoff(first_s=0.1, cap_s=10)
    samples = [real.next_delay() for _ in range(3)]
    assert 0.05 <= samples[0] <= 0.1
    assert 0.2 <= samples[2] <= 0.4
    with pytest.raises(ValueError, match="first_s"):
        Backoff(first_s=0, cap_s=1)
