"""A simulated robot: tabletop camera frames, a command and a joint state at a fixed rate.

The robot integrates each action into its state, so a run exercises the whole loop. Camera
frames come from :class:`~edge_agent.scene.TabletopScene`, rendered once per distinct frame
into a ring (rendering costs ~3.5 ms per 224x224 frame here, which would otherwise compete with
the loop being measured).

``run_sim_robot(...)`` is the library entry point (``vlabus edge --sim`` and ``vlabus demo``
call it) and returns the run's summary dict.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.agent import ActionResult, AgentConfig, EdgeAgent
from edge_agent.metrics import EdgeMetrics
from edge_agent.scene import TabletopScene
from edge_agent.stack import LocalModel, load_identity, open_edge
from schemas.topics import checkpoint_topic
from security.keys import load_pool_key
from vlabus.bus.transport import TransportOptions, open_transport
from vlabus.bus.wait import Opener
from vlabus.policy import Observation
from vlabus.session_link import final_checkpoints

COMMANDS = ("pick up the red block", "put the cup on the plate", "open the drawer")


class SimRobot:
    """Observations and state of one simulated arm; deterministic for a seed."""

    def __init__(self, *, cameras: tuple[str, ...] = ("front",), state_dim: int = 14,
                 size: int = 224, ring: int = 16, seed: int = 0,
                 frames: list[list[npt.NDArray[np.uint8]]] | None = None) -> None:
        """``frames`` (one ring per camera) shares already rendered images between robots."""
        self.cameras = cameras
        if frames is None:
            scenes = [TabletopScene(size, size, seed=seed + i) for i in range(len(cameras))]
            frames = [[scene.render(k) for k in range(ring)] for scene in scenes]
        self._frames = frames
        self._rng = np.random.default_rng(seed)
        self.state = np.zeros(state_dim, np.float32)
        self.command = COMMANDS[seed % len(COMMANDS)]
        self.applied = 0

    @property
    def frames(self) -> list[list[npt.NDArray[np.uint8]]]:
        """The rendered images, one ring per camera (shareable with other robots)."""
        return self._frames

    def observe(self, step: int) -> Observation:
        ring = len(self._frames[0])
        images = {name: frames[step % ring] for name, frames in zip(self.cameras, self._frames,
                                                                    strict=True)}
        noise = self._rng.normal(0.0, 1e-3, self.state.shape).astype(np.float32)
        return Observation(images=images, command=self.command, state=self.state + noise)

    def apply(self, action: npt.NDArray[np.float32]) -> None:
        """Move the joints a little along the commanded action (bounded)."""
        joints = min(len(action), len(self.state))
        self.state[:joints] = np.clip(self.state[:joints] + 0.05 * action[:joints], -3.0, 3.0)
        self.applied += 1


async def drive(agent: EdgeAgent, robot: SimRobot, *, fps: float, seconds: float | None,
                safety_every: int = 0, stop: asyncio.Event | None = None,
                on_step: Any = None,
                transform: Callable[[Observation], Observation] | None = None) -> int:
    """Run the control loop at ``fps`` for ``seconds`` (None: until ``stop`` is set); returns
    the number of overruns (steps that started after their tick because the previous one took
    longer than a period). ``transform`` changes each observation before the agent sees it."""
    period = 1.0 / fps
    loop = asyncio.get_running_loop()
    start = loop.time()
    steps = itertools.count() if seconds is None else range(max(1, round(seconds * fps)))
    overruns = 0
    for step in steps:
        if stop is not None and stop.is_set():
            break
        tick = start + step * period
        delay = tick - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -period / 2:
            overruns += 1
        critical = safety_every > 0 and step % safety_every == safety_every - 1
        observation = robot.observe(step)
        if transform is not None:  # anonymisation: before the frame is encoded or kept
            observation = transform(observation)
        result: ActionResult = await agent.act(observation, safety_critical=critical)
        if result.action is not None:
            robot.apply(result.action)
        if on_step is not None:
            on_step(result)
    return overruns


async def run_sim_robot(  # noqa: PLR0917 - the positional form `vlabus demo` calls
        bus_url: str, keys_dir: str | Path, robot_id: str, fps: float, deadline_ms: float,
        seconds: float | None, *, chunk: int = 1, refill_below: int | None = None,
        model: LocalModel | None = None, metrics: EdgeMetrics | None = None,
        recorder: Any = None, safety_every: int = 0, stop: asyncio.Event | None = None,
        codec: str = "auto", seed: int = 0,
        options: TransportOptions | None = None, opener: Opener = open_transport,
        on_agent: Callable[[EdgeAgent], None] | None = None,
        transform: Callable[[Observation], Observation] | None = None,
        attach: Callable[[EdgeAgent], contextlib.AbstractAsyncContextManager[Any]] | None = None,
        session_pool: str | None = None,
) -> dict[str, Any]:
    """Run one simulated robot against the bus and return its summary (see ``RunStats``).
    ``seconds`` None runs until ``stop`` is set; ``on_agent`` sees the agent once it exists
    (status lines); ``opener`` opens the bus (see :func:`~edge_agent.stack.open_edge`);
    ``transform`` anonymises observations; ``attach(agent)`` is entered around the run
    (federated rounds); ``session_pool`` sends in session integrity to that worker pool."""
    model = model or LocalModel()
    keys, signer = load_identity(keys_dir, robot_id)
    robot = SimRobot(cameras=model.cameras, state_dim=model.state_dim, seed=seed)
    period_ns = round(1e9 / fps)
    config = AgentConfig(robot_id=robot_id, deadline_ns=round(deadline_ms * 1e6), chunk=chunk,
                         refill_below=(chunk // 2 if refill_below is None else refill_below),
                         period_ns=period_ns, codec=codec)
    agent = await open_edge(bus_url, keys=keys, signer=signer, config=config,
                            probe=robot.observe(0), model=model, metrics=metrics,
                            recorder=recorder, options=options, opener=opener,
                            session_pool=None if session_pool is None else
                            load_pool_key(keys_dir, session_pool))
    if on_agent is not None:
        on_agent(agent)
    ticker = asyncio.create_task(_tick_recorder(recorder)) if recorder is not None else None
    started = time.monotonic()
    try:
        async with attach(agent) if attach is not None else contextlib.nullcontext():
            overruns = await drive(agent, robot, fps=fps, seconds=seconds,
                                   safety_every=safety_every, stop=stop, transform=transform)
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        await final_checkpoints(agent.transport, agent.encoder,
                                checkpoint_topic(agent.config.robot_id))
        await agent.close()
        with contextlib.suppress(Exception):
            await agent.transport.close()
    return summarize(agent, overruns=overruns, seconds=time.monotonic() - started)


def summarize(agent: EdgeAgent, **extra: Any) -> dict[str, Any]:
    """The ``--json`` summary of one agent's run."""
    feed = agent.feed
    return agent.stats.summary(
        dict(agent.rejections.by_reason),
        robot_id=agent.config.robot_id,
        model_version=agent.local.version,
        model_updates=feed.counters()["model_updates"] if feed else {},
        model_download=feed.counters()["model_download"] if feed else None,
        breaker={"open": agent.breaker.open, "opened": agent.breaker.opened,
                 "closed": agent.breaker.closed},
        timer_slack_ms=round(agent.slack.for_deadline(agent.config.deadline_ns) / 1e6, 4),
        local_inference_ms={"p50": round(agent.local.latency.quantile(0.5) / 1e6, 4),
                            "p99": round(agent.local.latency.quantile(0.99) / 1e6, 4)},
        codec=agent.cameras.summary(),
        transport=agent.transport.counters(),  # outbox, drops, reconnects, takeovers
        **extra,
    )


async def _tick_recorder(recorder: Any) -> None:
    while True:
        await asyncio.sleep(0.25)
        recorder.tick()
