"""One message-size limit per deployment, enforced at entry (issue 16, item 1): the hub refuses
(NACK, counted) a payload its clients could not accept, with and without access rules, and no
subscriber loses its connection; a client socket that meets a protocol error anyway (a hub
configured above its limit) is rebuilt, never left dead."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.errors import TransportError
from security.curve import add_curve_client, init_curve
from tests.support.aio import TIMEOUT, eventually, recv, run
from tests.support.hub import CurveHub
from vlabus.broker.render import MAX_PACKET_SIZE, templates_dir
from vlabus.bus.transport import MAX_PAYLOAD, TransportOptions
from vlabus.bus.zmq import ZmqTransport, open_zmq
from vlabus.hub.access import Access
from vlabus.hub.config import HubConfig
from vlabus.hub.server import Hub

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
TOPIC = "vla/v1/robot-a/frame"
BIG = 20 << 20


@pytest.fixture(params=["plain", "access rules"])
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CurveHub | Hub]:
    """A hub with the default limit: plain, or with CURVE and the packaged access rules."""
    if request.param == "plain":
        plain = Hub(HubConfig(heartbeat_ms=200)).start()
        try:
            yield plain
        finally:
            plain.stop()
        return
    curve = tmp_path / "curve"
    init_curve(curve)
    for name in ("robot-a", "worker-1"):
        add_curve_client(curve, name)
    rules = Access.for_identities([("robot", "robot-a"), ("worker", "worker-1")],
                                  json.loads((templates_dir() / "acl.json").read_text()))
    guarded = Hub(HubConfig(curve_dir=curve, heartbeat_ms=200, access=rules)).start()
    try:
        yield CurveHub(guarded, curve)
    finally:
        guarded.stop()


async def connect(hub: CurveHub | Hub, name: str, **options: object) -> ZmqTransport:
    if isinstance(hub, CurveHub):
        return await open_zmq(hub.url, hub.options(name, **options))  # type: ignore[arg-type]
    return await open_zmq(hub.url, TransportOptions(client_id=name, **options))  # type: ignore[arg-type]


def counters(hub: CurveHub | Hub) -> dict[str, int]:
    return (hub.hub if isinstance(hub, CurveHub) else hub).counters()


def test_the_brokers_packet_limit_is_the_clients_payload_limit() -> None:
    assert MAX_PACKET_SIZE == MAX_PAYLOAD + (64 << 10)
    assert HubConfig().max_payload == MAX_PAYLOAD == TransportOptions(client_id="x").max_payload


def test_a_20_mib_message_is_refused_at_the_hub_and_no_subscriber_is_cut_off(
        hub: CurveHub | Hub) -> None:
    async def body() -> None:
        worker = await connect(hub, "worker-1")
        await worker.subscribe("vla/v1/+/frame", group="pool")
        # a robot whose own client would let it through (an attacker's, or a misconfigured one)
        robot = await connect(hub, "robot-a", max_payload=32 << 20)
        with pytest.raises(TransportError, match="over the"):
            await robot.publish(TOPIC, b"x" * BIG, qos=1)
        assert counters(hub)["too_large"] == 1
        await robot.publish(TOPIC, b"x" * BIG, qos=0)  # QoS 0: refused and counted too
        await robot.publish(TOPIC, b"marker", qos=1)
        message = await recv(worker)
        assert bytes(message.payload) == b"marker"
        assert worker.connected
        assert worker.counters()["rebuilt"] == 0
        assert counters(hub)["too_large"] == 2
        await robot.close()
        await worker.close()
    run(body, 60)


@pytest.fixture
def lax_hub() -> Iterator[Hub]:
    """A hub configured above its clients' limit (the mistake the rebuild survives)."""
    hub = Hub(HubConfig(heartbeat_ms=200, max_payload=32 << 20)).start()
    try:
        yield hub
    finally:
        hub.stop()


def test_a_socket_ended_by_a_protocol_error_is_rebuilt(lax_hub: Hub) -> None:
    """The client's socket takes an oversize message for a protocol error (libzmq ends that
    connection for good, with no reconnect) and is rebuilt within a backoff."""
    zmq_hub = lax_hub

    async def body() -> None:
        small = await open_zmq(zmq_hub.url, TransportOptions(client_id="small",
                                                             max_payload=1 << 20))
        await small.subscribe(TOPIC)
        sender = await open_zmq(zmq_hub.url, TransportOptions(client_id="big",
                                                              max_payload=32 << 20))
        await sender.publish(TOPIC, b"x" * (2 << 20), qos=1)  # over small's 1 MiB
        await eventually(lambda: small.counters()["rebuilt"] == 1, TIMEOUT)

        async def probe() -> None:
            await sender.publish(TOPIC, b"marker", qos=1)
        got: list[bytes] = []

        def arrived() -> bool:
            message = small.receive_nowait()
            if message is not None:
                got.append(bytes(message.payload))
            return b"marker" in got
        await eventually(arrived, TIMEOUT, nudge=probe, interval=0.05)
        assert small.connected
        await sender.close()
        await small.close()
    run(body, 60)
