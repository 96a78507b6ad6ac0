"""The ZeroMQ hub and adapter over real sockets: semantics, wills, restart, limits."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from schemas.errors import TransportError
from tests.support.aio import eventually, recv, run
from vlabus.bus.transport import TransportOptions, Will, open_transport
from vlabus.bus.zmq import ZmqTransport, open_zmq
from vlabus.hub.config import HubConfig
from vlabus.hub.protocol import tcp_endpoint
from vlabus.hub.server import Hub

pytestmark = pytest.mark.integration


async def client(url: str, name: str, **kw: Any) -> ZmqTransport:
    extra = kw.pop("extra", {"heartbeat_ms": "200"})
    return await open_zmq(url, TransportOptions(client_id=name, extra=extra, **kw))


async def sync(t: ZmqTransport) -> None:
    """A QoS 1 round trip: once acknowledged, the hub has processed all earlier frames of t."""
    await t.publish("vla/v1/sync/none", b"", qos=1)


def test_open_transport_picks_zmq_and_round_trips(zmq_hub: Hub) -> None:
    async def body() -> None:
        a = await open_transport(zmq_hub.url, TransportOptions(client_id="a"))
        assert isinstance(a, ZmqTransport)
        assert a.connected
        await a.subscribe("vla/v1/+/frame")
        await sync(a)
        await a.publish("vla/v1/r/frame", b"hello", qos=1)
        msg = await recv(a)
        assert (msg.topic, bytes(msg.payload)) == ("vla/v1/r/frame", b"hello")
        big = bytes(range(256)) * 600  # 150 KB: zero-copy path
        await a.publish("vla/v1/r/frame", big)
        got = (await recv(a)).payload
        assert isinstance(got, memoryview)  # zero-copy view of the received frame
        assert bytes(got) == big
        await a.publish("vla/v1/r/frame", got)  # relayed: the frame itself is sent again
        assert bytes((await recv(a)).payload) == big
        await a.close()
        assert not a.connected
        with pytest.raises(TransportError):
            await a.publish("vla/v1/r/frame", b"x")
    run(body())


def test_wildcards_are_mqtt_not_prefix(zmq_hub: Hub) -> None:
    async def body() -> None:
        sub = await client(zmq_hub.url, "sub")
        pub = await client(zmq_hub.url, "pub")
        await sub.subscribe("vla/v1/robot-1/#")
        await sync(sub)
        await pub.publish("vla/v1/robot-10/frame", b"wrong robot")
        await pub.publish("vla/v1/robot-1/frame", b"right")
        assert bytes((await recv(sub)).payload) == b"right"
        await pub.close()
        await sub.close()
    run(body())


def test_shared_group_splits_round_robin(zmq_hub: Hub) -> None:
    async def body() -> None:
        w1, w2 = await client(zmq_hub.url, "w1"), await client(zmq_hub.url, "w2")
        pub = await client(zmq_hub.url, "pub")
        for w in (w1, w2):
            await w.subscribe("vla/v1/+/task", group="pool")
            await sync(w)
        for i in range(10):
            await pub.publish("vla/v1/r/task", b"%d" % i, qos=1)
        got1 = [bytes((await recv(w1)).payload) for _ in range(5)]
        got2 = [bytes((await recv(w2)).payload) for _ in range(5)]
        assert sorted(got1 + got2, key=int) == [b"%d" % i for i in range(10)]
        assert got1 == [b"0", b"2", b"4", b"6", b"8"]  # per-sender order kept
        for t in (w1, w2, pub):
            await t.close()
    run(body())


def test_retained_and_cleared(zmq_hub: Hub) -> None:
    async def body() -> None:
        pub = await client(zmq_hub.url, "pub")
        await pub.publish("vla/v1/r/status", b"online", retain=True, qos=1)
        late = await client(zmq_hub.url, "late")
        await late.subscribe("vla/v1/+/status")
        assert bytes((await recv(late)).payload) == b"online"
        await pub.publish("vla/v1/r/status", b"", retain=True, qos=1)
        assert bytes((await recv(late)).payload) == b""
        later = await client(zmq_hub.url, "later")
        await later.subscribe("vla/v1/+/status")
        await pub.publish("vla/v1/r/status", b"sentinel", qos=1)
        assert bytes((await recv(later)).payload) == b"sentinel"
        for t in (pub, late, later):
            await t.close()
    run(body())


@contextmanager
def raw_dealer(url: str) -> Iterator[zmq.Socket[bytes]]:
    """A bare DEALER on the hub: the protocol spoken by hand, no adapter checks."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(tcp_endpoint(url))
    try:
        yield dealer
    finally:
        dealer.close(0)
        ctx.term()


