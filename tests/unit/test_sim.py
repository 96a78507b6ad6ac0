"""The simulated robot as a library (``run_sim_robot``): summary, chunks, black box, metrics."""

from __future__ import annotations

import asyncio
import itertools
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from edge_agent.metrics import EdgeMetrics
from edge_agent.sim import SimRobot, run_sim_robot
from edge_agent.stack import LocalModel
from schemas.messages import Status
from tests.support.edge import FakeCloud
from tests.support.keys import KeyDir
from vlabus.bus.memory import broker_for, reset_memory
from vlabus.bus.transport import TransportOptions, open_transport
from vlabus.log.reader import iter_log
from vlabus.log.record import Recorder
from vlabus.metrics import MetricsServer
from vlabus.wire import Decoder

SUMMARY_KEYS = {"steps", "actions_by_source", "fallbacks_by_cause", "lateness_ms", "rtt_ms",
                "late_replies_discarded", "steps_without_action", "rejected_by_reason",
                "latency_breakdown_p50_ms"}
BREAKDOWN_KEYS = {"robot_encode", "transport_up_down", "worker_decode", "queue_wait",
                  "inference", "worker_encode", "robot_decode"}
_names = itertools.count()


def test_sim_robot_is_deterministic_and_moves_with_actions() -> None:
    a, b = SimRobot(size=32, seed=3), SimRobot(size=32, seed=3)
    obs = a.observe(5)
    assert obs.images["front"].shape == (32, 32, 3)
    assert np.array_equal(obs.images["front"], b.observe(5).images["front"])
    assert obs.command == b.observe(0).command
    a.apply(np.ones(7, np.float32))
    assert a.state[:7].tolist() == pytest.approx([0.05] * 7)
    assert a.state[7:].tolist() == [0.0] * 7
    assert a.applied == 1


async def with_cloud(keydir: KeyDir, body: Any, **cloud: Any) -> dict[str, Any]:
    url = f"memory://sim-{next(_names)}"
    reset_memory(url.removeprefix("memory://"))
    bus = await open_transport(url, TransportOptions(client_id="worker-1"))
    fake = await FakeCloud(bus, keydir.signers["worker-1"], keydir.ring, **cloud).start()
    try:
        result: dict[str, Any] = await body(url)
    finally:
        await fake.close()
    retained = broker_for(url.removeprefix("memory://")).retained
    statuses = [Decoder(keydir.ring).decode(payload).message for payload in retained.values()]
    result["retained_status"] = [(s.client_id, s.state) for s in statuses
                                 if isinstance(s, Status)]
    return result


def test_run_sim_robot_summary_with_a_healthy_cloud(keydir: KeyDir, tmp_path: Path) -> None:
    metrics = EdgeMetrics()
    server = MetricsServer(metrics.registry).start()
    recorder = Recorder(tmp_path / "box.mcap")

    async def body(url: str) -> dict[str, Any]:
        return await run_sim_robot(url, keydir.path, "robot-a", fps=100, deadline_ms=30,
                                   seconds=0.3, model=LocalModel(width=8), metrics=metrics,
                                   recorder=recorder)
    try:
        summary = asyncio.run(with_cloud(keydir, body))
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics").read().decode()
    finally:
        server.close()
        recorder.close()
    assert summary.keys() >= SUMMARY_KEYS
    assert set(summary["latency_breakdown_p50_ms"]) == BREAKDOWN_KEYS
    assert summary["steps"] == 30
    assert summary["actions_by_source"].get("cloud", 0) >= 25
    assert summary["steps_without_action"] == 0
    assert summary["rtt_ms"]["p50"] > 0
    # the fake worker reports a 70 us span: worker parts are its figures, transport the rest
    assert summary["latency_breakdown_p50_ms"]["inference"] == 0.03
    assert summary["latency_breakdown_p50_ms"]["transport_up_down"] >= 0
    assert 'vlabus_edge_actions_total{source="cloud"}' in text
    assert "vlabus_edge_round_trip_seconds_count" in text
    assert 'vlabus_edge_latency_part_seconds_count{part="transport_up_down"}' in text
    assert "vlabus_edge_model_version 0.0" in text
    topics: dict[str, int] = {}
    decisions = []
    for record in iter_log(tmp_path / "box.mcap"):
        topics[record.topic] = topics.get(record.topic, 0) + 1
        if record.topic.endswith("/decision"):
            decisions.append(msgspec.msgpack.decode(record.data))
    assert topics["vla/v1/robot-a/frame"] >= 30
    assert topics["vla/v1/robot-a/action"] >= 25
    assert len(decisions) == 30
    assert [d["step"] for d in decisions] == list(range(30))
    assert {d["source"] for d in decisions} <= {"cloud", "fallback"}


def test_run_sim_robot_dead_cloud_every_step_still_acts(keydir: KeyDir) -> None:
    async def body(url: str) -> dict[str, Any]:
        return await run_sim_robot(url, keydir.path, "robot-b", fps=100, deadline_ms=5,
                                   seconds=0.3, model=LocalModel(width=8), safety_every=10)
    summary = asyncio.run(with_cloud(keydir, body, alive=False))
    assert summary["steps"] == 30
    assert summary["actions_by_source"] == {"fallback": 30}
    causes = summary["fallbacks_by_cause"]
    assert causes["safety_critical"] == 3
    assert causes.get("timeout", 0) >= 3  # then the breaker opens
    assert causes.get("breaker_open", 0) > 0
    assert summary["steps_without_action"] == 0
    # the policy thread is warmed up and single-threaded: no cold 70 ms first calls (a bound
    # loose enough for a loaded CI machine; bench.fallback measures the real figure)
    assert summary["lateness_ms"]["p50"] < 2.0
    assert summary["lateness_ms"]["max"] < 50.0


def test_run_sim_robot_in_chunk_mode(keydir: KeyDir) -> None:
    async def body(url: str) -> dict[str, Any]:
        return await run_sim_robot(url, keydir.path, "robot-c", fps=100, deadline_ms=20,
                                   seconds=0.4, chunk=8, model=LocalModel(width=8))
    summary = asyncio.run(with_cloud(keydir, body, horizon=8))
    assert summary["steps"] == 40
    assert summary["steps_without_action"] == 0
    assert summary["actions_by_source"].get("cloud", 0) >= 30
    # chunks of 8 refilled at 4 left: far fewer round trips than steps
    assert summary["breakdown_samples"] < 20
