"""A simulated fleet for federated rounds: robots whose buffers hold what the cloud answered,
a held-out recording, a real coordinator and real round clients on one bus.

Each robot drives a :class:`~edge_agent.sim.SimRobot` (its own scene and command) with the
cloud policy's actions, as a robot whose cloud answers every step on time would; three steps
in four go into its experience buffer, the fourth into the held-out recording (signed frames
and signed actions, as ``vlabus record`` writes them). The robots run the real agent stack
(:func:`~edge_agent.stack.open_edge`: model updates installed by its updater) and a
:class:`~edge_agent.fl.client.RoundClient` each; the coordinator is
:class:`~cloud_workers.fl.coordinator.Coordinator`. Used by ``bench.fl`` and the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from cloud_workers.fl.coordinator import Coordinator, CoordinatorConfig, RoundReport
from edge_agent.agent import AgentConfig, EdgeAgent
from edge_agent.fl.attach import Federated, federated
from edge_agent.fl.buffer import ExperienceBuffer
from edge_agent.fl.client import ClientConfig, RoundClient
from edge_agent.fl.personal import personal_loader
from edge_agent.frames import frame_of
from edge_agent.sim import SimRobot
from edge_agent.stack import LocalModel, open_edge
from edge_agent.store import ModelStore
from schemas.arrays import pack_array
from schemas.messages import Action
from schemas.topics import action_topic, frame_topic
from security.keys import Keyring, Signer, add_key, load_signer
from vlabus.bus.transport import TransportOptions, open_transport
from vlabus.log.evaluate import evaluate
from vlabus.log.record import Recorder
from vlabus.policy import Observation
from vlabus.policy.reference import ReferencePolicy
from vlabus.wire import Encoder

MODEL = "edge"


@dataclass
class FleetSpec:
    robots: int = 4
    steps: int = 256  # simulated steps per robot (3/4 buffered, 1/4 held out)
    ring: int = 64  # distinct camera frames per robot
    size: int = 96  # camera frames are size x size
    seed: int = 0
    cloud_width: int = 64
    local_width: int = 16


def robot_ids(count: int) -> list[str]:
    return [f"robot-{i}" for i in range(count)]


def make_keys(root: Path, robots: int) -> Path:
    """A keyring with ``robots`` robots, a worker (the cloud) and the release key."""
    keys = root / "keys"
    for ident in robot_ids(robots):
        add_key(keys, "robot", ident)
    add_key(keys, "worker", "worker-1")
    add_key(keys, "release", "release")
    return keys


def base_weights(spec: FleetSpec, path: Path) -> bytes:
    """The robots' starting local policy (the seeded one ``vlabus edge`` builds)."""
    model = LocalModel(name=MODEL, width=spec.local_width)
    policy = ReferencePolicy.seeded(device="cpu", width=model.width, horizon=model.horizon,
                                    action_dim=model.action_dim, state_dim=model.state_dim,
                                    cameras=model.cameras, name=model.name)
    return policy.save_safetensors(path).read_bytes()


def simulate_data(spec: FleetSpec, root: Path, keys: Path) -> Path:
    """Fill every robot's buffer (``root/ROBOT/fl/buffer``) and write the held-out recording
    (returned)."""
    cloud = ReferencePolicy.seeded(device="cpu", width=spec.cloud_width, seed=1000)
    worker = Encoder(load_signer(keys, "worker", "worker-1"))
    heldout = root / "heldout.mcap"
    recorder = Recorder(heldout, metadata={"purpose": "federated held-out steps"})
    try:
        for index, robot_id in enumerate(robot_ids(spec.robots)):
            robot = SimRobot(size=spec.size, ring=spec.ring, seed=spec.seed * 101 + index)
            encoder = Encoder(load_signer(keys, "robot", robot_id))
            buffer = ExperienceBuffer(root / robot_id / "fl" / "buffer", segment=64)
            for step in range(spec.steps):
                obs = robot.observe(step)
                chunk = cloud.infer([obs])[0]
                robot.apply(chunk[0])
                if step % 4 == 3:
                    _record_pair(recorder, encoder, worker, robot_id, step, obs, chunk)
                else:
                    buffer.add(obs, chunk)
            buffer.close()
    finally:
        recorder.close()
    return heldout


def _record_pair(recorder: Recorder, robot: Encoder, worker: Encoder, robot_id: str,
                 step: int, obs: Observation, chunk: np.ndarray[Any, Any]) -> None:
    corr = f"heldout-{robot_id}-{step}"
    now = time.time_ns()
    frame = frame_of(obs, robot_id=robot_id, step=step, capture_ns=now, model="default")
    recorder.write(frame_topic(robot_id), robot.encode(frame, corr=corr), now)
    action = Action(robot_id=robot_id, step=step, actions=pack_array(chunk.astype(np.float32)),
                    model="default", model_version=0, worker_id="worker-1")
    recorder.write(action_topic(robot_id), worker.encode(action, corr=corr), now)


