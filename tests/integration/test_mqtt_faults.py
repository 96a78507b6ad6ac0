"""Faults against a real Mosquitto: the broker stopped and restarted under traffic, a consumer
that stops reading, an event loop that stops running."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tests.support.aio import eventually, run
from vlabus.broker.local import LocalMosquitto
from vlabus.bus.transport import Message, Transport, open_transport

pytestmark = pytest.mark.integration
TIMEOUT = 10.0
FAST_RECONNECT = {"reconnect_min_s": "0.05", "reconnect_max_s": "0.5"}


async def connect(broker: LocalMosquitto, identity: str, client_id: str | None = None,
                  **options: object) -> Transport:
    return await open_transport(
        broker.url, broker.options(identity, client_id, extra=FAST_RECONNECT, **options))


async def until(topic: str, payload: bytes, transport: Transport) -> list[Message]:
    """Everything ``transport`` receives up to and including (topic, payload)."""
    seen = []
    while True:
        message = await asyncio.wait_for(transport.receive(), TIMEOUT)
        seen.append(message)
        if (message.topic, bytes(message.payload)) == (topic, payload):
            return seen


def test_outage_under_traffic(mosquitto_fleet: LocalMosquitto) -> None:
    """Fleet config (persistent sessions): QoS 1 task requests published during the outage
    arrive after it; frames that expired in the outbox never do."""

    async def body() -> None:
        worker = await connect(mosquitto_fleet, "worker-1")
        robot = await connect(mosquitto_fleet, "robot-a")
        await worker.subscribe("vla/v1/+/task", group="workers")
        await worker.subscribe("vla/v1/+/frame", group="workers")
        stop_traffic = asyncio.Event()

        async def traffic() -> None:  # frames at ~200 Hz throughout, outage included
            i = 0
            while not stop_traffic.is_set():
                await robot.publish("vla/v1/robot-a/frame", b"live-%d" % i, expiry_s=5)
                i += 1
                await asyncio.sleep(0.005)  # pacing the load, not synchronisation

        load = asyncio.create_task(traffic())
        await until("vla/v1/robot-a/frame", b"live-20", worker)
        await asyncio.to_thread(mosquitto_fleet.stop)
        # Task requests carry an expiry: a PUBACK "no matching subscribers" (the worker group
        # is not back yet) makes the adapter retry until it expires.
        tasks = [asyncio.create_task(robot.publish("vla/v1/robot-a/task", b"task-%d" % i, qos=1,
                                                   expiry_s=TIMEOUT)) for i in range(5)]
        for _ in range(5):
            await robot.publish("vla/v1/robot-a/frame", b"stale", expiry_s=0.2)
        await asyncio.sleep(0.5)  # the outage: long enough for the stale frames to expire
        assert not robot.connected
        assert not any(task.done() for task in tasks)  # QoS 1 waits for the broker's ack
        await asyncio.to_thread(mosquitto_fleet.start)
        await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
        stop_traffic.set()
        await load
        await robot.publish("vla/v1/robot-a/frame", b"marker", qos=1)
        # Shared-group delivery order differs per topic; collect until both ends are in.
        seen = await until("vla/v1/robot-a/frame", b"marker", worker)
        seen_tasks = [bytes(m.payload) for m in seen if m.topic.endswith("/task")]
        while len(set(seen_tasks)) < 5:
            seen_tasks.append(bytes((await asyncio.wait_for(worker.receive(), TIMEOUT)).payload))
        # At least once (a QoS 1 redelivery may repeat one); a retried one may be overtaken.
        assert set(seen_tasks) == {b"task-%d" % i for i in range(5)}
        assert b"stale" not in {bytes(m.payload) for m in seen}
        counts = robot.counters()
        assert counts["outbox_expired"] + counts["expired_unsent"] >= 5
        assert counts["reconnects"] >= 1
        assert worker.counters()["reconnects"] >= 1
        await robot.close()
        await worker.close()

    run(body, timeout=40)


def test_stalled_consumer_never_blocks_the_publisher(mosquitto: LocalMosquitto) -> None:
    async def body() -> None:
        stalled = await connect(mosquitto, "worker-1", "stalled", inbox_size=50)
        publisher = await connect(mosquitto, "worker-1", "publisher")
        await stalled.subscribe("vla/v1/robot-a/frame")
        count = 3000
        started = time.monotonic()
        for i in range(count):
            await publisher.publish("vla/v1/robot-a/frame", i.to_bytes(4, "big") * 256)
        await publisher.publish("vla/v1/robot-a/frame", b"last", qos=1)
        assert time.monotonic() - started < TIMEOUT
        # Nobody read: the inbox kept the newest 50 and counted the rest as dropped.
        while stalled.counters()["received"] < count + 1:
            await asyncio.sleep(0.01)  # the network thread is still handing messages over
        newest = [await stalled.receive() for _ in range(50)]
        assert newest[-1].payload == b"last"
        assert stalled.counters()["inbox_dropped"] >= count + 1 - 50
        assert stalled.connected
        await publisher.close()
        await stalled.close()

    run(body, timeout=40)


def test_blocked_event_loop_keeps_the_keepalive(mosquitto: LocalMosquitto) -> None:
    """The network thread answers the broker while the event loop is stuck for longer than
    1.5 keepalive intervals (when Mosquitto would drop a silent client)."""

    async def body() -> None:
        stuck = await connect(mosquitto, "worker-1", "stuck", keepalive_s=1, inbox_size=20)
        await stuck.subscribe("vla/v1/robot-a/frame")
        sent = threading.Event()

        def flood() -> None:
            async def publish_all() -> None:
                publisher = await connect(mosquitto, "worker-1", "flooder")
                for i in range(500):
                    await publisher.publish("vla/v1/robot-a/frame", b"%d" % i, qos=1)
                await publisher.close()

            asyncio.run(publish_all())
            sent.set()

        thread = threading.Thread(target=flood)
        thread.start()
        time.sleep(2.5)  # the stall under test: this blocks the whole event loop
        thread.join(TIMEOUT)
        assert sent.is_set()
        # the loop takes the batched hand-over once it runs again
        await eventually(lambda: stuck.counters()["received"] == 500)
        counts = stuck.counters()
        assert stuck.connected
        assert counts["disconnects"] == 0
        assert counts["received"] == 500
        assert counts["inbox_dropped"] >= 480  # bounded while the loop was stuck
        await stuck.close()

    run(body, timeout=40)
