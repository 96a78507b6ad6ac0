"""The hub's per-identity access rules: unit checks of the rules, then a real CURVE hub."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from cloud_workers.runner import PolicyRunner
from cloud_workers.worker import WorkerConfig, open_worker
from schemas import topics
from schemas.errors import SubscribeRejected, TransportError
from schemas.messages import Action
from security.curve import add_curve_client, init_curve
from security.keys import Keyring, Role, add_key, load_signer
from tests.support.aio import eventually, recv, run
from tests.support.frames import make_frame
from tests.support.hub import CurveHub
from tests.support.robot import Robot
from vlabus.broker.render import templates_dir
from vlabus.bus.transport import Will
from vlabus.bus.zmq import ZmqTransport, open_zmq
from vlabus.cli import main
from vlabus.hub.access import Access
from vlabus.hub.config import HubConfig
from vlabus.hub.protocol import tcp_endpoint
from vlabus.hub.server import Hub
from vlabus.policy.reference import NoopPolicy

RULES = json.loads((templates_dir() / "acl.json").read_text())
FRAMES, ACTIONS = topics.ALL_FRAMES, "vla/v1/+/action"


def access() -> Access:
    return Access.for_identities(
        [("robot", "robot-a"), ("robot", "robot-b"), ("worker", "worker-1"),
         ("recorder", "rec")], RULES)


def test_robots_publish_only_under_their_own_id() -> None:
    rules = access()
    assert rules.may_publish("robot-a", b"vla/v1/robot-a/frame")
    assert rules.may_publish("robot-a", b"vla/v1/robot-a/task")
    assert not rules.may_publish("robot-a", b"vla/v1/robot-b/frame")
    assert not rules.may_publish("robot-a", b"vla/v1/robot-a/action")
    assert not rules.may_publish("robot-a", b"vla/v1/workers/worker-1/status")
    # asked twice: the cached decision is the same
    assert not rules.may_publish("robot-a", b"vla/v1/robot-b/frame")
    assert rules.may_publish("worker-1", b"vla/v1/robot-b/action")
    assert not rules.may_publish("worker-1", b"vla/v1/robot-b/frame")
    assert not rules.may_publish("stranger", b"vla/v1/stranger/frame")
    assert not rules.may_publish("", b"vla/v1/robot-a/frame")


def test_subscriptions_are_checked_with_wildcards_taken_literally() -> None:
    rules = access()
    assert rules.may_subscribe("robot-a", "vla/v1/robot-a/action", "")
    assert rules.may_subscribe("robot-a", "vla/v1/models/#", "")
    assert not rules.may_subscribe("robot-a", "vla/v1/robot-b/action", "")
    assert not rules.may_subscribe("robot-a", ACTIONS, "")  # matches its own, still refused
    assert not rules.may_subscribe("robot-a", "#", "")
    assert not rules.may_subscribe("robot-a", FRAMES, "workers")  # joining the pool
    assert rules.may_subscribe("worker-1", FRAMES, "workers")
    assert not rules.may_subscribe("worker-1", FRAMES, "")  # every frame, not a share
    assert not rules.may_subscribe("stranger", "vla/v1/models/#", "")


def test_a_recorder_reads_everything_and_sends_nothing() -> None:
    rules = access()
    assert rules.may_subscribe("rec", "vla/v1/#", "")
    assert rules.may_subscribe("rec", FRAMES, "")
    assert not rules.may_subscribe("rec", "#", "")
    assert not rules.may_subscribe("rec", FRAMES, "workers")  # joining the pool
    for topic in (b"vla/v1/robot-a/frame", b"vla/v1/robot-a/action", b"vla/v1/models/m/x",
                  b"vla/v1/workers/rec/status"):
        assert not rules.may_publish("rec", topic)


def test_a_leading_wildcard_rule_does_not_open_the_pools() -> None:
    """Mosquitto's dynamic-security plugin lets a "#" subscribe rule join "$share/..." groups
    (tests/integration/test_broker_security.py shows the role avoids it); the hub matches as
    MQTT says: a leading wildcard never matches a "$" topic."""
    rules = Access.for_identities([("recorder", "rec")],
                                  {"recorder": {"publish": [], "subscribe": ["#"]}})
    assert rules.may_subscribe("rec", "#", "")
    assert not rules.may_subscribe("rec", FRAMES, "workers")
    assert not rules.may_subscribe("rec", "#", "workers")


@pytest.fixture
def fleet_hub(tmp_path: Path) -> Iterator[CurveHub]:
    keyring, curve = tmp_path / "keys", tmp_path / "curve"
    names: dict[str, Role] = {"robot-a": "robot", "robot-b": "robot", "worker-1": "worker",
                              "rec": "recorder"}
    init_curve(curve)
    for name, role in names.items():
        add_key(keyring, role, name)
        add_curve_client(curve, name)
    add_curve_client(curve, "stranger")  # admitted by CURVE, absent from the keyring
    rules = Access.from_keyring(keyring, templates_dir() / "acl.json")
    hub = Hub(HubConfig(curve_dir=curve, heartbeat_ms=200, access=rules)).start()
    try:
        yield CurveHub(hub, curve)
    finally:
        hub.stop()


async def connect(hub: CurveHub, name: str, **kw: Any) -> ZmqTransport:
    return await open_zmq(hub.url, hub.options(name, **kw))


async def settle(worker: ZmqTransport) -> None:
    """A QoS 1 round trip through the hub, so the worker's earlier SUBs have been handled."""
    await worker.publish(topics.action_topic("nobody"), b"", qos=1)


