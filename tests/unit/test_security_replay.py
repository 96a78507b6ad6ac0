"""Replay guard window semantics, with an injected clock."""

from __future__ import annotations

import pytest

from schemas.errors import Reason, ReplayError
from security.replay import ReplayGuard

NOW = 1_000_000_000_000


def guard(**kwargs: int) -> ReplayGuard:
    return ReplayGuard(clock=lambda: NOW, **kwargs)


def reason(g: ReplayGuard, key: str, seq: int, sig: bytes, sent_ns: int | None = None) -> Reason:
    with pytest.raises(ReplayError) as info:
        g.admit(key, seq, sig, sent_ns=sent_ns)
    return info.value.reason


def test_in_order_and_gaps_are_admitted() -> None:
    g = guard(window=8)
    for seq in (1, 2, 5, 9, 100):
        g.admit("k", seq, b"s%d" % seq)


def test_duplicate_versus_replay() -> None:
    g = guard()
    g.admit("k", 10, b"a")
    assert reason(g, "k", 10, b"a") is Reason.DUPLICATE
    assert reason(g, "k", 10, b"b") is Reason.REPLAY


def test_out_of_order_inside_the_window() -> None:
    g = guard(window=8)
    g.admit("k", 10, b"x10")
    g.admit("k", 5, b"x5")  # late but inside the window: a gap filled (shared subscriptions)
    assert reason(g, "k", 5, b"x5") is Reason.DUPLICATE
    g.admit("k", 3, b"x3")  # 10 - 8 < 3
    assert reason(g, "k", 2, b"x2") is Reason.REPLAY  # 2 <= 10 - 8: behind the window


def test_window_edge_moves_with_the_highest() -> None:
    g = guard(window=4)
    g.admit("k", 100, b"a")
    g.admit("k", 97, b"b")
    assert reason(g, "k", 96, b"c") is Reason.REPLAY
    g.admit("k", 200, b"d")
    assert reason(g, "k", 150, b"e") is Reason.REPLAY


def test_memory_per_sender_is_bounded() -> None:
    g = guard(window=16)
    for seq in range(1, 10_000):
        g.admit("k", seq, b"s")
    seen = g._senders["k"].seen  # white-box: the bound is the contract
    assert len(seen) <= 2 * 16 + 1
    # the most recent sequence numbers are still remembered as duplicates
    assert reason(g, "k", 9_999, b"s") is Reason.DUPLICATE
    assert reason(g, "k", 9_990, b"s") is Reason.DUPLICATE


def test_senders_are_independent_and_bounded() -> None:
    g = guard(max_senders=3)
    g.admit("a", 5, b"a")
    g.admit("b", 5, b"b")  # same sequence, other sender: fine
    for key in ("c", "d", "e"):
        g.admit(key, 1, b"x")
    assert len(g._senders) == 3
    g.admit("a", 5, b"a")  # "a" was evicted (least recently used) so it starts afresh


def test_clock_skew_window() -> None:
    g = guard(max_age_ns=1000, max_future_ns=100)
    g.admit("k", 1, b"a", sent_ns=NOW - 1000)
    g.admit("k", 2, b"b", sent_ns=NOW + 100)
    assert reason(g, "k", 3, b"c", sent_ns=NOW - 1001) is Reason.STALE
    assert reason(g, "k", 4, b"d", sent_ns=NOW + 101) is Reason.FUTURE
    g.admit("k", 3, b"c", sent_ns=None)  # untimed kinds skip the skew check
    # time checks come first and do not consume the sequence number
    g.admit("k", 4, b"d", sent_ns=NOW)


def test_rejections_leave_the_window_alone() -> None:
    g = guard(window=4)
    g.admit("k", 10, b"a")
    with pytest.raises(ReplayError):
        g.admit("k", 1 << 62, b"x", sent_ns=NOW + 10**12)  # future: rejected before the window
    g.admit("k", 11, b"b")
