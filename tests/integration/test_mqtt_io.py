"""The adapter's socket handling against a real Mosquitto: reads on the event loop, writes on
the publishing thread, the network thread taking over reads while the loop is stalled."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tests.support.aio import run
from vlabus.broker.local import LocalMosquitto
from vlabus.bus.transport import Transport, open_transport

pytestmark = pytest.mark.integration
TIMEOUT = 10.0
TOPIC = "vla/v1/robot-a/frame"


async def received(transport: Transport, count: int) -> list[bytes]:
    return [bytes((await asyncio.wait_for(transport.receive(), TIMEOUT)).payload)
            for _ in range(count)]


@pytest.mark.parametrize("broker", ["mosquitto", "mosquitto_fleet"])
def test_large_bursts_arrive_whole_and_in_order(broker: str,
                                                request: pytest.FixtureRequest) -> None:
    """Bursts larger than the socket buffers: partial writes finish on the network thread, and
    (TLS) records already decrypted are read without waiting for the socket again."""
    mosquitto: LocalMosquitto = request.getfixturevalue(broker)

    async def body() -> None:
        sink = await open_transport(mosquitto.url, mosquitto.options("worker-1", "sink",
                                                                     inbox_size=100))
        source = await open_transport(mosquitto.url, mosquitto.options("robot-a", "source"))
        await sink.subscribe(TOPIC, group="workers")  # all a worker may do in the fleet ACL
        payloads = [i.to_bytes(4, "big") * 37_500 for i in range(40)]  # 150 KB each
        for payload in payloads[:-1]:
            await source.publish(TOPIC, payload)
        await source.publish(TOPIC, payloads[-1], qos=1)
        assert await received(sink, len(payloads)) == payloads
        assert sink.counters()["inbox_dropped"] == 0
        assert source.counters()["disconnects"] == sink.counters()["disconnects"] == 0
        await source.close()
        await sink.close()

    run(body)


def test_reads_during_a_stall_keep_their_order(mosquitto: LocalMosquitto) -> None:
    """Messages the network thread reads while the loop is stuck reach the inbox before those
    the loop reads itself afterwards."""

    async def body() -> None:
        sink = await open_transport(mosquitto.url, mosquitto.options(
            "worker-1", "sink", keepalive_s=1, inbox_size=1000))
        await sink.subscribe(TOPIC)
        first_half = threading.Event()
        go_on = threading.Event()

        def produce() -> None:
            async def publish_all() -> None:
                source = await open_transport(mosquitto.url,
                                              mosquitto.options("robot-a", "source"))
                for i in range(200):
                    if i == 100:
                        first_half.set()
                        await asyncio.to_thread(go_on.wait, TIMEOUT)
                    await source.publish(TOPIC, b"%d" % i, qos=1)
                await source.close()

            asyncio.run(publish_all())

        thread = threading.Thread(target=produce)
        thread.start()
        assert first_half.wait(TIMEOUT)
        time.sleep(1.0)  # the stall under test: the network thread must take over the reads
        go_on.set()
        got = await received(sink, 200)
        await asyncio.to_thread(thread.join, TIMEOUT)
        assert got == [b"%d" % i for i in range(200)]
        assert sink.counters()["disconnects"] == 0
        await sink.close()

    run(body)
