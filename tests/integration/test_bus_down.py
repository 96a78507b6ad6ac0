"""Processes outlive the bus: a worker and a robot started 10 s before the hub or Mosquitto.

The robot acts on its local policy from its first step (fallback cause ``disconnected``), no
process exits, and cloud actions start within 5 s of the bus starting. Real processes
(``vlabus worker``, ``vlabus edge``), a real hub or Mosquitto.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.keys import KeyDir
from vlabus.broker.local import LocalMosquitto
from vlabus.broker.render import Limits, render
from vlabus.cli.procs import Child, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: what the issue promises: cloud actions within this long of the bus starting
RESUME_S = 5.0


@dataclass
class LateBus:
    """A bus at a known URL that is not running until :meth:`start`."""

    url: str
    extra_args: list[str]
    start: Callable[[], object]


@pytest.fixture(params=["hub", "mosquitto"])
def late_bus(request: pytest.FixtureRequest, keydir: KeyDir,
             tmp_path: Path) -> Iterator[LateBus]:
    port = free_port()
    if request.param == "hub":
        hub = Child("hub", ["hub", "--bind", f"tcp://127.0.0.1:{port}"], tmp_path)

        def start_hub() -> None:
            hub.start()
            # the hub prints its address once it listens
            deadline = time.monotonic() + 30
            err = tmp_path / "hub.0.err"
            while "listening" not in (err.read_text() if err.exists() else ""):
                assert time.monotonic() < deadline, "the hub did not start"
                assert hub.running, hub.stderr_tail()
                time.sleep(0.02)

        bus = LateBus(f"zmq://127.0.0.1:{port}", [], start_hub)
        yield bus
        hub.terminate()
        return
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    config = tmp_path / "broker"
    render(keydir.path, config, port=port, limits=Limits(persistence=False))
    broker = LocalMosquitto(config, port=port)
    bus = LateBus(broker.url, ["--broker-config", str(config)], broker.start)
    yield bus
    broker.stop()


def count(samples: dict[str, float], name: str) -> float:
    return samples.get(name, 0.0)


def test_worker_and_robot_started_before_the_bus(late_bus: LateBus, keydir: KeyDir,
                                                  tmp_path: Path) -> None:
    bus = ["--bus", late_bus.url, *late_bus.extra_args, "--keys", str(keydir.path)]
    worker_port, robot_port = free_port(), free_port()
    worker = Child("worker", ["worker", *bus, "--id", "worker-1", "--policy", "noop",
                              "--metrics-port", str(worker_port), "--json"],
                   tmp_path, metrics_port=worker_port)
    robot = Child("robot", ["edge", "--sim", *bus, "--robot-id", "robot-a", "--fps", "20",
                            "--deadline-ms", "200", "--metrics-port", str(robot_port),
                            "--json"], tmp_path, metrics_port=robot_port)
    children = [worker.start(), robot.start()]
    try:
        # at least 10 s without a bus, and until the robot acts (a loaded machine can take
        # longer than that to import torch): it acts, locally, from its first step
        started = time.monotonic()
        first: dict[str, float] = {}
        while time.monotonic() - started < 10 or not first:
            assert time.monotonic() - started < 90, f"the robot never acted: {robot.stderr_tail()}"
            samples = robot.scrape()
            if not first and count(samples, 'vlabus_edge_actions_total{source=fallback}') > 0:
                first = samples
            assert worker.running, worker.stderr_tail()
            assert robot.running, robot.stderr_tail()
            time.sleep(0.2)
        assert first, f"the robot never acted: {robot.stderr_tail()}"
        assert count(first, "vlabus_edge_actions_total{source=cloud}") == 0
        assert count(first, "vlabus_edge_fallbacks_total{cause=disconnected}") > 0
        before = robot.scrape()
        assert count(before, "vlabus_edge_actions_total{source=cloud}") == 0
        local = count(before, "vlabus_edge_fallbacks_total{cause=disconnected}")
        assert local >= count(first, "vlabus_edge_fallbacks_total{cause=disconnected}")
        # each says what it waits for (a zmq attempt takes up to 5 s to fail on a quiet port)
        deadline = time.monotonic() + 60
        while not all("waiting for" in c.stderr_tail(50) for c in (worker, robot)):
            assert time.monotonic() < deadline, (worker.stderr_tail(), robot.stderr_tail())
            time.sleep(0.1)

        late_bus.start()
        started = time.monotonic()
        resumed = None
        while time.monotonic() - started < 60:
            if count(robot.scrape(), "vlabus_edge_actions_total{source=cloud}") > 0:
                resumed = time.monotonic() - started
                break
            assert worker.running, worker.stderr_tail()
            assert robot.running, robot.stderr_tail()
            time.sleep(0.05)
        assert resumed is not None, f"no cloud action: {robot.stderr_tail()}"
        assert resumed < RESUME_S, f"cloud actions only {resumed:.1f} s after the bus started"

        assert robot.terminate() == 0, robot.stderr_tail()
        assert worker.terminate() == 0, worker.stderr_tail()
        summary = robot.stdout_json()
        assert summary is not None
        assert summary["steps_without_action"] == 0
        assert summary["fallbacks_by_cause"]["disconnected"] >= local
        assert summary["actions_by_source"]["cloud"] > 0
        served = worker.stdout_json()
        assert served is not None
        assert served["served"] > 0, json.dumps(served)
    finally:
        for child in children:
            child.terminate(timeout=5)


def test_connect_timeout_bounds_the_wait(keydir: KeyDir, tmp_path: Path) -> None:
    url = f"zmq://127.0.0.1:{free_port()}"
    worker = Child("worker", ["worker", "--bus", url, "--keys", str(keydir.path), "--id",
                              "worker-1", "--policy", "noop", "--connect-timeout", "2"],
                   tmp_path).start()
    try:
        assert worker.wait(timeout=60) == 2
        err = worker.stderr_tail()
        assert f"no bus at {url}" in err
        assert "vlabus hub --bind" in err  # says what to start
    finally:
        worker.terminate(timeout=5)


def test_a_refused_connection_is_named_and_not_waited_for(mosquitto: LocalMosquitto,
                                                          keydir: KeyDir,
                                                          tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    worker = Child("worker", ["worker", "--bus", mosquitto.url, "--keys", str(keydir.path),
                              "--id", "worker-1", "--policy", "noop", "--username", "worker-1",
                              "--password-file", str(wrong)], tmp_path).start()
    try:
        assert worker.wait(timeout=60) == 2
        err = worker.stderr_tail()
        # Mosquitto 2.0 answers a wrong password with 0x87
        assert "refused the connection: 0x87 Not authorized" in err
        assert "check --broker-config" in err  # what to do
    finally:
        worker.terminate(timeout=5)
