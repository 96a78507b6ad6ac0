"""The robot against real cloud workers over a real Mosquitto and a real ZeroMQ hub.

Every worker is stopped mid-run: every step must still get exactly one action (the local
policy's, with a cause); the workers come back: cloud actions must resume (the breaker's probes
find them). A recorded black box holds what was sent, received and decided.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cloud_workers.metrics import WorkerMetrics
from cloud_workers.runner import PolicyRunner
from cloud_workers.worker import WorkerConfig, open_worker
from edge_agent.agent import ActionResult, AgentConfig, Cause, Source
from edge_agent.breaker import BreakerConfig
from edge_agent.sim import SimRobot
from edge_agent.stack import LocalModel, open_edge
from tests.support.keys import KeyDir
from tests.support.worker import serving
from vlabus.bus.transport import TransportOptions
from vlabus.policy.profile import Profile, ProfilePolicy
from vlabus.policy.reference import NoopPolicy

pytestmark = pytest.mark.integration
MS = 1_000_000
WORKERS = ("worker-1", "worker-2")


class Pool:
    """Real workers (in this process, real transport) that can be stopped and restarted."""

    def __init__(self, url: str, keydir: KeyDir, options: Callable[[str], TransportOptions]):
        self.url = url
        self.keydir = keydir
        self.options = options
        self.running: list[tuple[asyncio.Event, asyncio.Task[None], Any]] = []

    async def start(self) -> None:
        for worker_id in WORKERS:
            runner = PolicyRunner({"noop": NoopPolicy(horizon=8, action_dim=7)}, {})
            worker = await open_worker(
                self.url, self.keydir.signers[worker_id], self.keydir.ring, runner,
                config=WorkerConfig(worker_id=worker_id, max_delay_ns=MS),
                metrics=WorkerMetrics(), options=self.options(worker_id))
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            await asyncio.wait_for(worker.ready.wait(), 30)
            self.running.append((stop, task, worker.transport))

    async def stop(self) -> None:
        for stop, task, transport in self.running:
            stop.set()
            await asyncio.wait_for(task, 30)
            await transport.close()
        self.running.clear()


async def scenario(url: str, keydir: KeyDir, options: Callable[[str], TransportOptions],
                   record: Path) -> None:
    from vlabus.log.record import Recorder

    pool = Pool(url, keydir, options)
    await pool.start()
    robot = SimRobot(size=64)
    config = AgentConfig(robot_id="robot-a", deadline_ns=60 * MS, period_ns=10 * MS,
                         breaker=BreakerConfig(miss_limit=3, probe_interval_ns=50 * MS,
                                               close_after=2))
    recorder = Recorder(record)
    agent = await open_edge(url, keys=keydir.ring, signer=keydir.signers["robot-a"],
                            config=config, probe=robot.observe(0),
                            model=LocalModel(width=8, horizon=8), recorder=recorder,
                            options=options("robot-a"))
    results: list[ActionResult] = []
    calls = 0

    async def steps(count: int, until: Callable[[], bool] | None = None) -> None:
        nonlocal calls
        for _ in range(count):
            calls += 1
            results.append(await agent.act(robot.observe(calls)))
            if until is not None and until():
                return
            await asyncio.sleep(0.01)

    try:
        await steps(40, until=lambda: sum(r.source is Source.CLOUD for r in results) >= 10)
        healthy = len(results)
        assert sum(r.source is Source.CLOUD for r in results) >= 10
        stopping = asyncio.create_task(pool.stop())  # every worker goes while steps run
        await steps(15)
        await stopping
        await steps(10)
        outage = results[healthy + 15:]
        assert all(r.source is Source.FALLBACK for r in outage)
        assert {r.cause for r in outage} <= {Cause.TIMEOUT, Cause.BREAKER_OPEN}
        assert agent.breaker.open
        await pool.start()
        await steps(200, until=lambda: [r.source for r in results[-3:]] == [Source.CLOUD] * 3)
        assert results[-1].source is Source.CLOUD, "cloud actions did not resume"
        assert not agent.breaker.open
        assert agent.breaker.closed >= 1  # recovered through its probes
    finally:
        await pool.stop()
        await agent.close()
        await agent.transport.close()
        recorder.close()
    # exactly one action per step, in order, none missing
    assert len(results) == calls
    assert [r.step for r in results] == list(range(calls))
    assert all(r.action is not None for r in results)
    assert agent.stats.steps_without_action == 0
    assert agent.stats.steps == calls
    assert recorder.counters()["records"] == calls  # one decision record per step


def test_workers_stop_and_restart_over_zmq(zmq_hub: Any, keydir: KeyDir, tmp_path: Path) -> None:
    asyncio.run(scenario(zmq_hub.url, keydir,
                         lambda ident: TransportOptions(client_id=ident),
                         tmp_path / "edge.mcap"))


def test_workers_stop_and_restart_over_mosquitto(mosquitto: Any, keydir: KeyDir,
                                                 tmp_path: Path) -> None:
    asyncio.run(scenario(mosquitto.url, keydir, mosquitto.options, tmp_path / "edge.mcap"))


def test_broker_restart_gives_disconnected_fallbacks_then_cloud(mosquitto: Any,
                                                                keydir: KeyDir) -> None:
    async def main() -> None:
        pool = Pool(mosquitto.url, keydir, mosquitto.options)
        await pool.start()
        robot = SimRobot(size=32)
        config = AgentConfig(robot_id="robot-a", deadline_ns=60 * MS, period_ns=10 * MS,
                             breaker=BreakerConfig(miss_limit=3, probe_interval_ns=50 * MS))
        agent = await open_edge(mosquitto.url, keys=keydir.ring,
                                signer=keydir.signers["robot-a"], config=config,
                                probe=robot.observe(0), model=LocalModel(width=8, horizon=8),
                                options=mosquitto.options("robot-a"))
        results: list[ActionResult] = []
        try:
            for i in range(5):
                results.append(await agent.act(robot.observe(i)))
            assert results[-1].source is Source.CLOUD
            await asyncio.to_thread(mosquitto.stop)
            for _ in range(100):  # the client notices the lost connection within moments
                results.append(await agent.act(robot.observe(len(results))))
                if results[-1].cause is Cause.DISCONNECTED:
                    break
                await asyncio.sleep(0.01)
            assert results[-1].cause is Cause.DISCONNECTED
            await asyncio.to_thread(mosquitto.start)
            for _ in range(600):
                results.append(await agent.act(robot.observe(len(results))))
                if results[-1].source is Source.CLOUD:
                    break
                await asyncio.sleep(0.01)
            assert results[-1].source is Source.CLOUD, "no cloud action after the broker came back"
        finally:
            await pool.stop()
            await agent.close()
            await agent.transport.close()
        assert all(r.action is not None for r in results)
    asyncio.run(main())


def test_a_frame_the_worker_cannot_serve_in_time_is_declined_at_once(
        bus: tuple[str, Any], keydir: KeyDir) -> None:
    # a policy measured at 300 ms a call, and robots that decide 700 ms after sending
    slow = Profile(name="slow", model="slow", device="none", measured=False, method="test",
                   sources=("test",), batch_ms=((1, 300.0), (2, 300.0)), horizon=8,
                   action_dim=7, state_dim=14)

    url, broker = bus

    def options(ident: str) -> TransportOptions:
        return TransportOptions(client_id=ident) if broker is None else broker.options(ident)

    async def main() -> None:
        async with serving(url, keydir, {"slow": ProfilePolicy(slow)},
                           options=options("worker-1"), max_batch=1) as worker:
            config = AgentConfig(robot_id="robot-a", deadline_ns=700 * MS, period_ns=10 * MS,
                                 breaker=BreakerConfig(miss_limit=1 << 30))
            agents = [await open_edge(url, keys=keydir.ring,
                                      signer=keydir.signers[name],
                                      config=replace(config, robot_id=name),
                                      probe=SimRobot(size=16).observe(0),
                                      model=LocalModel(width=8, horizon=8),
                                      options=options(name))
                      for name in ("robot-a", "robot-b", "robot-c")]
            try:
                robot = SimRobot(size=16)
                results = await asyncio.gather(*(agent.act(robot.observe(0))
                                                 for agent in agents))
            finally:
                for agent in agents:
                    await agent.close()
                    await agent.transport.close()
            # three frames at once, 300 ms each, one at a time, each robot deciding at 700 ms:
            # the third cannot start before 600 ms, so it is dropped before the model and its
            # robot told; a cause `declined` (not `timeout`) means the notice came in time
            declined = [r for r in results if r.cause is Cause.DECLINED]
            assert len(declined) >= 1
            assert all(r.source is Source.CLOUD or r.cause is Cause.DECLINED for r in results)
            assert all(r.action is not None for r in results)
            assert sum(agent.stats.declined for agent in agents) == len(declined)
            assert worker.metrics.summary.dropped["deadline"] == len(declined)
    asyncio.run(main())