def test_sub_with_a_mid_is_acknowledged_before_its_retained_messages(zmq_hub: Hub) -> None:
    """The hub protocol by hand: a SUB with a mid gets ACK first (as MQTT's SUBACK precedes
    retained messages); a SUB without one, from an older client, gets no answer but works."""
    async def body() -> None:
        pub = await client(zmq_hub.url, "pub")
        await pub.publish("vla/v1/r/status", b"online", retain=True, qos=1)
        await pub.close()
    run(body())
    with raw_dealer(zmq_hub.url) as dealer:
        dealer.send_multipart([b"S", b"vla/v1/+/status", b"", b"7"])
        assert dealer.poll(5000)
        assert dealer.recv_multipart() == [b"A", b"7"]
        assert dealer.poll(5000)
        assert dealer.recv_multipart() == [b"Mvla/v1/r/status", b"online"]
        dealer.send_multipart([b"S", b"vla/v1/r/#", b""])  # the old form
        assert dealer.poll(5000)
        assert dealer.recv_multipart() == [b"Mvla/v1/r/status", b"online"]
        assert not dealer.poll(200)  # no ACK for it


def test_the_hub_refuses_invalid_topics_from_any_client(zmq_hub: Hub) -> None:
    """A client that skips the adapter's checks: an invalid filter or a wildcard topic is
    answered with NACK and counted as malformed; the hub routes nothing of it, and serves on."""
    with raw_dealer(zmq_hub.url) as dealer:
        dealer.send_multipart([b"S", b"vla/#/x", b"", b"1"])
        assert dealer.poll(5000)
        verb, mid, reason = dealer.recv_multipart()
        assert (verb, mid) == (b"N", b"1")
        assert b"invalid topic filter" in reason
        dealer.send_multipart([b"S", b"#", b"", b"2"])
        assert dealer.poll(5000)
        assert dealer.recv_multipart() == [b"A", b"2"]
        for topic in (b"vla/+/x", b"", b"vla/#"):
            dealer.send_multipart([b"P" + topic + b"\0q9", b"bad"])
            assert dealer.poll(5000)
            assert dealer.recv_multipart()[:2] == [b"N", b"9"]
        dealer.send_multipart([b"Pvla/ok\0q10", b"good"])
        got = [dealer.recv_multipart() for _ in range(2) if dealer.poll(5000)]
        assert sorted(got) == [[b"A", b"10"], [b"Mvla/ok", b"good"]]
        assert zmq_hub.counters()["malformed"] == 4


def test_will_on_abort_not_on_close(zmq_hub: Hub) -> None:
    async def body() -> None:
        watcher = await client(zmq_hub.url, "watcher")
        await watcher.subscribe("vla/v1/+/status")
        await sync(watcher)
        will = Will("vla/v1/robot-a/status", b"dead")
        polite = await client(zmq_hub.url, "robot-a", will=will)
        await polite.close()
        await eventually(lambda: zmq_hub.counters()["clients"] == 1)
        crashing = await client(zmq_hub.url, "robot-a", will=will)
        crashing.abort()
        msg = await recv(watcher)
        assert (msg.topic, bytes(msg.payload)) == ("vla/v1/robot-a/status", b"dead")
        assert zmq_hub.counters()["wills"] == 1
        await watcher.close()
    run(body())


def test_will_when_heartbeat_stops(zmq_hub: Hub) -> None:
    """A client whose connection stays up but which stops sending is declared gone."""
    async def body() -> None:
        watcher = await client(zmq_hub.url, "watcher")
        await watcher.subscribe("vla/v1/+/status")
        await sync(watcher)
        ctx = zmq.Context.instance()
        stalled = ctx.socket(zmq.DEALER)
        stalled.connect(tcp_endpoint(zmq_hub.url))
        stalled.send_multipart([b"H", b"stalled", b"50", b"vla/v1/stalled/status", b"gone", b"1"])
        msg = await recv(watcher)
        assert (msg.topic, bytes(msg.payload)) == ("vla/v1/stalled/status", b"gone")
        stalled.close(0)
        await watcher.close()
    run(body())


def test_expired_not_delivered(zmq_hub: Hub) -> None:
    async def body() -> None:
        t = await client(zmq_hub.url, "t")
        await t.subscribe("vla/v1/+/frame")
        await sync(t)
        await t.publish("vla/v1/r/frame", b"stale", expiry_s=1e-9)
        await t.publish("vla/v1/r/frame", b"fresh", expiry_s=30)
        assert bytes((await recv(t)).payload) == b"fresh"
        assert zmq_hub.counters()["expired"] == 1
        await t.close()
    run(body())


