"""Session mode end to end on a real ZeroMQ hub and a real Mosquitto: the handshake, every
refusal with its reason (each answered by a new handshake where one helps), and a recording of
it all proven by `vlabus log verify` with public keys alone."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from cloud_workers.runner import PolicyRunner
from cloud_workers.worker import WorkerConfig, open_worker
from edge_agent.sim import run_sim_robot
from edge_agent.stack import LocalModel
from schemas import topics
from schemas.messages import Action, Frame, SessionRefused
from security.keys import Keyring, add_pool_key
from security.seal import PoolSecret
from security.session import Rotation
from tests.support.aio import TIMEOUT, eventually
from tests.support.buses import Bus, settle
from tests.support.frames import make_frame
from tests.support.keys import KeyDir
from tests.support.logs import make_action
from tests.support.wire import frame
from tests.support.worker import small_policy
from vlabus.broker.local import LocalMosquitto
from vlabus.bus.transport import Message, Transport, TransportOptions
from vlabus.cli import main as vlabus_main
from vlabus.envelope import Received
from vlabus.log.record import Recorder
from vlabus.session_link import PoolLink, PoolSessions, RobotLink

pytestmark = pytest.mark.integration
ROBOT = "robot-a"
MARKER = b"end-of-test"


class Scene:
    """A robot, a worker of pool ``gpu`` and a recorder of ``vla/v1/#`` on one bus."""

    def __init__(self, bus: Bus, keydir: KeyDir, robot_bus: Transport, worker_bus: Transport,
                 recorder: Transport) -> None:
        self.secret = PoolSecret.generate("gpu")
        self.ring = keydir.ring
        self.robot = RobotLink(robot_bus, keydir.signers[ROBOT], self.secret.public, self.ring,
                               rotation=Rotation(max_messages=1000), checkpoint_interval_s=0.2)
        self.worker = self.pool(worker_bus, keydir, max_messages=3)
        self.keydir = keydir
        self.robot_bus, self.worker_bus, self.recorder = robot_bus, worker_bus, recorder

    def pool(self, bus: Transport, keydir: KeyDir, *, max_messages: int) -> PoolLink:
        return PoolLink(bus, keydir.signers["worker-1"], self.secret, self.ring,
                        rotation=Rotation(max_messages=max_messages), checkpoint_interval_s=0.2)

    async def worker_next(self) -> Received | str:
        """The next frame the worker accepts, or the reason it refused the next message."""
        before = dict(self.worker.rejections.by_reason)
        while True:
            message = await asyncio.wait_for(self.worker_bus.receive(), TIMEOUT)
            received = await self.worker.accept(message)
            if received is not None and isinstance(received.message, Frame):
                return received
            grown = [r for r, n in self.worker.rejections.by_reason.items()
                     if n > before.get(r, 0)]
            if grown:
                return grown[0]

    async def robot_next(self) -> Received:
        while True:
            message = await asyncio.wait_for(self.robot_bus.receive(), TIMEOUT)
            received = self.robot.accept(message)
            if received is not None:
                return received

    async def step(self, n: int) -> Received | str:
        await self.robot.send(topics.frame_topic(ROBOT), frame(n))
        return await self.worker_next()


