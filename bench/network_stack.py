"""The fleet of ``bench.network`` on the two-namespace testbed (``tests/support/netbed.py``).

cloud ns: the ZeroMQ hub (``hub``) or the fleet Mosquitto (``bridge``), and one ``vlabus
worker`` serving :func:`cloud_policy`; site ns: the robots, which reach the cloud over the
shaped veth link directly (``hub``) or through a site Mosquitto bridged to the cloud's
(``bridge``, rendered by :func:`vlabus.broker.site.render_site`). The robots run in the calling
process (see :func:`run_robots`) so each step's action and observation can be compared with the
policy's answer on the raw images afterwards.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.agent import ActionResult, AgentConfig, EdgeAgent
from edge_agent.sim import SimRobot, summarize
from edge_agent.stack import LocalModel, load_identity, open_edge
from security.keys import add_key
from tests.support.netbed import CLOUD_IP, NetBed
from vlabus.broker.local import LocalMosquitto
from vlabus.broker.render import Limits, client_options, render
from vlabus.broker.site import render_site
from vlabus.bus.transport import TransportOptions
from vlabus.policy import Observation, Policy

CAMERAS = ("front", "wrist")
HUB_PORT = 5555
MQTT_PORT = 8883


class PixelProbePolicy:
    """The bench's cloud policy: actions read from the pixels, so what a codec does to the
    images shows in the actions.

    The seeded reference VLA barely looks at its cameras (its actions move by ~1e-3 of their
    size from one frame to the next, and JPEG at any quality moves them by a tenth of that, in
    no order), so it cannot tell codecs apart. This policy is a fixed random readout
    (seed 0) of what a visual policy uses: per camera, on a 16x16 grid of 14x14-pixel blocks,
    the mean brightness and the horizontal and vertical detail (mean absolute gradient), plus
    the state; ``tanh`` of their projection is the 16x7 chunk. Blur, blocking and lost
    resolution change it in proportion.
    """

    name = "pixel-probe"
    version = 0
    horizon, action_dim, grid = 16, 7, 16

    def __init__(self, cameras: tuple[str, ...] = CAMERAS, state_dim: int = 14) -> None:
        rng = np.random.default_rng(0)
        features = len(cameras) * 3 * self.grid * self.grid + state_dim
        self.cameras = cameras
        self.weights = (rng.standard_normal((features, self.horizon * self.action_dim))
                        / np.sqrt(features)).astype(np.float32)

    def _features(self, image: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        gray = np.asarray(image, np.float32).mean(axis=2)
        height, width = gray.shape
        block = height // self.grid, width // self.grid
        gray = gray[:block[0] * self.grid, :block[1] * self.grid]
        dx = np.abs(np.diff(gray, axis=1, append=gray[:, -1:]))
        dy = np.abs(np.diff(gray, axis=0, append=gray[-1:, :]))
        out = []
        for plane, scale in ((gray, 255.0), (dx, 32.0), (dy, 32.0)):
            pooled = plane.reshape(self.grid, block[0], self.grid, block[1]).mean(axis=(1, 3))
            out.append(pooled.ravel() / scale)
        features: npt.NDArray[np.float32] = np.concatenate(out).astype(np.float32)
        return features

    def infer(self, batch: Sequence[Observation]) -> npt.NDArray[np.float32]:
        rows = []
        for obs in batch:
            parts = [self._features(obs.images[name]) for name in self.cameras]
            parts.append(np.asarray(obs.state, np.float32).ravel())
            rows.append(np.concatenate(parts))
        out: npt.NDArray[np.float32] = np.tanh(np.stack(rows) @ self.weights).astype(np.float32)
        return out.reshape(len(batch), self.horizon, self.action_dim)


def cloud_policy() -> Policy:
    """The worker's policy in the bench (see :class:`PixelProbePolicy`)."""
    return PixelProbePolicy()


def make_keys(folder: Path, robots: int) -> list[str]:
    """A keyring with ``robots`` robots and one worker; the robot ids."""
    ids = [f"robot-{i + 1}" for i in range(robots)]
    for robot in ids:
        add_key(folder, "robot", robot)
    add_key(folder, "worker", "worker-1")
    return ids


