"""One behaviour suite for every transport: memory, the ZeroMQ hub and a real Mosquitto.

Each test runs the same code against ``bus`` (``tests/contract/conftest.py``), parametrized
over the three adapters, so code above the transport layer can rely on the same semantics
whichever bus runs. This module: delivery, topics, wildcards, groups, order, payload sizes,
reconnects. ``test_lifecycle.py``: wills, retained messages, the outbox and expiry, oversize
payloads, an unreachable bus.
"""

from __future__ import annotations

import asyncio

import pytest

from schemas.errors import PublishRejected, SubscribeRejected, TransportError
from tests.support.aio import TIMEOUT, recv
from tests.support.buses import Bus, settle, try_recv
from vlabus.bus.transport import Message


def test_publish_subscribe_exact_bytes(bus: Bus) -> None:
    async def body() -> None:
        sub, pub = await bus.connect(), await bus.connect()
        await sub.subscribe("vla/v1/robot-a/action")
        await settle(pub, sub, "vla/v1/robot-a/action")
        payload = bytes(range(256)) * 4
        await pub.publish("vla/v1/robot-a/action", payload, qos=1)
        message = await recv(sub)
        assert (message.topic, bytes(message.payload)) == ("vla/v1/robot-a/action", payload)
        assert message.received_ns > 0

    bus.run(body)


def test_publish_nowait_sends_before_returning_and_completes_on_ack(bus: Bus) -> None:
    async def body() -> None:
        sub, pub = await bus.connect(), await bus.connect()
        await sub.subscribe("vla/v1/robot-a/action")
        await settle(pub, sub, "vla/v1/robot-a/action")
        plain = pub.publish_nowait("vla/v1/robot-a/action", b"at-most-once", qos=0)
        assert plain.done()  # nothing to wait for at QoS 0
        assert plain.result() is None
        acked = pub.publish_nowait("vla/v1/robot-a/action", b"at-least-once", qos=1)
        await asyncio.wait_for(acked, TIMEOUT)  # resolves on the hub's ACK / broker's PUBACK
        got = [bytes((await recv(sub)).payload) for _ in range(2)]
        assert got == [b"at-most-once", b"at-least-once"]
        await pub.close()
        with pytest.raises(TransportError):
            pub.publish_nowait("vla/v1/robot-a/action", b"late", qos=1)

    bus.run(body)


def test_invalid_topics_fail_the_call_and_lose_nothing_else(bus: Bus) -> None:
    """Checked before sending, on every bus: Mosquitto would drop the connection over a bad
    name, and with it whatever else was in flight; the hub would route a wildcard literally."""
    async def body() -> None:
        sub, pub = await bus.connect(), await bus.connect()
        await sub.subscribe("vla/v1/robot-a/action")
        await settle(pub, sub, "vla/v1/robot-a/action")
        pub.publish_nowait("vla/v1/robot-a/action", b"before", qos=1)
        for topic in ("", "vla/v1/+/action", "vla/v1/#", "vla/v1/a\0b"):
            for qos in (0, 1):
                with pytest.raises(PublishRejected) as refused:
                    await pub.publish(topic, b"bad", qos=qos)
                assert refused.value.code == 0x90
            with pytest.raises(PublishRejected):
                pub.publish_nowait(topic, b"bad")
        for pattern, group in (("", None), ("vla/#/x", None), ("vla/a+", None),
                               ("$share/workers/vla/v1/+/frame", None),
                               ("vla/v1/+/frame", "a/b"), ("vla/v1/+/frame", "g#")):
            with pytest.raises(SubscribeRejected) as rejected:
                await sub.subscribe(pattern, group=group)
            assert rejected.value.code == 0x8F
        with pytest.raises(TransportError, match="qos 2 not supported"):
            await pub.publish("vla/v1/robot-a/action", b"exactly once?", qos=2)
        await pub.publish("vla/v1/robot-a/action", b"after", qos=1)
        assert [bytes((await recv(sub)).payload) for _ in range(2)] == [b"before", b"after"]
        assert pub.connected
        assert sub.connected
        assert pub.counters().get("reconnects", 0) == 0

    bus.run(body)


def test_wildcards(bus: Bus) -> None:
    async def body() -> None:
        plus, hash_, pub = await bus.connect(), await bus.connect(), await bus.connect()
        await plus.subscribe("vla/v1/+/frame")
        await hash_.subscribe("vla/v1/models/#")
        await settle(pub, plus, "vla/v1/probe/frame")
        await settle(pub, hash_, "vla/v1/models/probe")
        for topic in ["vla/v1/robot-a/frame", "vla/v1/robot-a/task", "vla/v1/models/m/chunk",
                      "vla/v1/robot-b/frame", "vla/v1/models/m/manifest", "vla/v1/a/b/frame"]:
            await pub.publish(topic, topic.encode(), qos=1)
        await pub.publish("vla/v1/end/frame", b"end", qos=1)
        await pub.publish("vla/v1/models/end", b"end", qos=1)
        got_plus = [(await recv(plus)).topic for _ in range(3)]
        got_hash = [(await recv(hash_)).topic for _ in range(3)]
        assert got_plus == ["vla/v1/robot-a/frame", "vla/v1/robot-b/frame", "vla/v1/end/frame"]
        assert got_hash == ["vla/v1/models/m/chunk", "vla/v1/models/m/manifest",
                            "vla/v1/models/end"]

    bus.run(body)