def test_a_robot_cannot_take_the_pools_frames(fleet_hub: CurveHub) -> None:
    async def body() -> None:
        worker = await connect(fleet_hub, "worker-1")
        robot_a = await connect(fleet_hub, "robot-a")
        thief = await connect(fleet_hub, "robot-b")
        await worker.subscribe(FRAMES, group="workers")
        with pytest.raises(SubscribeRejected, match=r"\$share/workers/.*0x87.*'robot-b' may not"):
            await thief.subscribe(FRAMES, group="workers")  # would take every other frame
        with pytest.raises(SubscribeRejected) as refused:
            await thief.subscribe(ACTIONS)  # would read every robot's actions
        assert (refused.value.pattern, refused.value.code) == (ACTIONS, 0x87)
        assert thief.counters()["denied"] == 2
        assert not thief._session.subscriptions  # a refused one is not re-sent after a reconnect
        for step in range(6):
            await robot_a.publish(topics.frame_topic("robot-a"), b"f%d" % step, qos=1)
        got = [bytes((await asyncio.wait_for(worker.receive(), 5)).payload) for _ in range(6)]
        assert got == [b"f%d" % step for step in range(6)]
        # A marker after the action, on the thief's own topic: the hub routes the worker's
        # messages in order, so once the marker is in, a leaked action would be in before it.
        await thief.subscribe(topics.action_topic("robot-b"))
        await worker.publish(topics.action_topic("robot-a"), b"act", qos=1)
        await worker.publish(topics.action_topic("robot-b"), b"marker", qos=1)
        assert bytes((await recv(thief)).payload) == b"marker"
        assert thief.counters()["received"] == 1
        assert fleet_hub.hub.counters()["denied"] == 2
        for t in (worker, robot_a, thief):
            await t.close()
    run(body())