async def _scenario(bus: Bus, keydir: KeyDir) -> tuple[list[Message], str]:
    robot_bus = await bus.connect("robot-a")
    worker_bus = await bus.connect("worker-1")
    recorder = await bus.connect("recorder")
    await recorder.subscribe("vla/v1/#", qos=1)
    await robot_bus.subscribe(topics.action_topic(ROBOT), qos=1)
    await worker_bus.subscribe(topics.ALL_FRAMES, group="gpu", qos=1)
    scene = Scene(bus, keydir, robot_bus, worker_bus, recorder)
    await scene.worker.start()
    await settle(robot_bus, worker_bus, topics.frame_topic(ROBOT))
    await settle(robot_bus, worker_bus, topics.session_topic(ROBOT))

    # the handshake, then a frame MACed up and an action MACed down
    got = await scene.step(1)
    assert isinstance(got, Received)
    assert got.wire[2] == 2
    assert scene.robot.handshakes == [""]
    await scene.worker.reply(topics.action_topic(ROBOT), make_action(ROBOT, 1, "worker-1"))
    reply = await scene.robot_next()
    assert reply.wire[2] == 2
    assert reply.role == "worker"

    # a flipped byte, a replayed message
    wire = bytearray(got.wire)
    await robot_bus.publish(topics.frame_topic(ROBOT), bytes(got.wire))
    assert await scene.worker_next() == "duplicate"
    wire[len(wire) // 2] ^= 1
    await robot_bus.publish(topics.frame_topic(ROBOT), bytes(wire))
    assert await scene.worker_next() == "bad_mac"

    # a MAC under the wrong session: a reconnect rotates, the old session lives on a little
    old = scene.robot.sender.session
    assert old is not None
    scene.robot.reconnected()
    fresh = await scene.step(2)
    assert isinstance(fresh, Received)
    new = scene.robot.sender.session
    assert new is not None
    assert scene.robot.handshakes == ["", "reconnect"]
    # (sent where only the recorder hears it, so the recording holds all the robot sent)
    swapped = bytes(await scene.robot.send(topics.task_topic(ROBOT), frame(3)))
    await robot_bus.publish(topics.frame_topic(ROBOT), swapped.replace(new.sid.encode(),
                                                                       old.sid.encode()))
    assert await scene.worker_next() == "bad_mac"

    # an expired session (the pool allows 3 messages: frames 2, 4, 5): refused, told, and a
    # new handshake
    assert isinstance(await scene.step(4), Received)
    assert isinstance(await scene.step(5), Received)
    assert await scene.step(6) == "expired_session"
    refusal = await scene.robot_next()
    assert isinstance(refusal.message, SessionRefused)
    assert refusal.message.reason == "expired_session"
    assert isinstance(await scene.step(7), Received)
    assert scene.robot.handshakes[-1] == "expired_session"

    # an unknown session: a worker restarted without the key; told, and a new handshake
    await scene.worker.close()
    scene.worker = scene.pool(worker_bus, keydir, max_messages=1000)
    assert await scene.step(8) == "unknown_session"
    refusal = await scene.robot_next()
    assert isinstance(refusal.message, SessionRefused)
    assert refusal.message.reason == "unknown_session"
    assert isinstance(await scene.step(9), Received)
    assert scene.robot.handshakes[-1] == "unknown_session"

    await scene.robot.close()
    await scene.worker.close()
    await robot_bus.publish("vla/v1/marker/status", MARKER, qos=1)
    recorded = []
    while True:
        message = await asyncio.wait_for(recorder.receive(), TIMEOUT)
        if bytes(message.payload) == MARKER:
            return recorded, old.sid
        recorded.append(message)


def test_session_mode_refuses_with_reasons_and_rehandshakes(
        real_bus: Bus, keydir: KeyDir, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    recorded: list[Message] = []
    sids: list[str] = []

    async def body() -> None:
        messages, sid = await _scenario(real_bus, keydir)
        recorded.extend(messages)
        sids.append(sid)

    real_bus.run(body)
    old_sid = sids[0]
    path = tmp_path / "session.mcap"
    with Recorder(path) as recorder:
        for message in recorded:
            if message.topic.startswith("vla/v1/") and bytes(message.payload) != b"probe":
                recorder.write(message.topic, bytes(message.payload), message.received_ns)
    assert vlabus_main(["log", "verify", str(path), "--keys", str(keydir.path), "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    # proven: every honest message; reported: exactly the two tampered copies
    assert report["session_proven"] >= 11
    assert [r["reason"] for r in report["refused"]] == ["not_in_chain"]
    assert [u["session"] for u in report["uncovered"]] == [old_sid]
    assert report["gaps"] == []
    assert report["mismatches"] == []


def test_a_reconnect_rotates_the_session(mosquitto: LocalMosquitto, keydir: KeyDir) -> None:
    bus = Bus("mqtt", mosquitto.url, lambda cid, **kw: mosquitto.options("worker-1", cid, **kw))

    async def body() -> None:
        robot_bus = await bus.connect("robot-a")
        robot = RobotLink(robot_bus, keydir.signers[ROBOT], PoolSecret.generate("gpu").public,
                          keydir.ring)
        await robot.send(topics.frame_topic(ROBOT), frame(1))
        first = robot.sender.session
        mosquitto.restart()
        await eventually(lambda: robot_bus.counters().get("reconnects", 0) > 0)
        await eventually(lambda: robot_bus.connected)
        await robot.send(topics.frame_topic(ROBOT), frame(2))
        assert robot.handshakes == ["", "reconnect"]
        assert robot.sender.session is not first

    bus.run(body)


def test_a_real_worker_serves_session_mode_and_refuses_an_expired_session(
        real_bus: Bus, keydir: KeyDir) -> None:
    secret = PoolSecret.generate("gpu")

    async def body() -> None:
        sessions = PoolSessions(secret, rotation=Rotation(max_messages=2))
        runner = PolicyRunner({"reference": small_policy()}, {})
        worker = await open_worker(
            real_bus.url, keydir.signers["worker-1"], keydir.ring, runner,
            config=WorkerConfig(worker_id="worker-1", group="pool"),
            options=real_bus.options(real_bus.name("worker-1")), sessions=sessions)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await asyncio.wait_for(worker.ready.wait(), TIMEOUT)
        try:
            robot_bus = await real_bus.connect("robot-a")
            await robot_bus.subscribe(topics.action_topic(ROBOT), qos=1)
            robot = RobotLink(robot_bus, keydir.signers[ROBOT], secret.public, keydir.ring)

            async def answer(step: int) -> Received:
                await robot.send(topics.frame_topic(ROBOT), make_frame(ROBOT, step, size=8),
                                 deadline_ns=time.time_ns() + 5_000_000_000)
                while True:
                    message = await asyncio.wait_for(robot_bus.receive(), TIMEOUT)
                    got = robot.accept(message)
                    if got is not None:
                        return got

            async def offer_again() -> None:  # until the worker's subscription is live
                robot.reconnected()
                await robot.ensure()

            await eventually(lambda: len(sessions.table) > 0, nudge=offer_again)
            for step in (1, 2):
                got = await answer(step)
                assert got.wire[2] == 2  # the action came back MACed under the session
                assert isinstance(got.message, Action)
                assert got.message.step == step
            refusal = await answer(3)
            assert isinstance(refusal.message, SessionRefused)
            assert refusal.message.reason == "expired_session"
            assert worker.rejections.by_reason["expired_session"] == 1
            got = await answer(4)
            assert isinstance(got.message, Action)
            assert robot.handshakes[-1] == "expired_session"
        finally:
            stop.set()
            await asyncio.wait_for(task, TIMEOUT)
            await worker.transport.close()

    real_bus.run(body)


def test_vlabus_edge_and_worker_run_in_session_mode(zmq_hub: Any, keydir: KeyDir,
                                                     tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    shutil.copytree(keydir.path, keys)
    secret = add_pool_key(keys, "gpu")
    bus = Bus("zmq", zmq_hub.url, lambda cid, **kw: TransportOptions(client_id=cid, **kw))

    async def body() -> None:
        sessions = PoolSessions(secret)
        runner = PolicyRunner({"reference": small_policy()}, {})
        worker = await open_worker(
            bus.url, keydir.signers["worker-1"], Keyring.load(keys), runner,
            config=WorkerConfig(worker_id="worker-1", group="pool"), sessions=sessions)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await asyncio.wait_for(worker.ready.wait(), TIMEOUT)
        try:
            summary = await run_sim_robot(bus.url, keys, ROBOT, fps=20, deadline_ms=500,
                                          seconds=1.5, model=LocalModel(width=8),
                                          session_pool="gpu")
        finally:
            stop.set()
            await asyncio.wait_for(task, TIMEOUT)
            await worker.transport.close()
        assert summary["actions_by_source"].get("cloud", 0) > 0, summary
        held = sessions.table.for_robot(ROBOT)
        assert held is not None
        assert held.used > 0  # frames arrived MACed under the robot's session

    bus.run(body)
