"""Batcher: batch formation by size, by delay, by deadline — injected clock, no sleeps."""

from __future__ import annotations

from cloud_workers.batcher import Batcher
from cloud_workers.queue import DeadlineQueue, InferenceEstimate, Request
from schemas.messages import Priority
from tests.support.clock import MS, FakeClock


def make(max_batch: int = 4, max_delay_ms: int = 5) -> tuple[FakeClock, DeadlineQueue, Batcher]:
    clock = FakeClock()
    q = DeadlineQueue(64, clock=clock, estimate=InferenceEstimate())
    return clock, q, Batcher(q, max_batch=max_batch, max_delay_ns=max_delay_ms * MS, clock=clock)


def push(q: DeadlineQueue, clock: FakeClock, model: str = "m", deadline: int = 0,
         priority: int = Priority.NORMAL) -> Request:
    r = Request(model=model, priority=priority, deadline_ns=deadline, arrived_ns=clock.now)
    q.push(r)
    return r


def test_empty_queue_waits_for_arrivals() -> None:
    _, _, b = make()
    d = b.poll()
    assert d.batch is None
    assert d.wake_at_ns is None
    assert d.expired == []


def test_batch_released_when_full() -> None:
    clock, q, b = make(max_batch=4)
    for _ in range(3):
        push(q, clock)
        assert b.poll().batch is None
    push(q, clock)
    d = b.poll()
    assert d.batch is not None
    assert len(d.batch.requests) == 4
    assert len(q) == 0


def test_batch_released_after_max_delay() -> None:
    clock, q, b = make(max_batch=8, max_delay_ms=5)
    push(q, clock)
    clock.now += 2 * MS
    push(q, clock)
    d = b.poll()
    assert d.batch is None
    assert d.wake_at_ns == clock.now + 3 * MS
    clock.now += 3 * MS - 1
    assert b.poll().batch is None
    clock.now += 1
    d = b.poll()
    assert d.batch is not None
    assert len(d.batch.requests) == 2


def test_oversize_backlog_splits_into_max_batch() -> None:
    clock, q, b = make(max_batch=4)
    for _ in range(10):
        push(q, clock)
    sizes = []
    clock.now += 10 * MS
    while (d := b.poll()).batch is not None:
        sizes.append(len(d.batch.requests))
    assert sizes == [4, 4, 2]


def test_batches_hold_one_model_head_first() -> None:
    clock, q, b = make(max_batch=4, max_delay_ms=0)
    push(q, clock, model="big", priority=Priority.LOW)
    push(q, clock, model="small", priority=Priority.HIGH)
    push(q, clock, model="big", priority=Priority.LOW)
    first = b.poll().batch
    second = b.poll().batch
    assert first is not None
    assert first.model == "small"
    assert len(first.requests) == 1
    assert second is not None
    assert second.model == "big"
    assert len(second.requests) == 2


def test_deadline_shortens_the_wait() -> None:
    clock, q, b = make(max_batch=8, max_delay_ms=50)
    q.estimate.observe("m", 4 * MS)
    push(q, clock, deadline=clock.now + 10 * MS)
    d = b.poll()
    assert d.batch is None
    assert d.wake_at_ns == clock.now + 6 * MS
    clock.now += 6 * MS
    d = b.poll()
    assert d.batch is not None


def test_hopeless_requests_expire_before_batching() -> None:
    clock, q, b = make(max_batch=2, max_delay_ms=0)
    q.estimate.observe("m", 4 * MS)
    doomed = push(q, clock, deadline=clock.now + 3 * MS)
    fine = push(q, clock, deadline=clock.now + 30 * MS)
    d = b.poll()
    assert d.expired == [doomed]
    assert d.batch is not None
    assert d.batch.requests == [fine]


def test_critical_frames_do_not_wait() -> None:
    clock, q, b = make(max_batch=8, max_delay_ms=50)
    push(q, clock, priority=Priority.CRITICAL)
    d = b.poll()
    assert d.batch is not None
    assert len(d.batch.requests) == 1