def test_a_refused_publish_fails_at_qos1_and_is_never_delivered(fleet_hub: CurveHub) -> None:
    async def body() -> None:
        worker = await connect(fleet_hub, "worker-1")
        robot_a = await connect(fleet_hub, "robot-a")
        stranger = await connect(fleet_hub, "stranger")
        await worker.subscribe(FRAMES, group="workers")
        await settle(worker)
        with pytest.raises(TransportError, match=r"hub refused.*robot-b/frame"):
            await robot_a.publish(topics.frame_topic("robot-b"), b"forged", qos=1)
        await robot_a.publish(topics.frame_topic("robot-b"), b"forged-qos0")
        with pytest.raises(TransportError, match="hub refused"):
            await stranger.publish(topics.frame_topic("stranger"), b"who", qos=1)
        await robot_a.publish(topics.frame_topic("robot-a"), b"real", qos=1)
        message = await asyncio.wait_for(worker.receive(), 5)
        assert (message.topic, bytes(message.payload)) == (topics.frame_topic("robot-a"), b"real")
        await eventually(lambda: robot_a.counters()["denied"] == 2)
        assert worker.receive_nowait() is None
        assert fleet_hub.hub.counters()["denied"] == 3
        for t in (worker, robot_a, stranger):
            await t.close()
    run(body())


def test_a_will_on_a_foreign_topic_is_dropped(fleet_hub: CurveHub) -> None:
    async def body() -> None:
        worker = await connect(fleet_hub, "worker-1")
        await worker.subscribe("vla/v1/workers/+/status")
        await worker.subscribe("vla/v1/+/status")
        forged = Will(topics.worker_status_topic("worker-1"), b"offline?", retain=False)
        honest = Will("vla/v1/robot-b/status", b"robot-b gone", retain=False)
        robot_a = await connect(fleet_hub, "robot-a", will=forged)
        robot_b = await connect(fleet_hub, "robot-b", will=honest)
        await settle(worker)
        await eventually(lambda: robot_a.counters()["denied"] == 1)
        robot_a.abort()
        robot_b.abort()  # no BYE: the hub publishes the wills it accepted
        message = await asyncio.wait_for(worker.receive(), 5)
        assert (message.topic, bytes(message.payload)) == ("vla/v1/robot-b/status",
                                                           b"robot-b gone")
        # Both disconnects handled (each publishes its will, if any, in the same step on the
        # hub's thread), then a marker: any will still to come would be routed before it.
        await eventually(lambda: fleet_hub.hub.counters()["disconnects"] >= 2)
        marker = topics.worker_status_topic("worker-1")
        await worker.publish(marker, b"marker", qos=1)
        message = await recv(worker)
        assert (message.topic, bytes(message.payload)) == (marker, b"marker")
        assert fleet_hub.hub.counters()["wills"] == 1
        await worker.close()
    run(body())


def test_access_rules_need_curve() -> None:
    with pytest.raises(TransportError, match="need CurveZMQ"):
        Hub(HubConfig(access=access()))


def test_a_worker_and_a_robot_work_within_their_rules(fleet_hub: CurveHub,
                                                      tmp_path: Path) -> None:
    keyring = tmp_path / "keys"
    ring = Keyring.load(keyring)

    async def body() -> None:
        runner = PolicyRunner({"reference": NoopPolicy(horizon=4, action_dim=3)}, {})
        config = WorkerConfig(worker_id="worker-1", group="pool", max_delay_ns=1_000_000)
        worker = await open_worker(fleet_hub.url, load_signer(keyring, "worker", "worker-1"),
                                   ring, runner, config=config,
                                   options=fleet_hub.options("worker-1"))
        stop = asyncio.Event()
        serving = asyncio.create_task(worker.run(stop))
        await asyncio.wait_for(worker.ready.wait(), 10)
        robot = await Robot.connect(fleet_hub.url, load_signer(keyring, "robot", "robot-a"),
                                    ring, fleet_hub.options("robot-a"))
        for step in range(3):
            await robot.send_frame(make_frame("robot-a", step), f"c{step}")
        await robot.wait_for(3)
        assert all(isinstance(a, Action) for a in robot.replies.values())
        await robot.close()
        stop.set()
        await asyncio.wait_for(serving, 10)
        await worker.transport.close()
        assert fleet_hub.hub.counters()["denied"] == 0  # birth, death, subscriptions: allowed
    run(body())


