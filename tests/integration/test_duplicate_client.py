"""Two processes configured with the same client id (a copied configuration, a worker restarted
while its old pod still runs): the newer connection takes over, the older one is told, counts it
and waits before it takes the id back, so the two never fight in a tight reconnect loop.

On Mosquitto the broker ends the older connection with reason 0x8E (session taken over); on
the hub the newer HELLO takes the client id over and the hub NACKs the older one. Either way the
older client is disconnected (so a worker's ``/readyz`` says so), its will is not published (the
id is online), and it takes the id back only after ``takeover_hold_s``.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from edge_agent.agent import AgentConfig, Source
from edge_agent.breaker import BreakerConfig
from edge_agent.sim import SimRobot
from edge_agent.stack import LocalModel, open_edge
from tests.support.aio import eventually, run
from tests.support.keys import KeyDir
from tests.support.worker import serving
from vlabus.broker.local import LocalMosquitto
from vlabus.bus.transport import Transport, TransportOptions, Will, open_transport
from vlabus.hub.server import Hub

pytestmark = pytest.mark.integration
HOLD_S = 2.0
MS = 1_000_000
EXTRA = {"reconnect_min_s": "0.05", "reconnect_max_s": "0.5", "takeover_hold_s": str(HOLD_S)}
STATUS = "vla/v1/workers/worker-1/status"


async def watch_takeovers(first: Transport, second: Transport, seconds: float) -> int:
    """How many times the id changed hands in ``seconds`` (sampled every 10 ms)."""
    changes, holder = 0, None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = "first" if first.connected else "second" if second.connected else holder
        if holder is not None and now != holder:
            changes += 1
        holder = now
        await asyncio.sleep(0.01)
    return changes


def test_duplicate_client_id_on_mosquitto_does_not_fight(mosquitto: LocalMosquitto) -> None:
    """Mosquitto 2.0 closes the older connection without a reason code: the clients see
    connections that end right after they are made, back off and then hold."""

    async def body() -> None:
        first = await open_transport(mosquitto.url, mosquitto.options(
            "worker-1", "worker-1", extra=EXTRA))
        second = await open_transport(mosquitto.url, mosquitto.options(
            "worker-1", "worker-1", extra=EXTRA))
        await eventually(lambda: not first.connected)
        # With a reset backoff of 50 ms the two would trade the id ~10 times a second; over
        # 3 hold intervals they settle into a hold after at most 3 short-lived connections.
        changes = await watch_takeovers(first, second, 3 * HOLD_S)
        assert changes <= 12, changes
        flaps = first.counters()["flaps"] + second.counters()["flaps"]
        assert flaps >= 1, (first.counters(), second.counters())
        await first.close()
        await second.close()

    run(body, timeout=60)


def test_duplicate_client_id_on_the_hub_takes_over(zmq_hub: Hub) -> None:
    async def body() -> None:
        def options(state: bytes) -> TransportOptions:
            return TransportOptions(client_id="worker-1", extra=EXTRA, keepalive_s=1,
                                    will=Will(STATUS, state))
        observer = await open_transport(zmq_hub.url, TransportOptions(client_id="observer"))
        await observer.subscribe(STATUS)
        first = await open_transport(zmq_hub.url, options(b"first-gone"))
        await first.publish(STATUS, b"first-online", qos=1, retain=True)
        second = await open_transport(zmq_hub.url, options(b"second-gone"))
        await second.publish(STATUS, b"second-online", qos=1, retain=True)
        await eventually(lambda: first.counters()["taken_over"] == 1)
        assert not first.connected
        assert second.connected
        assert zmq_hub.stats["taken_over"] == 1
        # The older connection vanishing is not the id going offline: no will.
        first.abort()
        # The newer one vanishing is: its will, and only its will, is published.
        second.abort()
        seen = []
        while not seen or seen[-1] != b"second-gone":
            seen.append(bytes((await asyncio.wait_for(observer.receive(), 10)).payload))
        assert b"first-gone" not in seen, seen
        await observer.close()

    run(body, timeout=60)


def test_the_taken_over_hub_client_takes_the_id_back_after_its_hold(zmq_hub: Hub) -> None:
    async def body() -> None:
        options = TransportOptions(client_id="worker-1", extra=EXTRA, keepalive_s=1)
        first = await open_transport(zmq_hub.url, options)
        second = await open_transport(zmq_hub.url, options)
        await eventually(lambda: first.counters()["taken_over"] == 1)
        changes = await watch_takeovers(first, second, 3 * HOLD_S)
        assert 1 <= changes <= 4, changes
        await first.close()
        await second.close()

    run(body, timeout=60)


def test_two_workers_started_with_one_id_keep_a_robot_served(
        keydir: KeyDir, bus: tuple[str, LocalMosquitto | None]) -> None:
    """A copied configuration starts a second ``worker-1``: the robot keeps its cloud actions
    and, once the two have settled, one of them serves and the other says it is not ready."""
    url, broker = bus

    def options(identity: str) -> TransportOptions:
        extra = {"takeover_hold_s": "30"}
        return (broker.options(identity, identity, extra=extra) if broker
                else TransportOptions(client_id=identity, extra=extra))

    async def body() -> None:
        async with serving(url, keydir, worker_id="worker-1", options=options("worker-1")) \
                as first, serving(url, keydir, worker_id="worker-1",
                                  options=options("worker-1")) as second:
            def settled() -> bool:  # one holds the id for 30 s: taken over, or three flaps
                counts = [w.transport.counters() for w in (first, second)]
                held = any(c["taken_over"] >= 1 or c["flaps"] >= 3 for c in counts)
                return held and [first.transport.connected,
                                 second.transport.connected].count(True) == 1

            await eventually(settled, timeout=20)
            robot = SimRobot(size=32)
            config = AgentConfig(robot_id="robot-a", deadline_ns=100 * MS, period_ns=20 * MS,
                                 breaker=BreakerConfig(probe_interval_ns=50 * MS))
            agent = await open_edge(url, keys=keydir.ring, signer=keydir.signers["robot-a"],
                                    config=config, probe=robot.observe(0),
                                    model=LocalModel(width=8, horizon=8),
                                    options=options("robot-a"))
            try:
                sources = []
                for step in range(150):
                    sources.append((await agent.act(robot.observe(step))).source)
                    await asyncio.sleep(0.01)
            finally:
                await agent.close()
                await agent.transport.close()
            cloud = sources.count(Source.CLOUD) / len(sources)
            assert cloud >= 0.9, f"{cloud:.0%} cloud actions"
            assert [first.transport.connected, second.transport.connected].count(True) == 1

    run(body, timeout=90)