def test_hub_restart_resubscribes_and_flushes_outbox() -> None:
    async def body() -> None:
        hub = Hub(HubConfig(heartbeat_ms=200)).start()
        url = hub.url
        sub = await client(url, "sub")
        # The hub keeps no state across a restart: what pub re-sends before sub has subscribed
        # again reaches nobody (as on a broker without persistent sessions). pub reconnects
        # seconds after sub here, and the test checks that order rather than assuming it.
        pub = await client(url, "pub", extra={"heartbeat_ms": "200", "reconnect_min_s": "2",
                                              "reconnect_max_s": "2"})
        await sub.subscribe("vla/v1/+/task")
        await sub.subscribe("vla/v1/+/frame")
        await pub.publish("vla/v1/pub/status", b"online", retain=True, qos=1)
        await sync(sub)
        hub.stop()
        await eventually(lambda: not sub.connected and not pub.connected)
        # During the outage: a task request is kept, a frame past its deadline is not.
        await pub.publish("vla/v1/r/frame", b"old frame", expiry_s=1e-9)
        await pub.publish("vla/v1/r/task", b"kept task", qos=1)
        hub = Hub(HubConfig(bind=tcp_endpoint(url), heartbeat_ms=200)).start()
        try:
            await eventually(lambda: sub.connected)
            await sync(sub)  # the hub now has sub's subscriptions again
            assert not pub.connected
            await eventually(lambda: pub.connected, timeout=10)
            await pub.publish("vla/v1/r/task", b"after", qos=1)
            got = {bytes((await recv(sub)).payload) for _ in range(2)}
            assert got == {b"kept task", b"after"}
            assert pub.counters()["expired_dropped"] == 1
            assert sub.counters()["reconnects"] == 1
            # retained status was re-published by its owner
            assert "vla/v1/pub/status" in hub.routes.retained
            await pub.close()
            await sub.close()
        finally:
            hub.stop()
    run(body())


def test_hwm_drops_are_counted_and_publisher_not_blocked() -> None:
    async def body() -> None:
        hub = Hub(HubConfig(hwm=4, heartbeat_ms=200)).start()
        ctx = zmq.Context.instance()
        slow = ctx.socket(zmq.DEALER)  # subscribes, then never reads
        slow.setsockopt(zmq.RCVHWM, 4)
        slow.setsockopt(zmq.RCVBUF, 65536)
        slow.connect(tcp_endpoint(hub.url))
        slow.send_multipart([b"S", b"vla/v1/+/frame", b""])
        try:
            pub = await client(hub.url, "pub")
            await sync(pub)  # the hub is serving; slow's SUB was sent before pub existed
            await eventually(lambda: bool(hub.routes.plain.get("vla/v1/+/frame")))
            payload = b"x" * 100_000
            for _ in range(200):
                await pub.publish("vla/v1/r/frame", payload)
            await sync(pub)
            assert hub.counters()["dropped_hwm"] > 0
            assert hub.counters()["delivered"] + hub.counters()["dropped_hwm"] == 200
            await pub.close()
        finally:
            slow.close(0)
            hub.stop()
    run(body())


def test_oversize_refused_by_adapter_and_hub() -> None:
    async def body() -> None:
        hub = Hub(HubConfig(max_msg_size=1 << 20, heartbeat_ms=200)).start()
        try:
            t = await client(hub.url, "t", max_payload=1 << 20)
            with pytest.raises(TransportError, match="over"):
                await t.publish("vla/v1/r/frame", b"x" * ((1 << 20) + 1))
            await t.subscribe("vla/v1/+/frame")
            await sync(t)
            ctx = zmq.Context.instance()
            rogue = ctx.socket(zmq.DEALER)
            monitor = rogue.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            rogue.connect(tcp_endpoint(hub.url))
            rogue.send_multipart([b"Pvla/v1/r/frame", b"y" * (2 << 20)])
            loop = asyncio.get_running_loop()
            event = await loop.run_in_executor(None, recv_monitor_message, monitor)
            assert event["event"] == zmq.EVENT_DISCONNECTED  # libzmq cut the rogue off
            await t.publish("vla/v1/r/frame", b"small", qos=1)
            assert bytes((await recv(t)).payload) == b"small"
            rogue.disable_monitor()
            monitor.close(0)
            rogue.close(0)
            await t.close()
        finally:
            hub.stop()
    run(body())


