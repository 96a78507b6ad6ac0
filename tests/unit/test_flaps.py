"""Reconnect backoff against connections that end right after they are made (a duplicate client
id, a broker that drops the client) and sessions another client takes over."""

from __future__ import annotations

from vlabus.bus.backoff import Backoff, Flaps


def flaps(**extra: str) -> Flaps:
    backoff = Backoff(0.1, 1.0, uniform=lambda low, high: high)  # the ceiling, no jitter
    return Flaps(backoff, {"stable_s": "3", "takeover_hold_s": "30", **extra}, "worker-1")


def test_a_stable_connection_resets_the_backoff() -> None:
    f = flaps()
    for _ in range(4):
        f.backoff.next_delay()
    f.up(0.0)
    assert f.down(10.0)["flaps"] == 0
    assert f.backoff.next_delay() == 0.1


def test_short_lived_connections_keep_backing_off_and_then_hold() -> None:
    f = flaps()
    delays = []
    for i in range(3):
        f.up(10.0 * i)
        f.down(10.0 * i + 0.2)
        delays.append(f.backoff.next_delay())
    assert f.counts["flaps"] == 3
    assert delays[:2] == [0.1, 0.2]  # not reset between them
    assert delays[2] == 30.0  # the third in a row: hold
    f.up(100.0)
    f.down(100.1)
    assert f.backoff.next_delay() < 30.0  # the streak starts again after a hold


def test_a_takeover_holds_at_once_and_is_counted() -> None:
    f = flaps(takeover_hold_s="7")
    f.up(0.0)
    counts = f.down(60.0, taken_over=True)
    assert counts == {"flaps": 0, "taken_over": 1}
    assert f.backoff.next_delay() == 7.0
    assert f.backoff.next_delay() < 7.0  # a hold applies once
