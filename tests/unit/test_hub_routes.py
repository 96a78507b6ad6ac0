"""The hub's routing table without sockets: MQTT matching, groups, retained, liveness."""

from __future__ import annotations

import pytest

from schemas.topics import matches
from vlabus.hub.protocol import decode_meta, encode_meta
from vlabus.hub.routes import Routes


def test_wildcards_match_levels_not_prefixes() -> None:
    routes = Routes()
    routes.subscribe(b"a", "vla/v1/robot-1/#", "")
    routes.subscribe(b"b", "vla/v1/+/frame", "")
    assert list(routes.recipients(b"vla/v1/robot-1/frame")) == [b"a", b"b"]
    # ZeroMQ's SUB prefix filter would deliver this to a; MQTT matching must not.
    assert list(routes.recipients(b"vla/v1/robot-10/frame")) == [b"b"]
    assert list(routes.recipients(b"vla/v1/robot-10/frame/x")) == []


def test_leading_wildcards_do_not_match_dollar_topics() -> None:
    """MQTT 5.0, 4.7.2: "#" is not "$share/..." (a recorder's "#" rule must not let it join a
    worker pool) nor "$SYS/..."; a "$" level given literally still matches."""
    assert not matches("#", "$share/workers/vla/v1/+/frame")
    assert not matches("+/workers/#", "$share/workers/vla/v1/+/frame")
    assert matches("$share/+/vla/v1/+/frame", "$share/workers/vla/v1/+/frame")
    assert matches("#", "vla/v1/robot-1/frame")
    routes = Routes()
    routes.subscribe(b"a", "#", "")
    assert list(routes.recipients(b"$SYS/broker/uptime")) == []
    assert list(routes.recipients(b"vla/v1/r/frame")) == [b"a"]


def test_overlapping_subscriptions_deliver_once() -> None:
    routes = Routes()
    routes.subscribe(b"a", "vla/#", "")
    routes.subscribe(b"a", "vla/v1/+/frame", "")
    routes.subscribe(b"a", "vla/#", "")  # idempotent (resent after reconnects)
    assert list(routes.recipients(b"vla/v1/r/frame")) == [b"a"]


def test_group_round_robin_and_plain_fanout() -> None:
    routes = Routes()
    routes.subscribe(b"w1", "vla/v1/+/frame", "pool")
    routes.subscribe(b"w2", "vla/v1/+/frame", "pool")
    routes.subscribe(b"w2", "vla/v1/+/frame", "pool")
    routes.subscribe(b"log", "vla/v1/#", "")
    got = [list(routes.recipients(b"vla/v1/r/frame")) for _ in range(4)]
    assert got == [[b"log", b"w1"], [b"log", b"w2"], [b"log", b"w1"], [b"log", b"w2"]]
    routes.forget(b"w1")
    assert list(routes.recipients(b"vla/v1/r/frame")) == [b"log", b"w2"]


def test_retained_set_replayed_and_cleared() -> None:
    routes = Routes(max_retained=2)
    routes.retain("s/a", b"up")
    routes.retain("s/b", b"up")
    routes.retain("s/c", b"up")  # over the limit: refused, existing kept
    assert routes.subscribe(b"x", "s/+", "") == [("s/a", b"up"), ("s/b", b"up")]
    routes.retain("s/a", b"")
    assert routes.subscribe(b"y", "s/#", "") == [("s/b", b"up")]
    assert routes.subscribe(b"z", "s/+", "g") == []  # groups get no retained replay


def test_silent_clients_expire_after_three_heartbeats() -> None:
    routes = Routes()
    routes.seen(b"a", 0).heartbeat_ns = 100
    routes.seen(b"b", 0)  # never said HELLO: no heartbeat, never expires
    assert routes.expired(300) == []
    assert routes.expired(301) == [b"a"]
    routes.seen(b"a", 250)
    assert routes.expired(500) == []


def test_meta_round_trip_and_rejects_garbage() -> None:
    meta = decode_meta(encode_meta(retain=True, expires_ns=123, mid=b"7"))
    assert (meta.retain, meta.expires_ns, meta.mid) == (True, 123, b"7")
    assert decode_meta(b"") == decode_meta(encode_meta(retain=False, expires_ns=0, mid=b""))
    for bad in (b"x", b"eNaN", b"r1", b"q"):
        with pytest.raises(ValueError, match=r"."):
            decode_meta(bad)