def _wait_port(bed: NetBed, host: str, address: tuple[str, int], proc: Any,
               timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with bed.inside(host):
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{proc.args[3]} exited with {proc.returncode}")
            try:
                socket.create_connection(address, timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)  # the process is starting; polling its port
    raise RuntimeError(f"nothing listens on {address} after {timeout} s")


@dataclass
class CloudStack:
    """Brokers (or the hub) and the worker for one bus kind; ``close`` stops everything."""

    bed: NetBed
    bus: str  # "hub" or "bridge"
    keys: Path
    workdir: Path
    robots: list[str]
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _brokers: list[LocalMosquitto] = field(default_factory=list)

    def start(self) -> None:
        if self.bus == "hub":
            hub = self._spawn("cloud", "hub.log", ["hub", "--bind",
                                                   f"tcp://{CLOUD_IP}:{HUB_PORT}"])
            _wait_port(self.bed, "cloud", (CLOUD_IP, HUB_PORT), hub)
            worker_bus = ["--bus", f"zmq://{CLOUD_IP}:{HUB_PORT}"]
        else:
            cloud_dir, site_dir = self.workdir / "cloud", self.workdir / "site"
            render(self.keys, cloud_dir, tls=True, bind=CLOUD_IP, port=MQTT_PORT,
                   limits=Limits(persistence=False, max_queued_messages=1000))
            render_site(self.keys, site_dir, site="bench", robots=self.robots,
                        uplink=f"mqtts://{CLOUD_IP}:{MQTT_PORT}", cloud=cloud_dir,
                        port=MQTT_PORT)
            for host, folder in (("cloud", cloud_dir), ("site", site_dir)):
                broker = LocalMosquitto(folder, MQTT_PORT)
                with self.bed.inside(host):
                    broker.start()
                self._brokers.append(broker)
            worker_bus = ["--bus", f"mqtts://{CLOUD_IP}:{MQTT_PORT}", "--broker-config",
                          str(cloud_dir)]
        worker = self._spawn("cloud", "worker.log", [
            "worker", *worker_bus, "--keys", str(self.keys), "--id", "worker-1",
            "--policy", "bench.network_stack:cloud_policy", "--threads", "1"])
        log = self.workdir / "worker.log"
        deadline = time.monotonic() + 120
        while b'"event": "ready"' not in log.read_bytes():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)  # waiting for the worker's own ready line

    def reset(self) -> None:
        """Start each run clean. A Mosquitto bridge sends what it has queued for the cloud
        however old it is (QoS 0 included, expired or not), so after a run that saturated the
        uplink the site broker holds seconds of stale frames: restart it, and wait until the
        bridge is connected again. The hub needs nothing: a robot's queue goes with it."""
        if self.bus != "bridge":
            return
        cloud, site = self._brokers
        log = cloud.config_dir / "mosquitto.log"
        before = log.read_text(errors="replace").count("as site-bench")
        with self.bed.inside("site"):
            site.restart()
        deadline = time.monotonic() + 30
        while log.read_text(errors="replace").count("as site-bench") <= before:
            if time.monotonic() > deadline:
                raise RuntimeError("the site bridge did not reconnect in 30 s")
            time.sleep(0.05)  # waiting for the cloud broker to log the bridge's connection

    def _spawn(self, host: str, log: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with self.bed.inside(host), (self.workdir / log).open("wb") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "vlabus", *argv],
                                    stdout=subprocess.DEVNULL, stderr=sink,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._procs.append(proc)
        return proc

    @property
    def robot_url(self) -> str:
        if self.bus == "hub":
            return f"zmq://{CLOUD_IP}:{HUB_PORT}"
        return f"mqtts://127.0.0.1:{MQTT_PORT}"  # the site broker

    def robot_options(self, robot: str) -> TransportOptions:
        if self.bus == "hub":
            return TransportOptions(client_id=robot)
        return client_options(self.workdir / "site", robot)

    def close(self) -> None:
        for proc in reversed(self._procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for broker in self._brokers:
            broker.stop()


@dataclass
class RobotRun:
    """What the robots of one run did: summaries, and sampled (observation, cloud action)."""

    summaries: list[dict[str, Any]]
    samples: list[tuple[Observation, Any]]
    steps: int
    cloud: int
    seconds: float
    uplink_bytes: int  # carried while the robots drove (not while they connected or closed)


async def run_robots(stack: CloudStack, *, codec: str, seconds: float, fps: float,
                     deadline_ms: float, sample_every: int = 4) -> RobotRun:
    """Drive every robot of ``stack`` at ``fps`` for ``seconds`` (call inside the site ns)."""
    agents: list[tuple[EdgeAgent, SimRobot]] = []
    try:
        for i, robot_id in enumerate(stack.robots):
            keys, signer = load_identity(stack.keys, robot_id)
            robot = SimRobot(cameras=CAMERAS, seed=i)
            config = AgentConfig(robot_id=robot_id, deadline_ns=round(deadline_ms * 1e6),
                                 period_ns=round(1e9 / fps), codec=codec)
            agent = await open_edge(stack.robot_url, keys=keys, signer=signer, config=config,
                                    probe=robot.observe(0), model=LocalModel(cameras=CAMERAS),
                                    options=stack.robot_options(robot_id))
            agents.append((agent, robot))
        samples: list[tuple[Observation, Any]] = []
        before = stack.bed.uplink_bytes()
        started = time.monotonic()
        await asyncio.gather(*(_drive(agent, robot, fps, seconds, sample_every, samples)
                               for agent, robot in agents))
        elapsed = time.monotonic() - started
        carried = stack.bed.uplink_bytes() - before
        summaries = [summarize(agent) for agent, _ in agents]
    finally:
        for agent, _ in agents:
            await agent.close()
            await agent.transport.close()
    steps = sum(s["steps"] for s in summaries)
    cloud = sum(s["actions_by_source"].get("cloud", 0) for s in summaries)
    return RobotRun(summaries, samples, steps, cloud, elapsed, carried)


async def _drive(agent: EdgeAgent, robot: SimRobot, fps: float, seconds: float,
                 sample_every: int, samples: list[tuple[Observation, Any]]) -> None:
    loop = asyncio.get_running_loop()
    period, start = 1.0 / fps, loop.time()
    for step in range(max(1, round(seconds * fps))):
        delay = start + step * period - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        observation = robot.observe(step)
        result: ActionResult = await agent.act(observation)
        if result.action is not None:
            robot.apply(result.action)
            if result.source.value == "cloud" and step % sample_every == 0:
                samples.append((observation, result.action))


def wait_idle(bed: NetBed, *, quiet_s: float = 0.5, timeout_s: float = 60.0) -> float:
    """Wait until the uplink carried nothing for ``quiet_s`` (queues of the last run drained);
    returns the seconds waited."""
    started = time.monotonic()
    last, since = bed.uplink_bytes(), time.monotonic()
    while time.monotonic() - started < timeout_s:
        time.sleep(0.1)  # sampling a counter; the link drains on its own
        now = bed.uplink_bytes()
        if now - last > 2000:  # keepalives and acks are not a backlog
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return time.monotonic() - started
