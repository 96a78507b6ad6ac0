"""Access control and authentication against a real Mosquitto with the fleet configuration:
TLS client certificates (identity = CN) and the dynamic-security plugin, subscribe denied by
default (Mosquitto 2's acl_file never checks SUBSCRIBE, DESIGN trap 2)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from schemas.errors import PublishRejected, SubscribeRejected, TransportError
from security.tls import issue, make_ca, write_pair, write_tls
from tests.support.aio import TIMEOUT, recv, run
from vlabus.broker.local import LocalMosquitto
from vlabus.bus.transport import TlsFiles, Transport, TransportOptions, open_transport

pytestmark = pytest.mark.integration
GROUP_FRAMES = "$share/workers/vla/v1/+/frame"


async def connect(broker: LocalMosquitto, identity: str) -> Transport:
    options = broker.options(identity, extra={"connect_timeout_s": "5"})
    return await open_transport(broker.url, options)


async def close(*transports: Transport) -> None:
    for transport in transports:
        await transport.close()


def test_robot_cannot_publish_as_another_robot(mosquitto_fleet: LocalMosquitto) -> None:
    async def body() -> None:
        robot_a = await connect(mosquitto_fleet, "robot-a")
        worker = await connect(mosquitto_fleet, "worker-1")
        await worker.subscribe("vla/v1/+/frame", group="workers")
        # QoS 1: the broker answers PUBACK 0x87 (MQTT 5 surfaces it; 3.1.1 would not).
        for topic in ["vla/v1/robot-b/frame", "vla/v1/robot-b/task", "vla/v1/robot-a/action",
                      "vla/v1/models/m/manifest", "vla/v1/workers/worker-1/status"]:
            with pytest.raises(PublishRejected) as info:
                await robot_a.publish(topic, b"forged", qos=1)
            assert info.value.code == 0x87
        # QoS 0 has no acknowledgement: the frame never arrives. The marker, published after
        # it on the same connection, arrives first and alone.
        await robot_a.publish("vla/v1/robot-b/frame", b"forged", qos=0)
        await robot_a.publish("vla/v1/robot-a/frame", b"marker", qos=1)
        message = await recv(worker)
        assert (message.topic, message.payload) == ("vla/v1/robot-a/frame", b"marker")
        assert robot_a.counters()["rejected"] == 5
        await close(robot_a, worker)

    run(body)


def test_robot_cannot_receive_other_robots_actions(mosquitto_fleet: LocalMosquitto) -> None:
    async def body() -> None:
        robot_a = await connect(mosquitto_fleet, "robot-a")
        robot_b = await connect(mosquitto_fleet, "robot-b")
        worker = await connect(mosquitto_fleet, "worker-1")
        with pytest.raises(SubscribeRejected) as info:
            await robot_a.subscribe("vla/v1/robot-b/action")
        assert info.value.code == 0x87
        await robot_a.subscribe("vla/v1/robot-a/action")
        await robot_b.subscribe("vla/v1/robot-b/action")
        await worker.publish("vla/v1/robot-b/action", b"for-b", qos=1)
        await worker.publish("vla/v1/robot-a/action", b"for-a", qos=1)
        assert (await recv(robot_b)).payload == b"for-b"  # the control: B gets its own
        message = await recv(robot_a)
        assert (message.topic, message.payload) == ("vla/v1/robot-a/action", b"for-a")
        assert robot_a.counters()["received"] == 1
        await close(robot_a, robot_b, worker)

    run(body)


@pytest.mark.parametrize("pattern", [
    "#", "vla/v1/#", "vla/v1/+/action", "vla/v1/+/frame", "+/+/robot-b/action", "$SYS/#",
    GROUP_FRAMES, "$share/workers/vla/v1/+/task", "$share/other/vla/v1/robot-a/action",
])
def test_robot_cannot_subscribe_to_wildcards_or_groups(
    mosquitto_fleet: LocalMosquitto, pattern: str
) -> None:
    async def body() -> None:
        robot = await connect(mosquitto_fleet, "robot-b")
        group, wanted = None, pattern
        if pattern.startswith("$share/"):  # the adapter takes the group apart from the filter
            _, group, wanted = pattern.split("/", 2)
        with pytest.raises(SubscribeRejected) as info:
            await robot.subscribe(wanted, group=group)
        assert info.value.code == 0x87
        await close(robot)

    run(body)


def test_workers_group_loses_nothing_to_an_intruder(mosquitto_fleet: LocalMosquitto) -> None:
    async def body() -> None:
        workers = [await connect(mosquitto_fleet, "worker-1"),
                   await connect(mosquitto_fleet, "worker-2")]
        intruder = await connect(mosquitto_fleet, "robot-b")
        robot_a = await connect(mosquitto_fleet, "robot-a")
        for worker in workers:
            await worker.subscribe("vla/v1/+/frame", group="workers")
        with pytest.raises(SubscribeRejected):
            await intruder.subscribe("vla/v1/+/frame", group="workers")
        count = 30
        for i in range(count):
            await robot_a.publish("vla/v1/robot-a/frame", str(i).encode(), qos=1)
        got: list[int] = []
        all_in = asyncio.Event()

        async def drain(worker: Transport) -> None:
            async for message in worker:
                got.append(int(bytes(message.payload)))
                if len(got) == count:
                    all_in.set()

        drains = [asyncio.create_task(drain(worker)) for worker in workers]
        try:
            await asyncio.wait_for(all_in.wait(), TIMEOUT)
        finally:
            for task in drains:
                task.cancel()
        assert sorted(got) == list(range(count))
        assert intruder.counters()["received"] == 0
        await close(*workers, intruder, robot_a)

    run(body)


def test_recorder_reads_the_fleet_and_sends_nothing(mosquitto_fleet: LocalMosquitto) -> None:
    """The ``recorder`` role: "vla/v1/#" delivers the whole tree (frames the worker pool also
    gets, actions); "#", joining a pool and publishing are refused. (A "#" rule would have let
    it join the pool: the dynamic-security plugin matches "#" against "$share/...".)"""
    async def body() -> None:
        worker = await connect(mosquitto_fleet, "worker-1")
        rec = await connect(mosquitto_fleet, "recorder")
        robot_a = await connect(mosquitto_fleet, "robot-a")
        await worker.subscribe("vla/v1/+/frame", group="workers")
        await rec.subscribe("vla/v1/#")
        for pattern, group in (("#", None), ("vla/v1/+/frame", "workers"), ("#", "workers")):
            with pytest.raises(SubscribeRejected):
                await rec.subscribe(pattern, group=group)
        with pytest.raises(PublishRejected):
            await rec.publish("vla/v1/robot-a/frame", b"forged", qos=1)
        await robot_a.publish("vla/v1/robot-a/frame", b"frame", qos=1)
        assert bytes((await recv(worker)).payload) == b"frame"
        await worker.publish("vla/v1/robot-a/action", b"action", qos=1)
        seen = {(m.topic, bytes(m.payload)) for m in [await recv(rec), await recv(rec)]}
        assert seen == {("vla/v1/robot-a/frame", b"frame"), ("vla/v1/robot-a/action", b"action")}
        await close(worker, rec, robot_a)

    run(body)


def test_client_without_valid_certificate_is_refused(
    mosquitto_fleet: LocalMosquitto, tmp_path: Path
) -> None:
    tls_dir = mosquitto_fleet.config_dir / "tls"
    # A certificate with the right CN, from a CA the broker does not trust.
    rogue_key, rogue_ca = make_ca("rogue CA")
    write_pair(tmp_path / "rogue", *issue(rogue_key, rogue_ca, "robot-a"))
    # A valid certificate from a different vlabus deployment (another CA, same identities).
    other = write_tls(tmp_path / "other", ["robot-a"]) / "clients"
    attempts = {
        "no certificate": TlsFiles(tls_dir / "ca.crt"),
        "untrusted issuer": TlsFiles(tls_dir / "ca.crt", tmp_path / "rogue.crt",
                                     tmp_path / "rogue.key"),
        "other deployment": TlsFiles(tls_dir / "ca.crt", other / "robot-a.crt",
                                     other / "robot-a.key"),
    }

    async def body() -> None:
        for files in attempts.values():
            options = TransportOptions(client_id="robot-a", tls=files,
                                       extra={"connect_timeout_s": "5"})
            with pytest.raises(TransportError):
                await open_transport(mosquitto_fleet.url, options)
        plain = mosquitto_fleet.url.replace("mqtts://", "mqtt://")
        with pytest.raises(TransportError):
            await open_transport(plain, TransportOptions(client_id="robot-a",
                                                         extra={"connect_timeout_s": "5"}))
        # The control: the deployment's own certificate gets in.
        await close(await connect(mosquitto_fleet, "robot-a"))

    run(body)