class MaliciousClient(RoundClient):
    """A robot with a valid key that trains like the others, then sends, round after round,
    one of: its delta scaled x100, sign-flipped, with NaN, claimed on a wrong base, or last
    round's signed envelopes again (``modes``, in turn)."""

    modes: tuple[str, ...] = ("scaled", "sign_flip", "nan", "wrong_base", "replay")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._previous: list[bytes] = []

    def updates(self, announced: Any, result: Any) -> list[bytes]:
        mode = self.modes[announced.round % len(self.modes)]
        delta = result.delta
        if mode == "replay" and self._previous:
            return self._previous
        if mode == "scaled":
            delta = {k: 100 * v for k, v in delta.items()}
        elif mode == "sign_flip":
            delta = {k: -v for k, v in delta.items()}
        elif mode == "nan":
            delta = {k: np.full_like(v, np.nan) for k, v in delta.items()}
        elif mode == "wrong_base":
            announced = msgspec.structs.replace(announced, base_sha256="0" * 64)
        self._previous = super().updates(announced, dataclasses.replace(result, delta=delta))
        return self._previous


def robot_errors(heldout: Path, keys: Path, root: Path, robots: list[str]) -> dict[str, float]:
    """Each robot's installed local policy (its personal tensors laid over) scored on its own
    held-out steps: mean absolute error against the cloud's actions."""
    ring = Keyring.load(keys)
    errors = {}
    for robot_id in robots:
        active = ModelStore(root / robot_id / "models").active(MODEL)
        if active is None:
            raise RuntimeError(f"{robot_id} has no installed model")
        policy = personal_loader(root / robot_id / "fl")(active.path)
        result = evaluate(heldout, policy, keyring=ring)
        errors[robot_id] = float(result.robots[robot_id].as_dict()["mean_abs_error"])
    return errors


@dataclass
class FleetRun:
    reports: list[RoundReport] = field(default_factory=list)
    errors: list[dict[str, float]] = field(default_factory=list)  # per round, round 0 first
    clients: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)


Attack = Callable[[str, Any], Any]


async def run_fleet(spec: FleetSpec, root: Path, config: CoordinatorConfig, *, bus: str,
                    executor: Executor, budget_epsilon: float = 8.0,
                    options: Callable[[str], TransportOptions] | None = None,
                    malicious: tuple[str, ...] = (), score: str = "each") -> FleetRun:
    """Rounds over ``bus`` with every robot of ``spec`` answering; the ``malicious`` ones run
    :class:`MaliciousClient`. Honest robots' errors are scored before the first round and
    after each (``score="each"``), after the last only (``"ends"``) or never (``"none"``)."""
    keys = root / "keys"
    heldout = root / "heldout.mcap"
    ring = Keyring.load(keys)
    robots = robot_ids(spec.robots)
    honest = [r for r in robots if r not in malicious]
    opts = options or (lambda client: TransportOptions(client_id=client))
    run = FleetRun()
    agents: list[EdgeAgent] = []
    joined: list[Federated] = []
    coordinator_transport = await open_transport(bus, opts("release"))
    coordinator = Coordinator(coordinator_transport, Encoder(load_signer(keys, "release",
                                                                         "release")),
                              ring, config, base=base_weights(spec, root / "base.safetensors"),
                              base_version=1)
    async with contextlib.AsyncExitStack() as stack:
        for robot_id in robots:
            signer: Signer = load_signer(keys, "robot", robot_id)
            probe = SimRobot(size=spec.size, ring=1, seed=0).observe(0)
            model = LocalModel(name=MODEL, width=spec.local_width,
                               models_dir=root / robot_id / "models",
                               personal_dir=root / robot_id / "fl")
            agent = await open_edge(bus, keys=ring, signer=signer,
                                    config=AgentConfig(robot_id=robot_id), probe=probe,
                                    model=model, options=opts(robot_id))
            agents.append(agent)
            stack.push_async_callback(_close_agent, agent)
            joined.append(await stack.enter_async_context(federated(
                agent, ring, ClientConfig(
                    robot_id=robot_id, model=MODEL, models_dir=root / robot_id / "models",
                    state_dir=root / robot_id / "fl", budget_epsilon=budget_epsilon,
                    cpu_share=1.0, seed=spec.seed),
                executor=executor,
                client_class=MaliciousClient if robot_id in malicious else RoundClient)))
        stack.push_async_callback(_close_coordinator, coordinator)
        await coordinator.start()
        await _installed(root, robots, 1)
        if score != "none":
            run.errors.append(robot_errors(heldout, keys, root, honest))
        for number in range(config.rounds):
            report = await coordinator.run_round(number)
            run.reports.append(report)
            if report.released:
                await _installed(root, robots, report.version)
            last = number == config.rounds - 1
            if score == "each" or (score == "ends" and last):
                run.errors.append(robot_errors(heldout, keys, root, honest))
        run.refused = coordinator.refused()
        for handle in joined:
            run.clients[handle.client.config.robot_id] = handle.client.stats.summary()
    return run


async def _close_agent(agent: EdgeAgent) -> None:
    await agent.close()
    await agent.transport.close()


async def _close_coordinator(coordinator: Coordinator) -> None:
    await coordinator.close()
    await coordinator.transport.close()


async def _installed(root: Path, robots: list[str], version: int, timeout_s: float = 60) -> None:
    """Wait until every robot's store has ``version`` active (installed by its updater)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        active = [ModelStore(root / r / "models").active(MODEL) for r in robots]
        if all(a is not None and a.version >= version for a in active):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"release v{version} not installed on every robot in {timeout_s} s")
