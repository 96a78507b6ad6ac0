"""The transport contract, continued: what happens around delivery, on every bus.

Wills when a client vanishes, retained messages for late subscribers, the bounded outbox and
message expiry while the bus is down, oversize payloads refused without harm, and a bus that
cannot be reached. Nothing here sleeps and then checks that nothing arrived: each such check
publishes a marker afterwards and waits for it (:func:`until_marker`).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from schemas.errors import TransportError
from tests.support.aio import TIMEOUT, eventually, recv
from tests.support.buses import Bus, settle, until_marker
from vlabus.bus.transport import Transport, Will, open_transport

STATUS = "vla/v1/+/status"


async def _lose_connection(*transports: Transport) -> None:
    """Wait until every transport has noticed that the bus is gone (a QoS 0 probe makes an
    MQTT client find out without waiting for its keepalive)."""
    async def probe() -> None:
        for transport in transports:
            if transport.connected:
                await transport.publish("vla/v1/probe/frame", b"probe")

    await eventually(lambda: not any(t.connected for t in transports), nudge=probe,
                     interval=0.01)


def test_a_vanished_client_s_will_is_published_and_retained(bus: Bus) -> None:
    async def body() -> None:
        watcher, pub = await bus.connect(), await bus.connect()
        await watcher.subscribe(STATUS)
        await settle(pub, watcher, "vla/v1/probe/status")
        doomed = await bus.connect("robot-x", will=Will("vla/v1/robot-x/status", b"gone"))
        doomed.abort()  # no goodbye: the broker, the hub or the memory bus publishes the will
        message = await recv(watcher)
        assert (message.topic, bytes(message.payload)) == ("vla/v1/robot-x/status", b"gone")
        late = await bus.connect()
        await late.subscribe("vla/v1/robot-x/status")  # the will was retained
        message = await recv(late)
        assert (message.topic, bytes(message.payload)) == ("vla/v1/robot-x/status", b"gone")

    bus.run(body)


def test_retained_messages_reach_late_subscribers_until_cleared(bus: Bus) -> None:
    async def body() -> None:
        pub = await bus.connect()
        await pub.publish("vla/v1/robot-a/status", b"online", qos=1, retain=True)
        await pub.publish("vla/v1/robot-a/status", b"online, again", qos=1, retain=True)
        await pub.publish("vla/v1/robot-b/status", b"plain", qos=1)  # not retained
        first = await bus.connect()
        await first.subscribe(STATUS)
        await pub.publish("vla/v1/marker/status", b"marker", qos=1)
        seen = await until_marker(first, b"marker")
        assert [(m.topic, bytes(m.payload)) for m in seen] == [
            ("vla/v1/robot-a/status", b"online, again")]  # the last one, and only retained
        await pub.publish("vla/v1/robot-a/status", b"", qos=1, retain=True)  # clears it
        second = await bus.connect()
        await second.subscribe(STATUS)
        await pub.publish("vla/v1/marker/status", b"marker", qos=1)
        assert await until_marker(second, b"marker") == []

    bus.run(body)


def test_outbox_keeps_the_newest_drops_the_expired_and_delivers_after_the_outage(
        bus: Bus, request: pytest.FixtureRequest) -> None:
    """While the bus is down, QoS 1 publishes wait in a bounded outbox: the oldest are evicted
    when it is full (their publishers get TransportError), those whose expiry passes are dropped
    at reconnect, and the rest are delivered once the bus is back. (Retained, so that they reach
    a subscriber whenever it resubscribes.)"""
    if bus.stop is None or bus.start is None:
        pytest.skip(f"{bus.kind} has no connection to lose")
    stop, start = bus.stop, bus.start
    if bus.kind == "zmq":
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "zmq completes a QoS 1 publish made while disconnected at once (unconfirmed), so "
            "evicted and expired publishes do not fail their publishers as they do on MQTT")))

    async def body() -> None:
        pub = await bus.connect(outbox_size=4)
        await asyncio.to_thread(stop)
        await _lose_connection(pub)
        sends = {f"q{i}": pub.publish_nowait(f"vla/v1/q{i}/status", b"q%d" % i, qos=1,
                                              retain=True, expiry_s=60) for i in range(5)}
        sends["stale"] = pub.publish_nowait("vla/v1/stale/status", b"stale", qos=1,
                                            retain=True, expiry_s=0.2)
        expired_at = time.monotonic() + 0.5
        # the outage outlasts the stale message's expiry
        await eventually(lambda: time.monotonic() > expired_at, interval=0.05)
        await asyncio.to_thread(start)
        results = {}
        for name, sent in sends.items():
            try:
                await asyncio.wait_for(sent, TIMEOUT)
                results[name] = "sent"
            except TransportError:
                results[name] = "failed"
        assert results == {"q0": "failed", "q1": "failed",  # evicted: the outbox holds 4
                           "q2": "sent", "q3": "sent", "q4": "sent", "stale": "failed"}
        late = await bus.connect()
        await late.subscribe(STATUS)
        await pub.publish("vla/v1/marker/status", b"marker", qos=1)
        seen = await until_marker(late, b"marker")
        assert sorted(bytes(m.payload) for m in seen) == [b"q2", b"q3", b"q4"]

    bus.run(body)


def test_oversize_payloads_fail_the_call_and_lose_nothing_else(bus: Bus) -> None:
    async def body() -> None:
        sub, pub = await bus.connect(), await bus.connect()
        cap = pub.options.max_payload  # type: ignore[attr-defined]
        await sub.subscribe("vla/v1/robot-a/frame")
        await settle(pub, sub, "vla/v1/robot-a/frame")
        pub.publish_nowait("vla/v1/robot-a/frame", b"before", qos=1)
        for qos in (0, 1):
            with pytest.raises(TransportError):
                await pub.publish("vla/v1/robot-a/frame", bytes(cap + 1), qos=qos)
            with pytest.raises(TransportError):
                await pub.publish_nowait("vla/v1/robot-a/frame", bytes(cap + 1), qos=qos)
        await pub.publish("vla/v1/robot-a/frame", b"after", qos=1)
        assert [bytes((await recv(sub)).payload) for _ in range(2)] == [b"before", b"after"]
        assert pub.connected
        assert pub.counters().get("reconnects", 0) == 0

    bus.run(body)


def test_an_unreachable_bus_fails_to_open_in_bounded_time(bus: Bus) -> None:
    if bus.unreachable is None:
        pytest.skip(f"{bus.kind} is always reachable")
    url = bus.unreachable

    async def body() -> None:
        started = time.monotonic()
        with pytest.raises(TransportError):
            await open_transport(url, bus.options(bus.name(), extra={"connect_timeout_s": "1"}))
        assert time.monotonic() - started < TIMEOUT

    bus.run(body)
