"""The worker's schedulers: batch size from t(batch), the drop rule, anti-starvation, FIFO and
serial order — injected clock, no sleeps."""

from __future__ import annotations

import pytest

from cloud_workers.batchtime import STALE_AFTER, BatchTimes
from cloud_workers.deadline import DeadlineScheduler, ServiceQueue
from cloud_workers.queue import Request
from cloud_workers.schedulers import ArrivalQueue, FifoBatcher, make_scheduler
from schemas.messages import Priority
from tests.support.clock import MS, FakeClock
from vlabus.policy.profile import Profile, ProfilePolicy

# t(b) = 40 + 10 b ms: batching pays, and a batch of 8 takes 120 ms
TABLE = tuple((b, 40.0 + 10.0 * b) for b in (1, 2, 4, 8, 16))
PROFILE = Profile(name="test", model="test", device="none", measured=False, method="test",
                  sources=(), batch_ms=TABLE)


def vlabus(max_batch: int = 16, max_delay_ms: float = 0.0, margin_ms: float = 0.0,
           starve_after: int = 4) -> tuple[FakeClock, ServiceQueue, DeadlineScheduler]:
    clock = FakeClock(10_000 * MS)
    times = BatchTimes()
    times.seed("m", PROFILE, max_batch)
    queue = ServiceQueue(256, clock=clock, estimate=times)
    sched = DeadlineScheduler(queue, max_batch=max_batch, max_delay_ns=int(max_delay_ms * MS),
                              margin_ns=int(margin_ms * MS), starve_after=starve_after,
                              clock=clock)
    return clock, queue, sched


def push(queue: ServiceQueue | ArrivalQueue, clock: FakeClock, deadline_ms: float,
         priority: int = Priority.NORMAL, model: str = "m") -> Request:
    request = Request(model=model, priority=priority,
                      deadline_ns=clock.now + int(deadline_ms * MS) if deadline_ms else 0,
                      arrived_ns=clock.now)
    assert queue.push(request) == []
    return request


def test_profile_interpolates_and_extrapolates() -> None:
    assert PROFILE.time_ns(1) == 50 * MS
    assert PROFILE.time_ns(3) == 70 * MS  # between 2 and 4
    assert PROFILE.time_ns(32) == 360 * MS  # past 16, along the last slope
    with pytest.raises(ValueError, match="at least 1"):
        PROFILE.time_ns(0)


def test_batch_times_seeded_learn_and_interpolate() -> None:
    times = BatchTimes()
    times.seed("m", PROFILE, 8)
    assert times.time("m", 8) == 120 * MS
    times.observe("m", 200 * MS, size=8)  # slower than the profile: moves a fifth of the way
    assert times.time("m", 8) == 136 * MS
    assert times.largest_within("m", 100 * MS, 16) == 6
    unknown = BatchTimes()
    unknown.observe("x", 10 * MS, size=2)
    assert unknown.time("x", 4) == 20 * MS  # no batching gain assumed past what was seen
    assert unknown.get("x") == 10 * MS


def test_a_size_not_run_for_a_while_falls_back_to_its_profile_time() -> None:
    times = BatchTimes()
    times.seed("m", PROFILE, 16)
    for _ in range(10):  # a burst of overload: full batches on a busy host
        times.observe("m", 400 * MS, size=16)
    slow = times.time("m", 16)
    assert slow > 300 * MS
    for _ in range(STALE_AFTER):  # then only small batches, at the profile's speed
        times.observe("m", 60 * MS, size=2)
    assert times.time("m", 16) == slow  # not stale yet: it was set 32 batches ago
    times.observe("m", 60 * MS, size=2)
    assert times.time("m", 16) == PROFILE.time_ns(16)
    assert times.time("m", 24) == PROFILE.time_ns(16) * 24 // 16  # extrapolated from it
    times.observe("m", 400 * MS, size=16)  # a full batch again: it learns from the profile
    assert times.time("m", 16) == int(PROFILE.time_ns(16) + 0.2 * (400 * MS
                                                                   - PROFILE.time_ns(16)))
    unprofiled = BatchTimes()  # with no profile to fall back to, the last measurement stays
    unprofiled.observe("x", 400 * MS, size=16)
    for _ in range(2 * STALE_AFTER):
        unprofiled.observe("x", 60 * MS, size=2)
    assert unprofiled.time("x", 16) == 400 * MS


def test_batch_size_is_the_largest_that_meets_the_earliest_deadline() -> None:
    clock, queue, sched = vlabus()
    for _ in range(12):
        push(queue, clock, deadline_ms=300)
    push(queue, clock, deadline_ms=95)  # the earliest: t(b) <= 95 ms allows b = 5
    decision = sched.poll()
    assert decision.batch is not None
    assert len(decision.batch.requests) == 5
    assert decision.batch.requests[0].deadline_ns == clock.now + 95 * MS
    assert len(queue) == 8
    assert decision.expired == []


