"""A subscriber whose event loop is stuck for 30 s while frames keep coming, on both buses.

What must hold: the publisher never blocks; the broker's or hub's memory stays bounded (it
neither queues without limit for the stuck client nor grows); what the subscriber could not
take is dropped and counted; and afterwards it is connected and subscribed again by itself.

On Mosquitto the adapter's network thread keeps reading and answering keepalives while the loop
is stuck, so the session survives with no disconnect. On the hub, liveness is the client's own
PING from its loop: a client stuck past three heartbeats is declared gone (its will published)
and forgotten, and its connection, in zero window that long, is closed; when its loop runs
again it reconnects (or, if the connection survived, the hub answers its PING with "unknown
client" and it says HELLO again, counted in ``rejoined``) and subscribes again by itself.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.aio import eventually, run
from vlabus.broker.local import LocalMosquitto, free_port
from vlabus.bus.transport import Transport, TransportOptions, open_transport

pytestmark = pytest.mark.integration
STALL_S = 30.0
TOPIC = "vla/v1/robot-a/frame"
PAYLOAD = b"x" * 20_000
RATE_HZ = 200  # 4 MB/s: 120 MB over the stall if anything kept it all


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines()
                if line.startswith("VmRSS:")) / 1024


def flood(connect: object, stop: threading.Event, sent: list[int]) -> threading.Thread:
    """Publish ``PAYLOAD`` at ``RATE_HZ`` from a thread with its own loop until ``stop``."""
    async def body() -> None:
        publisher: Transport = await connect()  # type: ignore[operator]
        try:
            while not stop.is_set():
                started = time.monotonic()
                await publisher.publish(TOPIC, PAYLOAD)
                sent[0] += 1
                await asyncio.sleep(max(0.0, 1 / RATE_HZ - (time.monotonic() - started)))
        finally:
            await publisher.close()

    thread = threading.Thread(target=lambda: asyncio.run(body()), name="flood")
    thread.start()
    return thread


def stall_under_flood(subscriber: Transport, connect: object) -> int:
    """Block the calling (event loop) thread for ``STALL_S`` while a thread floods; returns how
    many messages were published meanwhile."""
    stop, sent = threading.Event(), [0]
    thread = flood(connect, stop, sent)
    time.sleep(STALL_S)  # the stall under test: the subscriber's whole event loop is stuck
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    assert sent[0] >= STALL_S * RATE_HZ / 4, sent  # the publisher kept going throughout
    return sent[0]


def test_stalled_subscriber_on_mosquitto(mosquitto: LocalMosquitto) -> None:
    assert mosquitto._proc is not None
    broker_pid = mosquitto._proc.pid

    async def body() -> None:
        subscriber = await open_transport(mosquitto.url, mosquitto.options(
            "worker-1", "stalled", inbox_size=256))
        await subscriber.subscribe(TOPIC)
        before = rss_mb(broker_pid)

        async def connect() -> Transport:
            return await open_transport(mosquitto.url, mosquitto.options("worker-1", "flood"))

        sent = stall_under_flood(subscriber, connect)
        grown = rss_mb(broker_pid) - before
        await eventually(lambda: subscriber.counters()["received"] >= sent)
        counts = subscriber.counters()
        assert grown < 64, f"broker RSS grew {grown:.1f} MB"
        assert subscriber.connected
        assert counts["disconnects"] == 0  # the keepalive survived the stall
        assert counts["received"] == sent  # every message reached the client ...
        assert counts["inbox_dropped"] >= sent - 256  # ... and what it could not keep is counted
        await subscriber.close()

    run(body, timeout=STALL_S + 60)


def test_stalled_subscriber_on_the_hub(tmp_path: Path) -> None:
    port = free_port()
    url = f"zmq://127.0.0.1:{port}"
    hub = subprocess.Popen([sys.executable, "-m", "vlabus", "hub", "--bind",
                            f"tcp://127.0.0.1:{port}", "--hwm", "200", "--heartbeat-ms", "1000",
                            "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        async def body() -> None:
            options = TransportOptions(client_id="stalled", inbox_size=256)
            subscriber = await open_transport(url, options)
            await subscriber.subscribe(TOPIC)
            before = rss_mb(hub.pid)

            async def connect() -> Transport:
                return await open_transport(url, TransportOptions(client_id="flood"))

            stall_under_flood(subscriber, connect)
            grown = rss_mb(hub.pid) - before
            assert grown < 64, f"hub RSS grew {grown:.1f} MB"
            # The hub forgot the silent client (its TCP connection, in zero window for three
            # heartbeats, was closed): the client reconnects, or is told at its next PING.
            await eventually(lambda: subscriber.counters()["reconnects"]
                             + subscriber.counters()["rejoined"] >= 1)
            probe = await open_transport(url, TransportOptions(client_id="probe"))

            async def nudge() -> None:
                await probe.publish(TOPIC, b"after the stall")

            seen: list[bytes] = []

            def got_probe() -> bool:
                while (message := subscriber.receive_nowait()) is not None:
                    seen.append(bytes(message.payload))
                return b"after the stall" in seen

            await eventually(got_probe, timeout=20, nudge=nudge, interval=0.2)
            assert subscriber.connected
            assert subscriber.counters()["inbox_dropped"] > 0
            await probe.close()
            await subscriber.close()

        run(body, timeout=STALL_S + 60)
    finally:
        hub.send_signal(signal.SIGINT)
        out, _ = hub.communicate(timeout=30)
    summary = json.loads(out.decode().strip().splitlines()[-1])
    stats = summary.get("stats", summary)
    assert stats["dropped_hwm"] > 0, summary  # the hub dropped for the stuck client, counted


def test_a_client_the_hub_forgot_says_hello_again_and_is_subscribed() -> None:
    """A loop stuck past three heartbeats with nothing to read: the connection survives, the
    hub forgets the client (its will is published); at its next PING the hub says so and the
    client says HELLO and subscribes again."""
    from vlabus.hub.server import start_hub

    hub = start_hub(heartbeat_ms=200)
    try:
        async def body() -> None:
            options = TransportOptions(client_id="sleepy", extra={"heartbeat_ms": "200"})
            sleepy = await open_transport(hub.url, options)
            await sleepy.subscribe(TOPIC)
            time.sleep(1.5)  # the stall under test: no PING for over three heartbeats
            assert "sleepy" not in {p.client_id for p in hub.routes.peers.values()}
            await eventually(lambda: sleepy.counters()["rejoined"] == 1)
            probe = await open_transport(hub.url, TransportOptions(client_id="probe"))

            async def nudge() -> None:
                await probe.publish(TOPIC, b"again")

            await eventually(lambda: sleepy.receive_nowait() is not None, nudge=nudge,
                             interval=0.05)
            assert sleepy.counters()["reconnects"] == 0
            await probe.close()
            await sleepy.close()

        run(body, timeout=60)
    finally:
        hub.stop()
