"""Many simulated robots in one process against a real hub and a real worker, and the worker's
schedulers end to end."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from edge_agent.breaker import BreakerConfig
from edge_agent.fleet import FleetCollector, FleetSpec, robot_ids, run_fleet
from edge_agent.stack import LocalModel
from security.keys import Keyring, add_key
from tests.support.keys import KeyDir
from tests.support.worker import serving
from vlabus.hub.server import Hub
from vlabus.policy.profile import Profile, ProfilePolicy

# 4 ms at batch 1, 5 ms at 8: a device the fleet below cannot saturate
TINY = Profile(name="tiny", model="tiny", device="none", measured=False, method="test",
               sources=("test",), batch_ms=((1, 4.0), (8, 5.0)), horizon=8, action_dim=7,
               state_dim=14)


def test_robot_ids_count_up_from_the_first() -> None:
    assert robot_ids("robot-9", 3) == ["robot-9", "robot-10", "robot-11"]
    assert robot_ids("arm", 1) == ["arm"]
    with pytest.raises(ValueError, match="end in a number"):
        robot_ids("arm", 2)


def test_fleet_collector_sums_counters_over_robots() -> None:
    collector = FleetCollector()
    for value in (2, 3):
        registry = CollectorRegistry()
        Counter("vlabus_edge_frames_sent", "frames", registry=registry).inc(value)
        collector.registries.append(registry)
    samples = {s.name: s.value for family in collector.collect() for s in family.samples}
    assert samples["vlabus_edge_frames_sent_total"] == 5


@pytest.fixture
def fleet_keys(tmp_path: Path, keydir: KeyDir) -> KeyDir:
    """A copy of the shared keyring plus robot-1 … robot-6 (the session's keyring stays as
    other tests expect it)."""
    path = tmp_path / "keys"
    shutil.copytree(keydir.path, path)
    for i in range(1, 7):
        add_key(path, "robot", f"robot-{i}", overwrite=True)
    return KeyDir(path, keydir.signers)


def run_with_worker(hub: Hub, keys: KeyDir, spec: FleetSpec,
                    scheduler: str) -> tuple[dict[str, Any], dict[str, Any]]:
    async def body() -> tuple[dict[str, Any], dict[str, Any]]:
        async with serving(hub.url, keys, {"tiny": ProfilePolicy(TINY)},
                           scheduler=scheduler) as worker:
            fleet = await run_fleet(hub.url, keys.path, spec)
        await worker.transport.close()
        return fleet, worker.metrics.summary.as_dict()
    return asyncio.run(body())


def test_each_simulated_robot_is_its_own_client_and_is_answered(zmq_hub: Hub,
                                                                fleet_keys: KeyDir) -> None:
    # deadlines far above this loaded machine's worst stalls: the test is about identities
    spec = FleetSpec(robots=6, fps=10, deadline_ms=600, seconds=1.5, high_fraction=0.3,
                     breaker=BreakerConfig(miss_limit=1 << 30), model=LocalModel(width=8))
    fleet, worker = run_with_worker(zmq_hub, fleet_keys, spec, "vlabus")
    assert [r["robot_id"] for r in fleet["per_robot"]] == [f"robot-{i}" for i in range(1, 7)]
    assert all(r["requests"] >= 10 and r["answered"] > 0 for r in fleet["per_robot"])
    # 30% at high priority, spread evenly: the 4th of six
    assert [r["priority"] for r in fleet["per_robot"]] == [2, 2, 2, 1, 2, 2]
    assert fleet["by_priority"]["1"]["robots"] == 1
    assert worker["served"] >= fleet["on_time"]
    assert worker["rejected_total"] == 0  # every robot signs with its own key
    assert fleet["on_time"] <= fleet["requests"]
    assert Keyring.load(fleet_keys.path) is not None


def test_serial_scheduler_runs_one_request_per_batch(zmq_hub: Hub, fleet_keys: KeyDir) -> None:
    spec = FleetSpec(robots=4, fps=10, deadline_ms=600, seconds=0.8,
                     breaker=BreakerConfig(miss_limit=1 << 30), model=LocalModel(width=8))
    fleet, worker = run_with_worker(zmq_hub, fleet_keys, spec, "serial")
    assert fleet["answered"] > 0
    assert worker["batches"] > 0
    assert worker["mean_batch_size"] == 1.0