def test_another_identity_cannot_take_over_a_routing_id(fleet_hub: CurveHub) -> None:
    async def body() -> None:
        worker = await connect(fleet_hub, "worker-1")
        robot_a = await connect(fleet_hub, "robot-a")
        await robot_a.subscribe(topics.action_topic("robot-a"))
        await robot_a.publish(topics.frame_topic("robot-a"), b"sync", qos=1)  # SUB handled
        # robot-b's own keys, robot-a's routing id: with ROUTER_HANDOVER it would take over
        # robot-a's connection and with it robot-a's subscription
        opts = fleet_hub.options("robot-b")
        assert opts.curve is not None
        thief: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        thief.setsockopt(zmq.LINGER, 0)
        thief.setsockopt(zmq.ROUTING_ID, robot_a._sock.getsockopt(zmq.ROUTING_ID))
        thief.curve_serverkey = opts.curve.server_public
        thief.curve_publickey = opts.curve.public
        thief.curve_secretkey = opts.curve.secret
        events = thief.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        thief.connect(tcp_endpoint(fleet_hub.url))
        try:
            # the thief's CURVE handshake is done: it is connected when the action goes out
            assert await asyncio.to_thread(events.poll, 10_000)
            await worker.publish(topics.action_topic("robot-a"), b"for a", qos=1)
            await worker.publish(topics.action_topic("robot-a"), b"marker", qos=1)
            got = [bytes((await recv(robot_a)).payload) for _ in range(2)]
            assert got == [b"for a", b"marker"]
            # The hub sends each message on one connection: robot-a got both, so nothing was
            # sent to (or is in flight to) the thief.
            assert not thief.poll(0)
        finally:
            thief.disable_monitor()
            events.close(0)
            thief.close(0)
        for t in (worker, robot_a):
            await t.close()
    run(body())


def test_a_recorder_sees_the_pools_traffic_without_taking_any(fleet_hub: CurveHub) -> None:
    """A plain "vla/v1/#" subscription gets a copy of every message while the pool still gets
    each frame; the recorder cannot join the pool, nor publish."""
    async def body() -> None:
        worker = await connect(fleet_hub, "worker-1")
        robot_a = await connect(fleet_hub, "robot-a")
        rec = await connect(fleet_hub, "rec")
        await worker.subscribe(FRAMES, group="workers")
        await rec.subscribe("vla/v1/#")
        with pytest.raises(SubscribeRejected):  # would take frames from the pool
            await rec.subscribe(FRAMES, group="workers")
        assert rec.counters()["denied"] == 1
        await settle(worker)
        for step in range(4):
            await robot_a.publish(topics.frame_topic("robot-a"), b"f%d" % step, qos=1)
        got = [bytes((await asyncio.wait_for(worker.receive(), 5)).payload) for _ in range(4)]
        assert got == [b"f%d" % step for step in range(4)]
        await worker.publish(topics.action_topic("robot-a"), b"act", qos=1)
        seen = [await asyncio.wait_for(rec.receive(), 5) for _ in range(6)]  # 4 frames, the
        # worker's settle probe and the action, in publish order per sender
        assert [bytes(m.payload) for m in seen if m.topic == topics.frame_topic("robot-a")] \
            == [b"f%d" % step for step in range(4)]
        assert (topics.action_topic("robot-a"), b"act") in {(m.topic, bytes(m.payload))
                                                           for m in seen}
        with pytest.raises(TransportError, match="hub refused"):
            await rec.publish(topics.frame_topic("robot-a"), b"forged", qos=1)
        for t in (worker, robot_a, rec):
            await t.close()
    run(body())