def test_malformed_frames_counted_hub_keeps_serving(zmq_hub: Hub) -> None:
    async def body() -> None:
        t = await client(zmq_hub.url, "t")
        await t.subscribe("vla/v1/+/frame")
        ctx = zmq.Context.instance()
        bad = ctx.socket(zmq.DEALER)
        bad.connect(tcp_endpoint(zmq_hub.url))
        for frames in ([b"Z"], [b"P", b"t", b"", b"x"], [b"P\xff", b"x"], [b"Pt\0e?", b"x"],
                       [b"S", b"x"], [b"H", b"a", b"notanumber", b"", b"", b"0"]):
            bad.send_multipart(frames)
        bad.send_multipart([b"Pvla/v1/r/frame", b"ok"])
        assert bytes((await recv(t)).payload) == b"ok"
        assert zmq_hub.counters()["malformed"] == 6
        bad.close(0)
        await t.close()
    run(body())


def test_connect_to_nothing_fails_clearly() -> None:
    async def body() -> None:
        with socket_port() as port, pytest.raises(TransportError, match="no answer"):
            await client(f"zmq://127.0.0.1:{port}", "t",
                         extra={"connect_timeout_s": "0.3", "heartbeat_ms": "200"})
    run(body())


@contextmanager
def socket_port() -> Iterator[int]:
    """A port held bound but not listening: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def test_bind_conflict_fails_clearly(zmq_hub: Hub) -> None:
    with pytest.raises(TransportError, match="hub failed to start"):
        Hub(HubConfig(bind=tcp_endpoint(zmq_hub.url))).start()
    zmq_hub.stop()
    zmq_hub.stop()  # idempotent


def test_outbox_bounded_while_disconnected() -> None:
    async def body() -> None:
        hub = Hub(HubConfig(heartbeat_ms=200)).start()
        t = await client(hub.url, "t", outbox_size=3)
        hub.stop()
        await eventually(lambda: not t.connected)
        for i in range(5):
            await t.publish("vla/v1/r/frame", b"%d" % i)
        await t.publish("vla/v1/r/task", b"kept", qos=1)  # returns: kept for resend
        counters = t.counters()
        assert (counters["outbox"], counters["outbox_dropped"]) == (3, 2)
        await t.close()
    run(body())


@contextmanager
def silent_hub() -> Iterator[tuple[str, zmq.Socket[Any]]]:
    """A ROUTER that welcomes clients and then never acknowledges a publish."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        yield f"zmq://127.0.0.1:{port}", router
    finally:
        router.close(0)
        ctx.term()


async def welcome(router: zmq.Socket[Any]) -> None:
    while not router.poll(0):
        await asyncio.sleep(0.005)
    rid, verb, *_ = router.recv_multipart()
    assert verb == b"H"
    router.send_multipart([rid, b"W"])


def test_unacknowledged_qos1_publish_fails_after_two_keepalives_and_is_forgotten() -> None:
    async def body() -> None:
        with silent_hub() as (url, router):
            opening = asyncio.ensure_future(client(url, "lonely", keepalive_s=1))
            await welcome(router)
            t = await opening
            started = time.monotonic()
            acked = t.publish_nowait("vla/v1/r/action", b"x", qos=1)
            assert not acked.done()
            with pytest.raises(TransportError, match="did not acknowledge"):
                await asyncio.wait_for(acked, 5)
            assert 1.8 < time.monotonic() - started < 4
            assert not t._session.inflight  # not re-sent after a later reconnect
            t.abort()

    run(body())


def test_a_subscription_the_hub_never_answers_fails_clearly() -> None:
    """A hub that does not confirm subscriptions (one older than this client) gives an error
    after two keepalives, not a silent subscription that receives nothing."""
    async def body() -> None:
        with silent_hub() as (url, router):
            opening = asyncio.ensure_future(client(url, "lonely", keepalive_s=1))
            await welcome(router)
            t = await opening
            started = time.monotonic()
            with pytest.raises(TransportError, match="did not answer the subscription"):
                await t.subscribe("vla/v1/r/action")
            assert 1.8 < time.monotonic() - started < 4
            assert not t._sub_waits
            t.abort()

    run(body())


def test_qos1_publishes_beyond_the_outbox_fail_oldest_first() -> None:
    async def body() -> None:
        with silent_hub() as (url, router):
            opening = asyncio.ensure_future(client(url, "crowded", outbox_size=2))
            await welcome(router)
            t = await opening
            first, second, third = (t.publish_nowait("vla/v1/r/action", b"%d" % i, qos=1)
                                    for i in range(3))
            with pytest.raises(TransportError, match="outbox full"):
                await first
            assert not second.done()
            assert not third.done()
            assert t.counters()["outbox_dropped"] == 1
            t.abort()

    run(body())
