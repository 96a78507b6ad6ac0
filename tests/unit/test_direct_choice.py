"""Choosing a direct worker: what a status advertises, and power of two choices on depth."""

from __future__ import annotations

import random
from collections import Counter

from schemas.status import DirectAdvert, direct_advert, status_message
from tests.support.clock import FakeClock
from vlabus.direct.choice import Directory


def advert(worker: str, depth: int = 0, *, session: int = 1, time_ns: int = 1,
           endpoint: str = "tcp://10.0.0.1:5555") -> DirectAdvert:
    return DirectAdvert(worker, endpoint, depth, "", session, time_ns)


def test_a_worker_status_advertises_its_endpoint_depth_and_curve_key() -> None:
    status = status_message("worker-1", "worker", "online", session=3, queue_depth=7,
                            detail={"group": "gpu", "health": "ok", "direct": "tcp://h:1",
                                    "direct_curve": "K" * 40})
    assert status.detail["group"] == "gpu"  # the keys it had are kept
    got = direct_advert(status)
    assert got is not None
    assert (got.endpoint, got.queue_depth, got.curve_key, got.session) == (
        "tcp://h:1", 7, "K" * 40, 3)


def test_no_advert_from_an_offline_degraded_or_plain_worker_or_a_bad_endpoint() -> None:
    direct = {"direct": "tcp://h:1"}
    for status in (
        status_message("worker-1", "worker", "offline", session=1, detail=direct),
        status_message("worker-1", "worker", "online", session=1,
                       detail={**direct, "health": "degraded"}),
        status_message("worker-1", "worker", "online", session=1),
        status_message("worker-1", "worker", "online", session=1,
                       detail={"direct": "ipc:///tmp/x"}),
        status_message("robot-a", "robot", "online", session=1, detail=direct),
    ):
        assert direct_advert(status) is None
    odd = status_message("worker-1", "worker", "online", session=1,
                         detail={**direct, "queue_depth": "-3"})
    got = direct_advert(odd)
    assert got is not None
    assert got.queue_depth == 0


def test_power_of_two_choices_avoids_the_loaded_worker_and_spreads_over_the_rest() -> None:
    clock = FakeClock()
    directory = Directory(clock=clock, rng=random.Random(7))
    directory.update(advert("busy", depth=12))
    for name in ("a", "b", "c"):
        directory.update(advert(name, depth=1))
    picks = Counter(directory.pick() for _ in range(3000))
    assert picks["busy"] == 0  # it loses every pair it is drawn into
    assert min(picks[name] for name in "abc") > 700


def test_a_robots_own_inflight_requests_count_as_load() -> None:
    directory = Directory(clock=FakeClock(), rng=random.Random(1))
    directory.update(advert("a"))
    directory.update(advert("b"))
    for _ in range(3):
        directory.sent("a")
    assert all(directory.pick() == "b" for _ in range(50))
    for _ in range(3):
        directory.answered("a", depth=0)
    assert {directory.pick() for _ in range(200)} == {"a", "b"}


def test_a_reply_carries_a_fresher_depth_than_the_status() -> None:
    directory = Directory(clock=FakeClock(), rng=random.Random(1))
    directory.update(advert("a"))
    directory.update(advert("b"))
    directory.sent("a")
    directory.answered("a", depth=9)
    assert all(directory.pick() == "b" for _ in range(50))


def test_a_failed_worker_cools_down_longer_each_time_and_a_reply_resets_it() -> None:
    clock = FakeClock()
    directory = Directory(clock=clock, rng=random.Random(1), backoff_s=0.5, max_backoff_s=2)
    directory.update(advert("a"))
    assert directory.failed("a") == 0.5
    assert directory.pick() is None
    clock.advance(500)
    assert directory.pick() == "a"
    assert directory.failed("a") == 1.0
    assert directory.failed("a") == 2.0
    assert directory.failed("a") == 2.0  # capped
    clock.advance(2000)
    directory.answered("a")
    assert directory.failed("a") == 0.5


def test_a_silent_worker_goes_stale_and_an_older_status_never_replaces_a_newer() -> None:
    clock = FakeClock()
    directory = Directory(clock=clock, stale_s=10)
    directory.update(advert("a", depth=1, session=2, time_ns=5))
    assert not directory.update(advert("a", depth=0, session=1, time_ns=9))
    assert directory.entries["a"].depth == 1
    clock.advance(11_000)
    assert directory.pick() is None
    assert directory.update(advert("a", depth=2, session=2, time_ns=6))
    assert directory.pick() == "a"
    directory.remove("a")
    assert directory.pick() is None


def test_a_restarted_worker_starts_with_a_clean_record() -> None:
    clock = FakeClock()
    directory = Directory(clock=clock)
    directory.update(advert("a", session=1))
    directory.failed("a")
    assert directory.pick() is None
    directory.update(advert("a", session=2))
    assert directory.pick() == "a"
