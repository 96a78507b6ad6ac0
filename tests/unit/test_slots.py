"""Send-time hints: the worker's cyclic plan of batches (``cloud_workers.slots``), the
scheduler holding a batch for a planned start, and the robot's refill timer
(``edge_agent.refill``) — injected clocks, no sleeps."""

from __future__ import annotations

from cloud_workers.batchtime import BatchTimes
from cloud_workers.deadline import DeadlineScheduler, ServiceQueue
from cloud_workers.queue import Request
from cloud_workers.schedulers import make_scheduler
from cloud_workers.slots import SlotPlanner
from edge_agent.refill import RefillTimer
from schemas.deadline import Clocks
from schemas.messages import Priority
from tests.support.clock import MS, FakeClock
from vlabus.policy.profile import Profile, ProfilePolicy

# t(b) = 40 + 10 b ms
PROFILE = Profile(name="test", model="test", device="none", measured=False, method="test",
                  sources=(), batch_ms=tuple((b, 40.0 + 10.0 * b) for b in (1, 2, 4, 8, 16)))
PERIOD = 500 * MS


def planner(margin_ms: float = 0.0) -> SlotPlanner:
    times = BatchTimes()
    times.seed("m", PROFILE, 16)
    return SlotPlanner(times, max_batch=16, margin_ns=int(margin_ms * MS), guard_ns=0,
                       gap_ns=0, early_ns=0)


def reserve(plan: SlotPlanner, robot: str, at_ms: float, budget_ms: float = 300.0,
            priority: int = Priority.NORMAL) -> int | None:
    return plan.reserve("m", robot, earliest_ns=int(at_ms * MS), interval_ns=PERIOD,
                        budget_ns=int(budget_ms * MS), priority=priority, now_ns=int(at_ms * MS))


def test_robots_share_the_largest_batch_their_budget_allows() -> None:
    plan = planner()
    # budget 120 ms: t(8) = 120 fits, t(9) = 130 does not; 8 robots per slot
    starts = [reserve(plan, f"r{i}", 1_000 + 37 * i, budget_ms=120) for i in range(10)]
    slots = plan.slots("m", PERIOD)
    assert [len(s.robots) for s in slots] == [8, 2]
    assert slots[1].phase_ns == 120 * MS  # back to back after t(8)
    for i, start in enumerate(starts):
        assert start is not None
        earliest = (1_000 + 37 * i) * MS
        assert earliest <= start < earliest + PERIOD  # a delay of less than one interval
        assert (start - slots[0 if i < 8 else 1].phase_ns) % PERIOD == 0


def test_high_priority_robots_get_their_own_small_batches_first() -> None:
    plan = planner()
    reserve(plan, "normal-1", 0)
    reserve(plan, "normal-2", 0)
    reserve(plan, "high", 0, budget_ms=65, priority=Priority.HIGH)  # t(2) = 60 fits, t(3) not
    slots = plan.slots("m", PERIOD)
    assert slots[0].phase_ns == 0
    assert slots[0].robots == ("high", "normal-1")
    assert slots[1].robots == ("normal-2",)
    assert slots[1].phase_ns == 60 * MS


def test_what_does_not_fit_in_one_interval_gets_no_hint() -> None:
    plan = planner()
    # budget 60 ms: slots of 2 robots (t(2) = 60), 8 slots fill 480 of 500 ms
    hints = [reserve(plan, f"r{i}", 0, budget_ms=60) for i in range(18)]
    assert all(h is not None for h in hints[:16])
    assert hints[16] is None
    assert hints[17] is None
    assert reserve(plan, "too-urgent", 0, budget_ms=40) is None  # not even t(1) fits


def test_a_robot_keeps_its_slot_and_leaves_the_plan_when_silent() -> None:
    plan = planner()
    first = reserve(plan, "a", 0)
    assert reserve(plan, "a", 500) == (first or 0) + PERIOD
    reserve(plan, "b", 500)
    assert [s.robots for s in plan.slots("m", PERIOD)] == [("a", "b")]
    reserve(plan, "b", 2_000)  # "a" has not sent for three intervals
    assert [s.robots for s in plan.slots("m", PERIOD)] == [("b",)]


def scheduler(clock: FakeClock) -> tuple[ServiceQueue, DeadlineScheduler]:
    times = BatchTimes()
    times.seed("m", PROFILE, 16)
    queue = ServiceQueue(64, clock=clock, estimate=times)
    sched = DeadlineScheduler(queue, max_batch=16, max_delay_ns=2 * MS, margin_ns=0,
                              clock=clock, planner=planner(), slot_grace_ns=3 * MS)
    return queue, sched


def frame(clock: FakeClock, robot: str, deadline_ms: float = 300.0, uplink_ms: float = 0.0,
          interval: int = PERIOD) -> Request:
    return Request("m", Priority.NORMAL, clock.now + int(deadline_ms * MS), clock.now,
                   source=robot, interval_ns=interval, sent_ns=clock.now - int(uplink_ms * MS))


def test_released_frames_get_the_next_start_of_their_slot_less_their_uplink() -> None:
    clock = FakeClock(10_000 * MS)
    queue, sched = scheduler(clock)
    queue.push(frame(clock, "a", uplink_ms=4))
    clock.advance(2)
    decision = sched.poll()
    assert decision.batch is not None
    (request,) = decision.batch.requests
    # its next frame: one interval after this arrival; sent 4 ms ahead of the start
    start = 10_000 * MS + PERIOD
    assert request.hint_ns == start - 4 * MS
    # a frame that states no interval (a reactive robot) gets no hint
    queue.push(frame(clock, "b", interval=0))
    clock.advance(2)
    decision = sched.poll()
    assert decision.batch is not None
    assert decision.batch.requests[0].hint_ns == 0


