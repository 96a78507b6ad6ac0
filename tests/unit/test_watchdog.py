"""Deadline watchdog, hedge timing and offload breaker: injected clock, no sockets, no sleeps."""

from __future__ import annotations

import pytest

from edge_agent.breaker import BreakerConfig, OffloadBreaker, Route
from edge_agent.watchdog import LatencyEstimator, Verdict, Watchdog, plan_hedge
from tests.support.clock import MS, FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_on_time_reply_decides_for_the_cloud(clock: FakeClock) -> None:
    dog = Watchdog(clock)
    dog.open("s-1", 1, clock.now + 20 * MS)
    clock.advance(7)
    reply = dog.reply("s-1", 1)
    assert reply.verdict is Verdict.ON_TIME
    assert reply.rtt_ns == 7 * MS
    assert dog.expire("s-1") is None  # already decided: the fallback must not also fire
    assert len(dog) == 0


def test_late_reply_after_fallback_is_discarded(clock: FakeClock) -> None:
    dog = Watchdog(clock)
    dog.open("s-2", 2, clock.now + 20 * MS)
    clock.advance(20)
    pending = dog.expire("s-2")  # the deadline fired: fallback decides
    assert pending is not None
    assert pending.step == 2
    clock.advance(5)
    reply = dog.reply("s-2", 2)
    assert reply.verdict is Verdict.LATE
    assert reply.rtt_ns == 25 * MS  # still a round-trip measurement


def test_reply_past_decision_time_is_late_even_before_the_timer(clock: FakeClock) -> None:
    dog = Watchdog(clock)
    dog.open("s-3", 3, clock.now + 10 * MS)
    clock.advance(10.001)
    assert dog.reply("s-3", 3).verdict is Verdict.LATE
    assert dog.expire("s-3") is None


def test_second_reply_for_a_decided_step_is_late(clock: FakeClock) -> None:
    dog = Watchdog(clock)
    dog.open("s-4", 4, clock.now + 10 * MS)
    assert dog.reply("s-4", 4).verdict is Verdict.ON_TIME
    assert dog.reply("s-4", 4).verdict is Verdict.LATE


def test_wrong_step_or_unknown_corr_never_matches(clock: FakeClock) -> None:
    dog = Watchdog(clock)
    dog.open("s-5", 5, clock.now + 10 * MS)
    assert dog.reply("s-5", 6).verdict is Verdict.UNKNOWN
    assert dog.reply("other", 5).verdict is Verdict.UNKNOWN
    assert dog.pending("s-5") is not None


def test_rejected_reply_is_remembered_for_the_cause(clock: FakeClock) -> None:
    dog = Watchdog(clock)
    dog.open("s-6", 6, clock.now + 10 * MS)
    dog.mark_rejected("s-6")
    pending = dog.expire("s-6")
    assert pending is not None
    assert pending.rejected


def test_decided_memory_is_bounded(clock: FakeClock) -> None:
    dog = Watchdog(clock, remember=4)
    for i in range(10):
        dog.open(f"c{i}", i, clock.now)
        dog.expire(f"c{i}")
    assert dog.reply("c0", 0).verdict is Verdict.UNKNOWN  # forgotten
    assert dog.reply("c9", 9).verdict is Verdict.LATE


def test_hedge_starts_its_p99_before_the_decision() -> None:
    local = LatencyEstimator(16)
    for ms in (1, 1, 1, 1, 1, 1, 1, 4):
        local.add(ms * MS)
    timing = plan_hedge(100 * MS, local, slack_ns=MS, timer_slack_ns=MS, safety=1.5)
    assert timing.decide_ns == 99 * MS
    # need = p99 (4 ms) x 1.5 + 1 ms slack = 7 ms, plus a timer slack for the start timer
    assert timing.start_ns == 99 * MS - 7 * MS - MS


def test_estimator_quantiles_and_window() -> None:
    est = LatencyEstimator(4, initial_ns=9)
    assert est.quantile(0.99) == 9
    for v in (10, 20, 30, 40, 1000):
        est.add(v)
    assert len(est) == 4
    assert est.quantile(0.0) == 20
    assert est.quantile(0.99) == 1000


def test_breaker_opens_after_k_misses_and_probes_at_low_rate(clock: FakeClock) -> None:
    brk = OffloadBreaker(BreakerConfig(miss_limit=3, probe_interval_ns=100 * MS, close_after=2),
                         clock)
    for _ in range(2):
        assert brk.route(20 * MS) is Route.OFFLOAD
        brk.missed()
    assert not brk.open
    assert brk.route(20 * MS) is Route.OFFLOAD
    brk.missed()
    assert brk.open
    assert brk.open_reason == "misses"
    assert brk.route(20 * MS) is Route.LOCAL
    clock.advance(99)
    assert brk.route(20 * MS) is Route.LOCAL
    clock.advance(1)
    assert brk.route(20 * MS) is Route.PROBE
    assert brk.route(20 * MS) is Route.LOCAL  # one probe at a time
    brk.missed(probe=True)
    assert brk.route(20 * MS) is Route.LOCAL  # next probe only after the interval
    clock.advance(100)
    assert brk.route(20 * MS) is Route.PROBE


def test_breaker_closes_only_after_consecutive_good_probes(clock: FakeClock) -> None:
    brk = OffloadBreaker(BreakerConfig(miss_limit=1, probe_interval_ns=10 * MS, close_after=2),
                         clock)
    brk.missed()
    assert brk.open
    clock.advance(10)
    assert brk.route(20 * MS) is Route.PROBE
    brk.on_time(5 * MS, probe=True)
    assert brk.open  # hysteresis: one good probe is not enough
    clock.advance(10)
    assert brk.route(20 * MS) is Route.PROBE
    brk.missed(probe=True)  # a bad probe resets the count
    clock.advance(10)
    assert brk.route(20 * MS) is Route.PROBE
    brk.on_time(5 * MS, probe=True)
    clock.advance(10)
    assert brk.route(20 * MS) is Route.PROBE
    brk.on_time(5 * MS, probe=True)
    assert not brk.open
    assert brk.route(20 * MS) is Route.OFFLOAD
    assert (brk.opened, brk.closed) == (1, 1)


def test_breaker_goes_local_when_round_trip_cannot_meet_the_deadline(clock: FakeClock) -> None:
    brk = OffloadBreaker(BreakerConfig(min_rtt_samples=4), clock)
    for _ in range(4):
        brk.late_reply(30 * MS)  # replies do come, but after a 20 ms budget
    assert brk.route(50 * MS) is Route.OFFLOAD  # a looser deadline still fits
    assert brk.route(20 * MS) is Route.LOCAL
    assert brk.open_reason == "unreachable"


def test_on_time_reply_resets_the_miss_count(clock: FakeClock) -> None:
    brk = OffloadBreaker(BreakerConfig(miss_limit=2), clock)
    brk.missed()
    brk.on_time(MS)
    brk.missed()
    assert not brk.open
