"""The worker's stall watch (pure, injected clock) and the robot breaker's miss rate."""

from __future__ import annotations

from cloud_workers.stall import StallConfig, StallWatch, Verdict
from edge_agent.breaker import BreakerConfig, OffloadBreaker
from tests.support.clock import FakeClock

MS = 1_000_000


def test_a_batch_far_past_its_estimate_stalls_then_recovers_or_exits() -> None:
    clock = FakeClock(0)
    watch = StallWatch(StallConfig(factor=10, min_ns=100 * MS, exit_after_ns=1000 * MS), clock)
    watch.started("vla", estimate_ns=20 * MS)  # limit: max(10 x 20 ms, 100 ms) = 200 ms
    clock.advance(199)
    assert watch.check() is Verdict.OK
    clock.advance(2)
    assert watch.check() is Verdict.STALLED
    assert watch.stalled
    assert "'vla'" in watch.reason
    assert watch.check() is Verdict.OK  # reported once
    assert watch.finished()  # the policy returned: rejoin
    assert not watch.stalled
    watch.started("vla", estimate_ns=1 * MS)  # limit: the 100 ms floor
    clock.advance(101)
    assert watch.check() is Verdict.STALLED
    clock.advance(1001)
    assert watch.check() is Verdict.EXIT
    assert watch.episodes == 2


def test_no_batch_in_hand_never_stalls() -> None:
    clock = FakeClock(0)
    watch = StallWatch(StallConfig(min_ns=MS), clock)
    clock.advance(10_000)
    assert watch.check() is Verdict.OK
    assert not watch.finished()


def test_alternating_misses_open_the_breaker_on_its_miss_rate() -> None:
    breaker = OffloadBreaker(BreakerConfig(miss_limit=3, rate_window=10, max_miss_rate=0.3),
                             clock=FakeClock(0))
    for step in range(9):
        if step % 2:
            breaker.missed()
        else:
            breaker.on_time(5 * MS)
        assert not breaker.open  # never 3 in a row; the window is not full yet
    breaker.missed()  # 5 of the last 10 missed
    assert breaker.open
    assert breaker.open_reason == "miss_rate"


def test_an_occasional_miss_keeps_the_breaker_closed() -> None:
    breaker = OffloadBreaker(BreakerConfig(rate_window=10, max_miss_rate=0.3),
                             clock=FakeClock(0))
    for step in range(100):
        if step % 5 == 0:
            breaker.missed()
        else:
            breaker.on_time(5 * MS)
    assert not breaker.open
