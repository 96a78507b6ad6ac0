"""The uplink estimator against a size-independent delay (a broker bridge holding packets back
for Nagle's algorithm, broker hops): synthetic samples, then robots on a simulated shared link
(``tests/support/linksim.py``), all on a fake clock."""

from __future__ import annotations

import random
import statistics

import pytest

from edge_agent.codec import LADDER, CodecChooser, Rung
from edge_agent.uplink import UplinkEstimator
from tests.support.clock import MS, FakeClock
from tests.support.linksim import SharedLink
from tests.unit.test_codec_choice import images

S = 1_000_000_000
NS_PER_BYTE_10MBIT = 800.0


def held_ms(rng: random.Random, share: float = 0.3, hold_ms: float = 40.0) -> float:
    """What a bridge with Nagle on adds: some frames wait up to ``hold_ms``, whatever size."""
    return rng.uniform(0, hold_ms) if rng.random() < share else rng.uniform(0, 1)


def test_a_delay_that_comes_and_goes_is_not_a_slow_link() -> None:
    """10 Mbit/s behind 5 ms plus a Nagle-like hold of up to 40 ms on 30% of frames."""
    clock, rng = FakeClock(0), random.Random(1)
    est = UplinkEstimator(clock)
    queues, rates = [], []
    for step in range(200):
        clock.now += 66 * MS
        nbytes = (12_000, 16_000, 21_000)[step % 3]
        est.reply(nbytes, round((5 + held_ms(rng)) * MS + nbytes * NS_PER_BYTE_10MBIT), 20 * MS)
        got = est.estimate()
        assert got is not None
        if step >= 32:
            queues.append(got.queue_ns)
            rates.append(got.bits_per_second)
            assert 2e6 <= got.bits_per_second <= 20e6  # a held pair moves one fit a little
            assert 2 * MS <= got.base_ns <= 20 * MS  # the delay, not bytes
    assert statistics.median(rates) == pytest.approx(10e6, rel=0.1)
    assert sum(1 for r in rates if abs(r - 10e6) <= 3e6) >= 0.9 * len(rates)
    # no queue is read into it: a quarter of the budget (the chooser's trigger) is never met
    assert max(queues) < 0.25 * 75 * MS


def test_one_size_with_a_delay_is_cautious_not_absurd() -> None:
    """One frame size only: the spread of the delay is not charged per byte (5 kB frames
    with 0-40 ms of jitter once read as ~1.3 Mbit/s on a 10 Mbit/s link)."""
    clock, rng = FakeClock(0), random.Random(2)
    est = UplinkEstimator(clock)
    for _ in range(32):
        clock.now += 66 * MS
        est.reply(5_000, round((5 + rng.uniform(0, 40)) * MS + 5_000 * NS_PER_BYTE_10MBIT),
                  20 * MS)
    got = est.estimate()
    assert got is not None
    assert 3e6 <= got.bits_per_second <= 10e6 * 1.01  # what the fastest frame proves
    chooser = CodecChooser(clock)
    # room to try the next rungs up (and so learn the line), not a call to shrink
    assert chooser.allowed_bytes(got, budget_ns=100 * MS, interval_ns=66 * MS) > 3 * 5_000


def test_a_flat_line_does_not_claim_an_endless_link() -> None:
    """Sizes differ but the delay hides the bytes: the rate stays within what was seen."""
    clock = FakeClock(0)
    est = UplinkEstimator(clock, rate_headroom=4.0)
    for step in range(32):
        clock.now += 66 * MS
        est.reply((8_000, 30_000)[step % 2], 30 * MS, 5 * MS)  # 30 ms whatever the size
    got = est.estimate()
    assert got is not None
    proven = 8 * 30_000 / (30 * MS) * 1e9  # bits per second the larger frame showed
    assert got.bits_per_second <= 4 * proven * 1.01


def test_the_last_fit_outlives_a_window_of_one_size() -> None:
    clock = FakeClock(0)
    est = UplinkEstimator(clock)
    for step in range(32):  # 10 Mbit/s seen over two sizes
        clock.now += 66 * MS
        nbytes = (10_000, 20_000)[step % 2]
        est.reply(nbytes, 10 * MS + nbytes * 800, 2 * MS)
    assert est.estimate() is not None
    for _ in range(32):  # then the codec holds one size, with a delay that varies
        clock.now += 66 * MS
        est.reply(20_000, (10 + 20 * (_ % 2)) * MS + 20_000 * 800, 2 * MS)
    got = est.estimate()
    assert got is not None
    assert got.bits_per_second == pytest.approx(10e6, rel=0.05)


def share_at_or_above(link: SharedLink, rung: Rung, since_ns: int) -> float:
    """Share of the images chosen after ``since_ns`` at ``rung`` or a better one."""
    limit = LADDER.index(rung)
    names = {r.name: i for i, r in enumerate(LADDER)}
    chosen = [names[name] for robot in link.fleet for at, rungs in robot.choices
              if at >= since_ns for name in rungs]
    return sum(1 for i in chosen if i <= limit) / len(chosen)


@pytest.mark.parametrize("mbit", [10.0, 100.0])
def test_robots_behind_a_holding_bridge_keep_on_time_and_quality(mbit: float) -> None:
    """4 robots, two 224x224 cameras at 15 Hz, 100 ms deadline, 25 ms of worker time, on a
    shared link where 30% of frames are held up to 40 ms: auto stays on time without falling
    to the bottom of the ladder, and does not flap."""
    link = SharedLink(images(), mbit, base_ms=2.0, hold_share=0.3, hold_ms=40.0,
                      worker_ms=25.0, seed=0)
    link.run(10)  # settling
    settled = link.clock.now
    for robot in link.fleet:
        robot.on_time = robot.steps = 0
    link.run(20)
    assert link.on_time() >= 0.95
    fair = mbit * 1e6 / 8 / 4 / 15  # each robot's share of the link per frame
    assert min(link.frame_bytes(settled)) >= min(0.3 * fair, 20_000)
    if mbit >= 100:  # room to spare: JPEG 90 or better nearly always
        assert share_at_or_above(link, Rung("jpeg", 90), settled) >= 0.8
    for robot in link.fleet:
        assert robot.changes(settled) <= 2 * 20  # at most two changes a second


def test_a_fixed_delay_alone_settles() -> None:
    """One robot behind 30 ms of fixed delay at 10 Mbit/s: it finds its rungs and stays."""
    link = SharedLink(images(), 10.0, robots=1, base_ms=30.0, worker_ms=20.0)
    link.run(15)
    settled = link.clock.now
    link.run(10)
    robot = link.fleet[0]
    assert robot.changes(settled) <= 2
    assert robot.on_time == robot.steps