def test_a_dropped_frame_gets_a_hint_too_and_its_robot_joins_the_plan() -> None:
    clock = FakeClock(10_000 * MS)
    queue, sched = scheduler(clock)
    queue.push(frame(clock, "b", uplink_ms=3))
    clock.advance(260)  # the device was busy: 300 ms budget, t(1) = 50 no longer fits
    decision = sched.poll()
    assert decision.batch is None
    (dropped,) = decision.expired
    # the worker's Declined notice carries it: its robot sends next at its planned slot
    assert dropped.hint_ns == 10_000 * MS + PERIOD - 3 * MS
    assert sched.planner is not None
    assert [slot.robots for slot in sched.planner.slots("m", PERIOD)] == [("b",)]


def test_a_batch_that_would_run_into_a_planned_start_waits_for_it() -> None:
    clock = FakeClock(10_000 * MS)
    queue, sched = scheduler(clock)
    queue.push(frame(clock, "a"))
    clock.advance(2)
    assert sched.poll().batch is not None  # plans "a" at 10_500 ms
    clock.now = 10_480 * MS  # "c", outside the plan: t(1) = 50 ms would run past 10_500
    queue.push(frame(clock, "c"))
    decision = sched.poll()
    assert decision.batch is None
    assert decision.wake_at_ns == 10_500 * MS
    clock.now = 10_498 * MS
    queue.push(frame(clock, "a"))  # "a" arrives just before its start
    clock.now = 10_500 * MS
    decision = sched.poll()
    assert decision.batch is not None
    assert len(decision.batch.requests) == 2


def test_a_frame_that_cannot_wait_for_the_planned_start_runs_now() -> None:
    clock = FakeClock(10_000 * MS)
    queue, sched = scheduler(clock)
    queue.push(frame(clock, "a"))
    clock.advance(2)
    sched.poll()
    clock.now = 10_480 * MS
    queue.push(frame(clock, "urgent", deadline_ms=60))  # 10_500 + 60 > its deadline
    clock.advance(2)
    decision = sched.poll()
    assert decision.batch is not None


def test_fifo_and_serial_never_hint() -> None:
    clock = FakeClock(10_000 * MS)
    for kind in ("fifo", "serial"):
        queue, batcher = make_scheduler(kind, {"m": ProfilePolicy(PROFILE)}, max_batch=16,
                                        max_delay_ns=0, capacity=8, clock=clock)
        queue.push(frame(clock, "a"))
        decision = batcher.poll()
        assert decision.batch is not None
        assert decision.batch.requests[0].hint_ns == 0


class Clock2:
    def __init__(self) -> None:
        self.mono = 1_000 * MS
        self.offset = 7_000_000 * MS  # wall = monotonic + offset

    def clocks(self) -> Clocks:
        return Clocks(monotonic=lambda: self.mono, wall=lambda: self.mono + self.offset)


def test_refill_follows_a_hint_within_its_refill_deadline() -> None:
    clock = Clock2()
    timer = RefillTimer(clock.clocks(), PERIOD, seed=1)
    now = clock.mono
    timer.hinted(now + clock.offset + 40 * MS)  # 40 ms from now, on the wall clock
    assert timer.send_at(now, latest_ns=now + 1_000 * MS) == now + 40 * MS
    # used once: the next refill without a new hint goes at once
    assert timer.send_at(now, latest_ns=now + 1_000 * MS) == now


def test_refill_ignores_a_bad_hint_and_sends_as_without_one() -> None:
    clock = Clock2()
    timer = RefillTimer(clock.clocks(), PERIOD, seed=1)
    now = clock.mono
    timer.hinted(now + clock.offset + 5_000 * MS)  # past its refill deadline
    assert timer.send_at(now, latest_ns=now + 1_700 * MS) == now
    assert timer.ignored == 1
    timer.hinted(now + clock.offset - 30 * MS)  # already past
    assert timer.send_at(now, latest_ns=now + 1_700 * MS) == now
    timer.hinted(0)  # none
    assert timer.send_at(now, latest_ns=now + 1_700 * MS) == now
    assert timer.followed == 0


def test_refill_starts_early_by_its_own_time_to_send() -> None:
    clock = Clock2()
    timer = RefillTimer(clock.clocks(), PERIOD, seed=1)
    for _ in range(50):
        timer.sending_took(3 * MS)
    now = clock.mono
    timer.hinted(now + clock.offset + 40 * MS)
    assert abs(timer.send_at(now, latest_ns=now + 1_000 * MS) - (now + 37 * MS)) < MS // 10


def test_after_a_miss_the_refill_moves_at_random_within_half_an_interval() -> None:
    clock = Clock2()
    timer = RefillTimer(clock.clocks(), PERIOD, seed=1)
    now = clock.mono
    sends = []
    for _ in range(20):
        timer.missed()
        sends.append(timer.send_at(now, latest_ns=now + 1_700 * MS))
    assert all(now <= at <= now + PERIOD // 2 for at in sends)
    assert len(set(sends)) > 10
    timer.missed()
    assert timer.send_at(now, latest_ns=now + 10 * MS) <= now + 10 * MS  # never past latest
    assert timer.send_at(now, latest_ns=now + 1_700 * MS) == now  # one miss, one shift