def test_no_member_is_expected_to_finish_after_its_deadline() -> None:
    clock, queue, sched = vlabus(margin_ms=3)
    deadlines = [70, 90, 110, 130, 150, 170, 300, 300, 300, 300]
    for d in deadlines:
        push(queue, clock, deadline_ms=d)
    while (decision := sched.poll()).batch is not None:
        batch = decision.batch.requests
        finish = clock.now + sched.times.time("m", len(batch)) + 3 * MS
        assert all(req.deadline_ns >= finish for req in batch)
        clock.now = finish - 3 * MS  # the device is busy until then


def test_backlog_takes_a_larger_batch_when_that_loses_fewer_requests() -> None:
    clock, queue, sched = vlabus(max_batch=8)
    urgent = push(queue, clock, deadline_ms=62)  # fits only a batch of 2; lost after any batch
    for _ in range(10):
        push(queue, clock, deadline_ms=170)  # t(8) = 120 ms: fine now, lost after two batches
    decision = sched.poll()
    assert decision.batch is not None
    assert len(decision.batch.requests) == 8
    assert urgent not in decision.batch.requests  # 1 lost instead of 6 waiting past 170 ms


def test_light_load_keeps_the_urgent_request_in_a_smaller_batch() -> None:
    clock, queue, sched = vlabus(max_batch=8)
    urgent = push(queue, clock, deadline_ms=75)  # fits a batch of 3
    for _ in range(5):
        push(queue, clock, deadline_ms=400)  # can all wait for the next batch
    decision = sched.poll()
    assert decision.batch is not None
    assert decision.batch.requests[0] is urgent
    assert len(decision.batch.requests) == 3


def test_drop_rule_removes_what_cannot_be_met_even_alone() -> None:
    clock, queue, sched = vlabus(margin_ms=2)
    hopeless = push(queue, clock, deadline_ms=51)  # t(1) + margin = 52 ms
    fine = push(queue, clock, deadline_ms=52)
    decision = sched.poll()
    assert decision.expired == [hopeless]
    assert decision.batch is not None
    assert decision.batch.requests == [fine]


def test_waiting_request_becomes_hopeless_as_the_clock_moves() -> None:
    clock, queue, sched = vlabus(max_delay_ms=1000)
    request = push(queue, clock, deadline_ms=200)
    first = sched.poll()
    assert first.batch is None
    assert first.expired == []
    assert first.wake_at_ns == request.deadline_ns - 60 * MS  # last start with one more member
    clock.now = request.deadline_ns - 49 * MS
    assert sched.poll().expired == [request]


def test_high_priority_leads_but_cannot_starve_the_rest() -> None:
    clock, queue, sched = vlabus(max_batch=1, starve_after=3)
    for _ in range(20):
        push(queue, clock, deadline_ms=10_000, priority=Priority.HIGH)
    low = push(queue, clock, deadline_ms=10_000, priority=Priority.NORMAL)
    served = []
    for _ in range(4):
        decision = sched.poll()
        assert decision.batch is not None
        served.extend(decision.batch.requests)
    assert [r.priority for r in served[:3]] == [Priority.HIGH] * 3
    assert served[3] is low


def test_critical_is_released_at_once_and_never_yields() -> None:
    clock, queue, sched = vlabus(max_delay_ms=50, starve_after=1)
    push(queue, clock, deadline_ms=10_000, priority=Priority.NORMAL)
    critical = push(queue, clock, deadline_ms=10_000, priority=Priority.CRITICAL)
    decision = sched.poll()
    assert decision.batch is not None
    assert decision.batch.requests[0] is critical


def test_fifo_batches_in_arrival_order_after_max_delay_and_drops_nothing() -> None:
    clock = FakeClock(10_000 * MS)
    queue = ArrivalQueue(64, BatchTimes())
    fifo = FifoBatcher(queue, max_batch=4, max_delay_ns=5 * MS, clock=clock)
    late = push(queue, clock, deadline_ms=1)
    clock.now += 2 * MS
    second = push(queue, clock, deadline_ms=0, priority=Priority.HIGH)
    waiting = fifo.poll()
    assert waiting.batch is None
    assert waiting.wake_at_ns == late.arrived_ns + 5 * MS
    clock.now += 3 * MS
    decision = fifo.poll()
    assert decision.batch is not None
    assert decision.batch.requests == [late, second]
    assert decision.expired == []


def test_serial_takes_one_at_a_time_and_queue_refuses_when_full() -> None:
    queue, serial = make_scheduler("serial", {}, max_batch=16, max_delay_ns=5 * MS, capacity=2)
    clock = FakeClock(10_000 * MS)
    first = Request("m", Priority.NORMAL, 0, clock.now)
    assert queue.push(first) == []
    assert queue.push(Request("m", Priority.HIGH, 0, clock.now)) == []
    refused = Request("m", Priority.CRITICAL, 0, clock.now)
    assert queue.push(refused) == [refused]
    decision = serial.poll(clock.now)
    assert decision.batch is not None
    assert decision.batch.requests == [first]


def test_make_scheduler_seeds_t_batch_from_a_profiled_policy() -> None:
    queue, sched = make_scheduler("vlabus", {"m": ProfilePolicy(PROFILE)}, max_batch=8,
                                  max_delay_ns=0, capacity=8)
    assert isinstance(sched, DeadlineScheduler)
    assert queue.estimate.time("m", 8) == 120 * MS
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("lifo", {}, max_batch=1, max_delay_ns=0, capacity=1)
