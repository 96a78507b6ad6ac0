"""The MQTT adapter against a real Mosquitto (dev configuration): reason codes, expiry, wills,
Nagle, the outbox and the counters."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from schemas.errors import PublishRejected, TransportError
from tests.support.aio import run
from vlabus.broker.local import LocalMosquitto
from vlabus.broker.render import MAX_PACKET_SIZE
from vlabus.bus.mqtt import MqttTransport
from vlabus.bus.transport import Transport, TransportOptions, Will, open_transport

pytestmark = pytest.mark.integration
TIMEOUT = 10.0
FAST_RECONNECT = {"reconnect_min_s": "0.05", "reconnect_max_s": "0.5"}


async def connect(broker: LocalMosquitto, client_id: str, **options: Any) -> MqttTransport:
    options.setdefault("extra", FAST_RECONNECT)
    transport = await open_transport(broker.url, broker.options("worker-1", client_id, **options))
    assert isinstance(transport, MqttTransport)
    return transport


async def recv_payload(transport: Transport) -> bytes:
    return bytes((await asyncio.wait_for(transport.receive(), TIMEOUT)).payload)


def test_tcp_nodelay_on_the_client_socket(mosquitto: LocalMosquitto,
                                          mosquitto_fleet: LocalMosquitto) -> None:
    async def body() -> None:
        plain = await connect(mosquitto, "nagle")
        tls = await open_transport(mosquitto_fleet.url, mosquitto_fleet.options("robot-a"))
        for transport in (plain, tls):
            assert isinstance(transport, MqttTransport)
            sock = transport._client.socket()
            assert isinstance(sock, socket.socket)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            await transport.close()

    run(body)


def test_oversize_publish_is_rejected_with_0x95(mosquitto: LocalMosquitto) -> None:
    async def body() -> None:
        big = await connect(mosquitto, "big", max_payload=MAX_PACKET_SIZE + 1024)
        for qos in (0, 1):
            with pytest.raises(PublishRejected) as info:
                await big.publish("vla/v1/robot-a/frame", bytes(MAX_PACKET_SIZE + 1), qos=qos)
            assert info.value.code == 0x95
        await big.publish("vla/v1/robot-a/frame", b"still connected", qos=1)
        assert big.counters()["rejected"] == 2
        assert big.counters()["disconnects"] == 0
        await big.close()

    run(body)


def test_bad_credentials_are_refused(mosquitto: LocalMosquitto) -> None:
    async def body() -> None:
        for username, password in [("worker-1", "wrong"), ("nobody", "x"), (None, None)]:
            options = TransportOptions(client_id="intruder", username=username,
                                       password=password)
            with pytest.raises(TransportError, match="refused the connection"):
                await open_transport(mosquitto.url, options)

    run(body)


def test_unreachable_broker_fails_fast() -> None:
    async def body() -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]  # bound, never listening
            with pytest.raises(TransportError, match="cannot connect"):
                await open_transport(f"mqtt://127.0.0.1:{port}",
                                     TransportOptions(client_id="lonely"))

    run(body)


def test_frames_carry_message_expiry(mosquitto: LocalMosquitto) -> None:
    """QoS 0 with expiry_s sends an MQTT 5 Message Expiry Interval (whole seconds, >= 1)."""
    received: list[Any] = []
    arrived, subscribed = threading.Event(), threading.Event()

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        received.append(msg)
        arrived.set()

    options = mosquitto.options("worker-1", "raw")
    raw = paho.Client(CallbackAPIVersion.VERSION2, client_id="raw", protocol=paho.MQTTv5)
    raw.username_pw_set(options.username, options.password)
    raw.on_message = on_message
    raw.on_subscribe = lambda c, u, mid, codes, props: subscribed.set()
    raw.connect("127.0.0.1", mosquitto.port)
    raw.loop_start()
    try:
        raw.subscribe("vla/v1/robot-a/frame", 0)
        assert subscribed.wait(TIMEOUT)

        async def body() -> None:
            pub = await connect(mosquitto, "expiring")
            await pub.publish("vla/v1/robot-a/frame", b"frame", expiry_s=0.25)
            await pub.publish("vla/v1/robot-a/frame", b"plain", qos=1)
            await pub.close()

        run(body)
        assert arrived.wait(TIMEOUT)
        while len(received) < 2:
            arrived.clear()
            assert arrived.wait(TIMEOUT)
        assert received[0].payload == b"frame"
        assert received[0].properties.MessageExpiryInterval == 1
        assert not hasattr(received[1].properties, "MessageExpiryInterval")
    finally:
        raw.disconnect()
        raw.loop_stop()


def test_will_on_vanishing_not_on_close(mosquitto: LocalMosquitto) -> None:
    async def body() -> None:
        watcher = await connect(mosquitto, "watcher")
        await watcher.subscribe("vla/v1/+/status")
        will = Will("vla/v1/robot-a/status", b"offline", qos=1, retain=True)
        polite = await connect(mosquitto, "polite", will=will)
        await polite.close()
        crashing = await connect(mosquitto, "crashing", will=Will(
            "vla/v1/robot-b/status", b"offline", qos=1, retain=True))
        crashing.abort()
        message = await asyncio.wait_for(watcher.receive(), TIMEOUT)
        assert (message.topic, message.payload) == ("vla/v1/robot-b/status", b"offline")
        late = await connect(mosquitto, "late")  # the death was retained
        await late.subscribe("vla/v1/robot-b/status")
        assert await recv_payload(late) == b"offline"
        await watcher.close()
        await late.close()

    run(body)


def test_unrouted_qos1_with_expiry_is_retried_then_fails(mosquitto: LocalMosquitto) -> None:
    """PUBACK 0x10 (no matching subscribers): a QoS 1 message with an expiry is retried until
    it reaches someone or expires; without an expiry it counts as delivered to the broker."""

    async def body() -> None:
        pub = await connect(mosquitto, "pub")
        await pub.publish("vla/v1/nobody/task", b"fire-and-forget", qos=1)
        with pytest.raises(TransportError, match="no subscriber"):
            await pub.publish("vla/v1/nobody/task", b"task", qos=1, expiry_s=0.4)
        counts = pub.counters()
        assert counts["unrouted"] == 1
        assert counts["unrouted_retries"] >= 2
        # A subscriber arriving while retries run gets the message.
        sub = await connect(mosquitto, "sub")
        sending = asyncio.create_task(
            pub.publish("vla/v1/late/task", b"for-the-late", qos=1, expiry_s=TIMEOUT))
        while pub.counters()["unrouted_retries"] < counts["unrouted_retries"] + 1:
            await asyncio.sleep(0.01)  # waiting for the first refusal to be observed
        await sub.subscribe("vla/v1/late/task")
        await asyncio.wait_for(sending, TIMEOUT)
        assert await recv_payload(sub) == b"for-the-late"
        await pub.close()
        await sub.close()

    run(body)


def test_outbox_bounds_qos1_while_disconnected(mosquitto_persistent: LocalMosquitto) -> None:
    broker = mosquitto_persistent

    async def body() -> None:
        # A persistent session: the broker queues QoS 1 for it while it reconnects.
        sub = await connect(broker, "outbox-sub", extra={**FAST_RECONNECT,
                                                         "session_expiry_s": "60"})
        await sub.subscribe("vla/v1/robot-a/task")
        pub = await connect(broker, "outbox-pub", outbox_size=4)
        await asyncio.to_thread(broker.stop)
        while pub.connected:
            await pub.publish("vla/v1/robot-a/frame", b"probe")  # notices the loss
            await asyncio.sleep(0.01)
        sends = [asyncio.create_task(pub.publish("vla/v1/robot-a/task", b"%d" % i, qos=1))
                 for i in range(10)]
        await asyncio.sleep(0)  # let every publish reach the outbox
        await asyncio.to_thread(broker.start)
        results = await asyncio.wait_for(asyncio.gather(*sends, return_exceptions=True),
                                         TIMEOUT)
        assert all(isinstance(r, TransportError) for r in results[:6])  # oldest evicted
        assert results[6:] == [None] * 4
        got = [await recv_payload(sub) for _ in range(4)]
        assert got == [b"6", b"7", b"8", b"9"]
        assert pub.counters()["outbox_evicted"] == 6
        await pub.close()
        await sub.close()

    run(body)


def test_misuse_raises(mosquitto: LocalMosquitto) -> None:
    async def body() -> None:
        transport = await connect(mosquitto, "misuse", max_payload=1000)
        with pytest.raises(TransportError, match="qos 2"):
            await transport.publish("vla/v1/robot-a/task", b"x", qos=2)
        with pytest.raises(TransportError, match="over 1000"):
            await transport.publish("vla/v1/robot-a/task", bytes(1001))
        await transport.close()
        with pytest.raises(TransportError, match="closed"):
            await transport.publish("vla/v1/robot-a/task", b"x")
        with pytest.raises(TransportError, match="closed"):
            await transport.receive()
        assert set(transport.counters()) >= {
            "published", "rejected", "reconnects", "disconnects", "received", "inbox_dropped",
            "outbox_evicted", "outbox_expired", "expired_unsent", "unrouted", "unrouted_retries"}

    run(body)


def test_subscribe_while_disconnected_applies_at_reconnect(mosquitto: LocalMosquitto) -> None:
    async def body() -> None:
        sub = await connect(mosquitto, "late-subscriber")
        await asyncio.to_thread(mosquitto.stop)
        while sub.connected:
            await sub.publish("vla/v1/robot-a/frame", b"probe")  # notices the loss
            await asyncio.sleep(0.01)
        await sub.subscribe("vla/v1/robot-a/action")  # remembered, sent on reconnect
        await asyncio.to_thread(mosquitto.start)
        pub = await connect(mosquitto, "pub")
        await pub.publish("vla/v1/robot-a/action", b"after", qos=1, expiry_s=TIMEOUT)
        assert await recv_payload(sub) == b"after"
        assert sub.counters()["reconnects"] == 1
        await pub.close()
        await sub.close()

    run(body)