def test_vlabus_record_with_the_default_topics_is_refused_with_a_hint(
        fleet_hub: CurveHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``vlabus record``'s default ``#`` is refused on an access-controlled hub: exit 2 and an
    error that says what to pass; with ``--topics 'vla/v1/#'`` the recorder-role identity
    records."""
    out = tmp_path / "rec.mcap"
    common = ["record", "--bus", fleet_hub.url, "--curve", str(fleet_hub.keys), "--identity",
              "rec", "-o", str(out), "--duration", "0.2", "--quiet", "--json"]
    assert main(common) == 2
    summary = json.loads(capsys.readouterr().out)
    assert "subscribe to '#' refused: 0x87" in summary["error"]
    assert "--topics 'vla/v1/#'" in summary["error"]
    assert fleet_hub.hub.counters()["denied"] == 1

    assert main([*common, "--topics", "vla/v1/#"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["error"] is None
    assert summary["file"] == str(out)
    assert out.stat().st_size > 0
    assert fleet_hub.hub.counters()["denied"] == 1


def test_reload_admits_a_new_client_and_revokes_what_a_removed_identity_held(
        fleet_hub: CurveHub, tmp_path: Path) -> None:
    """The fleet changes while the hub runs: robot-c joins (CURVE key and keyring entry),
    robot-b leaves the keyring. Until ``reload`` robot-c is refused at the handshake; after
    it, robot-c works within its rules and robot-b's subscription is cancelled at once."""
    keyring = tmp_path / "keys"
    acl = templates_dir() / "acl.json"

    async def body() -> None:
        worker = await connect(fleet_hub, "worker-1")
        robot_b = await connect(fleet_hub, "robot-b")
        await robot_b.subscribe(topics.action_topic("robot-b"))
        await worker.publish(topics.action_topic("robot-b"), b"before", qos=1)
        assert bytes((await asyncio.wait_for(robot_b.receive(), 5)).payload) == b"before"

        add_key(keyring, "robot", "robot-c")
        add_curve_client(fleet_hub.keys, "robot-c")
        with pytest.raises(TransportError, match="refused the CURVE handshake"):
            await connect(fleet_hub, "robot-c", extra={"connect_timeout_s": "5"})
        for path in (keyring / "robot").glob("robot-b.*"):
            path.unlink()

        done = await asyncio.to_thread(fleet_hub.hub.reload, Access.from_keyring(keyring, acl))
        assert done == {"clients_admitted": 6, "revoked": 1}  # 5 at the start, robot-c
        robot_c = await connect(fleet_hub, "robot-c")
        await robot_c.subscribe(topics.action_topic("robot-c"))
        with pytest.raises(SubscribeRejected):
            await robot_c.subscribe(topics.action_topic("robot-a"))
        await worker.publish(topics.action_topic("robot-c"), b"hello c", qos=1)
        assert bytes((await asyncio.wait_for(robot_c.receive(), 5)).payload) == b"hello c"
        await worker.publish(topics.action_topic("robot-b"), b"after", qos=1)
        with pytest.raises(TransportError, match="hub refused"):
            await robot_b.publish(topics.frame_topic("robot-b"), b"gone", qos=1)
        # No sleep needed: "after" was routed (worker's ACK) before robot-b's publish reached
        # the hub, and the hub's NACK follows on the same connection, so had "after" been
        # delivered it would be in robot-b's inbox by now.
        assert robot_b.receive_nowait() is None  # its subscription went with its keyring entry
        counters = fleet_hub.hub.counters()
        assert (counters["reloads"], counters["revoked"]) == (1, 1)
        for t in (worker, robot_b, robot_c):
            await t.close()
    run(body())


def test_reload_cannot_switch_access_rules_on_or_off(fleet_hub: CurveHub) -> None:
    with pytest.raises(TransportError, match="not switch them on or off"):
        fleet_hub.hub.reload(None)
    plain = Hub(HubConfig(heartbeat_ms=200)).start()
    try:
        with pytest.raises(TransportError, match="not switch them on or off"):
            plain.reload(access())
        assert plain.reload() == {"clients_admitted": 0, "revoked": 0}
        assert plain.counters()["reloads"] == 1
    finally:
        plain.stop()
