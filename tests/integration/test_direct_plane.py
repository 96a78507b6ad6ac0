"""The direct data plane with real processes: ``vlabus worker --direct`` workers on a real
ZeroMQ hub, a robot's :class:`~vlabus.direct.robot.DirectTransport` with session integrity.

A frame goes straight to a worker's ROUTER and its Action returns on the same connection,
MACed under the pool session; a killed worker's frames go through the hub instead; two workers
share a robot's frames."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.messages import Action
from tests.support.aio import eventually, run
from tests.support.direct import direct_robot, direct_worker, pool_keys, summary_of
from tests.support.keys import KeyDir
from vlabus.hub.server import Hub

pytestmark = pytest.mark.integration


def test_a_round_trip_over_the_direct_plane_is_maced_both_ways(
        zmq_hub: Hub, keydir: KeyDir, tmp_path: Path) -> None:
    keys = pool_keys(keydir, tmp_path)
    with direct_worker(zmq_hub.url, keys, "worker-1") as proc:
        async def body() -> None:
            async with direct_robot(zmq_hub.url, keys) as robot:
                await robot.wait_for("worker-1")
                replies = [await robot.step(n) for n in range(1, 21)]
                assert all(isinstance(r.message, Action) for r in replies)
                assert all(r.header.sender == "worker-1" for r in replies)
                session = [r for r in replies if r.wire[2] == 2]
                assert len(session) >= 10  # MACed under the session once the offer is in
                counters = robot.bus.counters()
                assert counters["frames_direct"] >= 10
                assert counters["direct_replies"] >= 10
                assert robot.link.encoder.sent["session"] >= 10

        run(body, 60)
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        summary = summary_of(proc)
    assert summary["transport"]["direct_received"] >= 10
    assert summary["transport"]["direct_replies"] >= 10
    assert summary["rejected_total"] == summary["rejected"].get("duplicate", 0)


def test_a_killed_worker_leaves_the_robot_to_the_hub_in_time(
        zmq_hub: Hub, keydir: KeyDir, tmp_path: Path) -> None:
    keys = pool_keys(keydir, tmp_path)
    with direct_worker(zmq_hub.url, keys, "worker-1") as direct, \
            direct_worker(zmq_hub.url, keys, "worker-2", direct=False):
        async def body() -> None:
            async with direct_robot(zmq_hub.url, keys) as robot:
                await robot.wait_for("worker-1")
                n = 1
                while robot.bus.counters().get("frames_direct", 0) < 1:  # direct socket is up
                    await robot.step(n)
                    n += 1
                    assert n < 200, "no frame went direct"
                direct.send_signal(signal.SIGKILL)
                direct.wait(10)
                await eventually(lambda: robot.bus.counters().get("direct_lost", 0) >= 1)
                # from now on the hub carries the frames, to the worker that is left
                while True:
                    try:
                        reply = await robot.step(n, timeout=1.0)
                    except TimeoutError:  # the hub's share may still go to the dead one
                        n += 1
                        continue
                    if reply.header.sender == "worker-2":
                        break
                    n += 1
                assert robot.bus.counters()["frames_via_bus"] >= 1

        run(body, 90)


def test_two_direct_workers_share_a_robots_frames(
        zmq_hub: Hub, keydir: KeyDir, tmp_path: Path) -> None:
    keys = pool_keys(keydir, tmp_path)
    with direct_worker(zmq_hub.url, keys, "worker-1"), \
            direct_worker(zmq_hub.url, keys, "worker-2"):
        async def body() -> None:
            async with direct_robot(zmq_hub.url, keys) as robot:
                await robot.wait_for("worker-1", "worker-2")
                senders = [(await robot.step(n)).header.sender for n in range(1, 41)]
                # equal advertised depths: two random choices spread the frames over both
                assert set(senders) == {"worker-1", "worker-2"}

        run(body, 90)


def test_vlabus_edge_direct_acts_on_actions_that_came_straight_from_a_worker(
        zmq_hub: Hub, keydir: KeyDir, tmp_path: Path) -> None:
    keys = pool_keys(keydir, tmp_path)
    with direct_worker(zmq_hub.url, keys, "worker-1"):
        edge = subprocess.run(
            [sys.executable, "-m", "vlabus", "edge", "--robot-id", "robot-a", "--bus",
             zmq_hub.url, "--keys", str(keys), "--sim", "--fps", "20", "--deadline-ms", "200",
             "--seconds", "6", "--session-pool", "gpu", "--direct", "--json"],
            capture_output=True, timeout=120, check=False)
    assert edge.returncode == 0, edge.stderr.decode()[-2000:]
    summary = json.loads(edge.stdout.decode())
    assert summary["transport"]["frames_direct"] >= 10
    assert summary["transport"]["direct_replies"] >= 10
    assert summary["actions_by_source"].get("cloud", 0) >= 10
