"""A message is bound to the topic it arrives on (issue 16, item 4): robot A's signed frame
published on robot B's topic is refused by the worker, and a worker's action for robot B
published on robot A's action topic is refused by robot A, both as ``topic_mismatch``, on the
ZeroMQ hub and on Mosquitto."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edge_agent.inbox import ActionInbox
from edge_agent.metrics import EdgeMetrics
from edge_agent.stats import RunStats
from edge_agent.watchdog import Watchdog
from schemas import topics
from schemas.arrays import pack_array
from schemas.messages import Action
from tests.support.aio import TIMEOUT, eventually, recv, run
from tests.support.frames import make_frame
from tests.support.keys import KeyDir
from tests.support.robot import Robot
from tests.support.worker import serving
from vlabus.broker.local import LocalMosquitto
from vlabus.bus.transport import TransportOptions, open_transport
from vlabus.inbound import Rejections
from vlabus.wire import Encoder

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def options(bus: str, mosquitto: LocalMosquitto | None, identity: str,
            client_id: str) -> TransportOptions:
    if mosquitto is not None:
        return mosquitto.options(identity, client_id)
    return TransportOptions(client_id=client_id)


def test_worker_refuses_a_frame_on_another_robots_topic(
        keydir: KeyDir, bus: tuple[str, LocalMosquitto | None]) -> None:
    url, broker = bus

    async def body() -> None:
        worker_opts = options(url, broker, "worker-1", "worker-1")
        async with serving(url, keydir, options=worker_opts) as worker:
            robot_b = await Robot.connect(url, keydir.signers["robot-b"], keydir.ring,
                                          options(url, broker, "robot-b", "robot-b"))
            attacker = await open_transport(url, options(url, broker, "robot-a", "robot-a"))
            lie = Encoder(keydir.signers["robot-a"]).encode(
                make_frame("robot-a", 1), deadline_ns=time.time_ns() + 5 * 10**9, corr="lie")
            await attacker.publish(topics.frame_topic("robot-b"), lie)
            await robot_b.send_frame(make_frame("robot-b", 2), "marker", budget_ms=5000)
            await robot_b.wait_for(1, timeout=TIMEOUT)
            await eventually(lambda: worker.metrics.summary.rejected.get("topic_mismatch") == 1)
            assert set(robot_b.replies) == {"marker"}
            assert worker.metrics.registry.get_sample_value(
                "vlabus_worker_rejected_total", {"reason": "topic_mismatch"}) == 1.0
            await attacker.close()
            await robot_b.close()
    run(body, 60)


def test_robot_refuses_an_action_for_another_robot_on_its_topic(
        keydir: KeyDir, bus: tuple[str, LocalMosquitto | None]) -> None:
    url, broker = bus

    async def body() -> None:
        robot = await open_transport(url, options(url, broker, "robot-a", "robot-a"))
        await robot.subscribe(topics.action_topic("robot-a"), qos=1)
        worker = await open_transport(url, options(url, broker, "worker-1", "worker-1x"))
        inbox = ActionInbox(keydir.ring, "robot-a", Watchdog(), rejections=Rejections(),
                            stats=RunStats(), metrics=EdgeMetrics(), period_ns=10**7)
        encoder = Encoder(keydir.signers["worker-1"])

        def act(robot_id: str, step: int) -> Action:
            return Action(robot_id=robot_id, step=step, model="m", model_version=1,
                          worker_id="worker-1",
                          actions=pack_array(np.zeros((2, 3), np.float32)))

        waiting = inbox.expect("s-1", 1, time.monotonic_ns() + 60 * 10**9)
        genuine = encoder.encode(act("robot-a", 1), corr="s-1")
        foreign = encoder.encode(act("robot-b", 1), corr="s-1")  # a later sequence number
        await worker.publish(topics.action_topic("robot-a"), foreign, qos=1)
        await worker.publish(topics.action_topic("robot-a"), genuine, qos=1)
        for _ in range(2):
            inbox.handle(await recv(robot))
        assert inbox.rejections.by_reason == {"topic_mismatch": 1}
        # the foreign action (higher sequence) moved no window: the genuine one is served
        assert waiting.done()
        assert not waiting.cancelled()
        await worker.close()
        await robot.close()
    run(body, 60)