def test_shared_group_splits_load(bus: Bus) -> None:
    async def body() -> None:
        members = [await bus.connect(), await bus.connect()]
        watcher, pub = await bus.connect(), await bus.connect()
        for member in members:
            await member.subscribe("vla/v1/+/task", group="workers")
        await watcher.subscribe("vla/v1/+/task")
        await settle(pub, watcher, "vla/v1/probe/task")
        # Probes may land on members, and a member may still be joining: wait until each
        # member has received one, then drain them.
        for member in members:
            for _ in range(100):
                await pub.publish("vla/v1/probe/task", b"probe", qos=1)
                try:
                    await asyncio.wait_for(member.receive(), 0.1)
                    break
                except TimeoutError:
                    continue
        for transport in [watcher, *members]:
            while await try_recv(transport, 0.2) is not None:
                pass
        count = 40
        for i in range(count):
            await pub.publish("vla/v1/robot-a/task", f"{i}".encode(), qos=1)
        seen = [int(bytes((await recv(watcher)).payload)) for _ in range(count)]
        assert seen == list(range(count))
        shares: list[list[int]] = [[], []]
        while sum(map(len, shares)) < count:
            for index, member in enumerate(members):
                message = await try_recv(member, 0.05)
                if message is not None:
                    shares[index].append(int(bytes(message.payload)))
        assert sorted(shares[0] + shares[1]) == list(range(count))  # each exactly once
        assert shares[0], f"one member took everything: {shares}"
        assert shares[1], f"one member took everything: {shares}"

    bus.run(body)


def test_per_sender_order(bus: Bus) -> None:
    async def body() -> None:
        sub, pub = await bus.connect(), await bus.connect()
        await sub.subscribe("vla/v1/robot-a/frame")
        await settle(pub, sub, "vla/v1/robot-a/frame")
        count = 500
        for i in range(count):
            await pub.publish("vla/v1/robot-a/frame", i.to_bytes(4, "big"), qos=i % 2)
        got = [int.from_bytes(bytes((await recv(sub)).payload), "big") for _ in range(count)]
        assert got == list(range(count))

    bus.run(body)


def test_payloads_up_to_frame_cap(bus: Bus) -> None:
    async def body() -> None:
        sub, pub = await bus.connect(), await bus.connect()
        cap = pub.options.max_payload  # type: ignore[attr-defined]
        await sub.subscribe("vla/v1/robot-a/frame")
        await settle(pub, sub, "vla/v1/robot-a/frame")
        for size in [0, 1, 64, 150_000, cap]:
            payload = (size.to_bytes(8, "big") * (size // 8 + 1))[:size]
            await pub.publish("vla/v1/robot-a/frame", payload, qos=1)
            message = await recv(sub)
            assert len(message.payload) == size
            assert bytes(message.payload) == payload
        with pytest.raises(TransportError):
            await pub.publish("vla/v1/robot-a/frame", bytes(cap + 1), qos=1)

    bus.run(body)


def test_reconnect_resubscribes(bus: Bus) -> None:
    if bus.restart is None:
        pytest.skip(f"{bus.kind} has no connection to lose")
    restart = bus.restart

    async def body() -> None:
        sub, pub = await bus.connect(), await bus.connect()
        await sub.subscribe("vla/v1/robot-a/action")
        await settle(pub, sub, "vla/v1/robot-a/action")
        await asyncio.to_thread(restart)
        # The subscriber must come back and resubscribe by itself; probes find out when.
        await settle(pub, sub, "vla/v1/robot-a/action")
        await pub.publish("vla/v1/robot-a/action", b"after", qos=1)
        while bytes((await recv(sub)).payload) != b"after":
            pass
        assert sub.connected
        assert pub.connected
        if bus.kind == "mqtt":
            assert sub.counters()["reconnects"] >= 1
            assert pub.counters()["reconnects"] >= 1

    bus.run(body)


def test_direct_consumer_keeps_order_and_loses_only_what_it_fails_on(bus: Bus) -> None:
    """A ``consume`` handler is offered messages as they arrive while nothing waits in the queue: a
    message it declines is queued, and everything after it queues behind it, in order. A
    consumer that raises loses that one message, counted as an inbox drop, and nothing else."""
    async def body() -> None:
        sub, pub = await bus.connect(), await bus.connect()
        await sub.subscribe("vla/v1/robot-a/frame")
        await settle(pub, sub, "vla/v1/robot-a/frame")
        taken: list[int] = []

        def direct(message: Message) -> bool:
            n = int.from_bytes(bytes(message.payload), "big")
            if n == 0:
                raise RuntimeError("a consumer bug")
            if n == 1:
                taken.append(n)
                return True
            return False  # 2 declined: queued, and from then on nothing is offered

        sub.consume(direct)
        dropped = sub.counters()["inbox_dropped"]
        for i in range(8):
            await pub.publish("vla/v1/robot-a/frame", i.to_bytes(4, "big"), qos=1)
        got = [int.from_bytes(bytes((await recv(sub)).payload), "big") for _ in range(6)]
        assert got == list(range(2, 8))
        assert taken == [1]
        assert sub.counters()["inbox_dropped"] == dropped + 1

    bus.run(body)
