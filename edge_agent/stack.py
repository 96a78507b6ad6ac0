"""Assemble a robot's agent from a bus URL and a keyring: the one factory everything uses.

``open_edge`` connects, loads the robot's signing key and the trusted public keys, builds (or
loads from its model store) the local policy, warms it up so the hedge has a latency estimate,
subscribes to actions and model updates, and returns a started :class:`EdgeAgent`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.agent import AgentConfig, EdgeAgent
from edge_agent.blackbox import BlackBox, RecordSink
from edge_agent.feed import ModelFeed
from edge_agent.local import LocalPolicy
from edge_agent.metrics import EdgeMetrics
from edge_agent.store import MAX_VERSION_STEP, ModelStore
from edge_agent.updates import ModelUpdater
from schemas.status import status_message
from schemas.topics import robot_status_topic
from security.keys import Keyring, Signer, load_signer
from security.seal import PoolKey
from vlabus.bus.transport import Transport, TransportOptions, Will, open_transport
from vlabus.bus.wait import Opener
from vlabus.inbound import Rejections
from vlabus.policy import Observation, Policy
from vlabus.policy.reference import ReferencePolicy
from vlabus.session_link import RobotLink
from vlabus.wire import Encoder


@dataclass(frozen=True)
class LocalModel:
    """The robot's own policy: the model name it takes updates for, and its shape."""

    name: str = "edge"
    width: int = 16
    horizon: int = 16
    action_dim: int = 7
    state_dim: int = 14
    cameras: tuple[str, ...] = ("front",)
    models_dir: Path | None = None
    personal_dir: Path | None = None  # federated personal tensors laid over every release
    #: how far one release may raise the installed version (docs/hardening.md)
    max_version_step: int = MAX_VERSION_STEP


def build_local(model: LocalModel) -> tuple[Policy, int]:
    """The installed release from the model store when there is one, else seeded weights."""
    if model.models_dir is not None:
        installed = ModelStore(model.models_dir).active(model.name)
        if installed is not None:
            return loader_for(model)(installed.path), installed.version
    policy = ReferencePolicy.seeded(device="cpu", width=model.width, horizon=model.horizon,
                                    action_dim=model.action_dim, state_dim=model.state_dim,
                                    cameras=model.cameras, name=model.name)
    return policy, 0


def load_reference(path: Path) -> Policy:
    return ReferencePolicy.load_safetensors(path, device="cpu")


def loader_for(model: LocalModel) -> Callable[[Path], Policy]:
    """How releases of ``model`` are loaded: with its personal tensors when it has any."""
    if model.personal_dir is None:
        return load_reference
    from edge_agent.fl.personal import personal_loader

    return personal_loader(model.personal_dir)


async def open_edge(bus_url: str, *, keys: Keyring, signer: Signer, config: AgentConfig,
                    probe: Observation, model: LocalModel | None = None,
                    metrics: EdgeMetrics | None = None, recorder: RecordSink | None = None,
                    transport: Transport | None = None,
                    options: TransportOptions | None = None,
                    opener: Opener = open_transport,
                    local: LocalPolicy | None = None,
                    session_pool: PoolKey | None = None) -> EdgeAgent:
    """A started agent for ``config.robot_id`` on ``bus_url`` (or on ``transport`` if given;
    ``options`` carry credentials; the default client id is the robot id). ``opener`` opens
    the bus (``vlabus edge`` passes one that does not wait for a bus that is down). ``local``:
    an already warmed local policy to use (simulated fleets share one) instead of building
    one. ``session_pool``: send frames in session integrity to that worker pool
    (docs/security-session.md)."""
    model = model or LocalModel()
    metrics = metrics or EdgeMetrics()
    config = dataclasses.replace(config, local_model=model.name)
    if local is None:
        policy, version = build_local(model)
        local = LocalPolicy(policy, version)
        local.warm_up(probe)
    version = local.version
    encoder = Encoder(signer)
    session = time.time_ns() // 1000
    if transport is None:
        # The broker (or hub) announces the robot's death if it vanishes without closing.
        will = Will(robot_status_topic(config.robot_id), encoder.encode(status_message(
            config.robot_id, "robot", "offline", session=session,
            models={model.name: version})), qos=1, retain=True)
        base = options or TransportOptions(client_id=config.robot_id)
        transport = await opener(bus_url, dataclasses.replace(base, will=will))
    rejections = Rejections(metrics.on_reject)
    feed = None
    if model.models_dir is not None:
        assert local.shape is not None  # set by warm_up
        store = ModelStore(model.models_dir)
        active = store.active(model.name)
        updater = ModelUpdater(store, model.name, installed=version,
                               loader=loader_for(model), probe=probe, shape=local.shape,
                               epoch=0 if active is None else active.epoch,
                               max_version_step=model.max_version_step)
        feed = ModelFeed(updater, local, keys, metrics=metrics, rejections=rejections)
    blackbox = None if recorder is None else BlackBox(recorder, config.robot_id)
    link = None if session_pool is None else RobotLink(transport, signer, session_pool, keys)
    agent = EdgeAgent(transport, encoder if link is None else link.encoder, keys, local, config,
                      metrics=metrics, session=session, feed=feed, blackbox=blackbox,
                      rejections=rejections)
    if link is not None:  # session integrity: the first frame's encode schedules the offer
        agent.inbox.use_sessions(link.verifier, link.refused)  # (never waits for a bus)
    agent.cameras.prepare(probe.images)
    await agent.start()
    await agent.announce("online")
    return agent


def load_identity(keys_dir: str | Path, robot_id: str) -> tuple[Keyring, Signer]:
    """The trusted public keys in ``keys_dir`` and the robot's own signing key."""
    return Keyring.load(keys_dir), load_signer(keys_dir, "robot", robot_id)
