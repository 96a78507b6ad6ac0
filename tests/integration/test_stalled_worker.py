"""A worker whose policy hangs leaves the pool (issue 16, item 2): it stops taking its share
of the group's frames within a few seconds, says so (degraded status, not ready, queued work
dropped as ``stalled``), and a robot of that fleet keeps getting cloud actions from the other
worker; it rejoins when the policy returns, or ends after its limit for the supervisor."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager

import pytest

from cloud_workers.runner import PolicyRunner
from cloud_workers.stall import StallConfig
from cloud_workers.worker import Worker, WorkerConfig, open_worker
from edge_agent.agent import AgentConfig, Source
from edge_agent.breaker import BreakerConfig
from edge_agent.sim import SimRobot
from edge_agent.stack import LocalModel, open_edge
from schemas import topics
from schemas.messages import Status
from tests.support.aio import TIMEOUT, eventually, run
from tests.support.frames import make_frame
from tests.support.keys import KeyDir
from tests.support.policies import HangingPolicy
from tests.support.robot import Robot
from tests.support.worker import serving as support_serving
from vlabus.broker.local import LocalMosquitto
from vlabus.bus.transport import TransportOptions, open_transport
from vlabus.hub.server import Hub
from vlabus.wire import Decoder

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
MS = 1_000_000
STALL = StallConfig(factor=10, min_ns=300 * MS, exit_after_ns=0)


def options(broker: LocalMosquitto | None, identity: str,
            client_id: str | None = None) -> TransportOptions:
    client_id = client_id or identity
    return (broker.options(identity, client_id) if broker
            else TransportOptions(client_id=client_id))


def serving(url: str, broker: LocalMosquitto | None, keydir: KeyDir, worker_id: str,
            policy: HangingPolicy,
            stall: StallConfig = STALL) -> AbstractAsyncContextManager[Worker]:
    """A pool worker serving ``policy`` as ``noop``, watched by ``stall``."""
    return support_serving(url, keydir, {"noop": policy}, worker_id=worker_id,
                           options=options(broker, worker_id), stall=stall)


def test_a_hung_worker_leaves_the_pool_and_the_robot_keeps_its_cloud_actions(
        keydir: KeyDir, bus: tuple[str, LocalMosquitto | None]) -> None:
    url, broker = bus

    async def body() -> None:
        watcher = await open_transport(url, options(broker, "worker-2", "status-watcher"))
        await watcher.subscribe(topics.worker_status_topic("worker-1"))
        statuses = Decoder(keydir.ring)
        hung, healthy = HangingPolicy(), HangingPolicy()
        async with serving(url, broker, keydir, "worker-1", hung) as w1, \
                serving(url, broker, keydir, "worker-2", healthy):
            robot = SimRobot(size=32)
            config = AgentConfig(robot_id="robot-a", deadline_ns=100 * MS, period_ns=20 * MS,
                                 breaker=BreakerConfig(probe_interval_ns=50 * MS))
            agent = await open_edge(url, keys=keydir.ring, signer=keydir.signers["robot-a"],
                                    config=config, probe=robot.observe(0),
                                    model=LocalModel(width=8, horizon=8),
                                    options=options(broker, "robot-a"))
            try:
                step = 0

                async def act() -> Source:
                    nonlocal step
                    step += 1
                    result = await agent.act(robot.observe(step))
                    await asyncio.sleep(0.01)
                    return result.source

                while [await act() for _ in range(3)] != [Source.CLOUD] * 3:
                    assert step < 300, "no cloud actions before the hang"
                hung.hang.set()
                sources = [await act() for _ in range(250)]
                cloud = sources.count(Source.CLOUD) / len(sources)
                assert cloud >= 0.9, f"{cloud:.0%} cloud actions while worker-2 served"
                assert hung.hung.is_set()  # worker-1 did get a frame and hung on it
                assert w1.stall.stalled
                assert not w1.healthy()
                assert w1.metrics.registry.get_sample_value("vlabus_worker_stalled") == 1.0

                async def health() -> str:
                    while True:
                        got = statuses.decode((await watcher.receive()).payload).message
                        assert isinstance(got, Status)
                        if got.detail.get("health") != "ok" or got.state != "online":
                            return got.detail.get("health", "")
                assert await asyncio.wait_for(health(), TIMEOUT) == "degraded"
                hung.hang.clear()
                hung.release.set()  # the policy returns: worker-1 rejoins
                await eventually(w1.healthy, TIMEOUT)
            finally:
                await agent.close()
                await agent.transport.close()
        await watcher.close()
    run(body, 110)


def test_a_worker_stalled_past_its_limit_ends_for_its_supervisor(
        keydir: KeyDir, zmq_hub: Hub) -> None:
    async def body() -> None:
        policy = HangingPolicy()
        runner = PolicyRunner({"noop": policy}, {})
        stall = StallConfig(factor=10, min_ns=200 * MS, exit_after_ns=500 * MS)
        worker = await open_worker(zmq_hub.url, keydir.signers["worker-1"], keydir.ring, runner,
                                   config=WorkerConfig(worker_id="worker-1", group="pool",
                                                       max_delay_ns=MS, stall=stall))
        task = asyncio.create_task(worker.run(asyncio.Event()))
        await asyncio.wait_for(worker.ready.wait(), 30)
        policy.hang.set()
        robot = await Robot.connect(zmq_hub.url, keydir.signers["robot-a"], keydir.ring)
        await robot.send_frame(make_frame("robot-a", 1), "first", budget_ms=5000)
        await asyncio.wait_for(task, TIMEOUT)  # returns on its own
        assert worker.exit_reason.startswith("stalled")
        policy.release.set()
        await robot.close()
        await worker.transport.close()
    run(body, 60)
