"""Replaying a recording into a real worker: verbatim is rejected, restamped is served only in
replay mode."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from cloud_workers.metrics import WorkerMetrics
from cloud_workers.runner import PolicyRunner
from cloud_workers.tasks import default_handlers
from cloud_workers.worker import Worker, WorkerConfig, open_worker
from schemas.messages import Action
from tests.support.keys import KeyDir
from tests.support.logs import write_log
from vlabus.bus.memory import reset_memory
from vlabus.bus.transport import TransportOptions, open_transport
from vlabus.log.replay import Replayer, Restamper
from vlabus.policy.reference import NoopPolicy
from vlabus.wire import Decoder


async def replay_into_worker(url: str, keydir: KeyDir, path: Path, *, replay_mode: bool,
                             restamp: bool, frames: int) -> tuple[Worker, list[Action]]:
    runner = PolicyRunner({"default": NoopPolicy(horizon=4, action_dim=7)}, default_handlers({}))
    runner.handlers = default_handlers(runner.models)
    config = WorkerConfig(worker_id="worker-2", group="pool", max_delay_ns=1_000_000,
                          replay_mode=replay_mode)
    worker = await open_worker(url, keydir.signers["worker-2"], keydir.ring, runner,
                               config=config, metrics=WorkerMetrics())
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(worker.ready.wait(), 30)
    robot = await open_transport(url, TransportOptions(client_id="robot-a"))
    await robot.subscribe("vla/v1/+/action")
    player = await open_transport(url, TransportOptions(client_id="player"))
    restamper = Restamper(keydir.signers["replay"], keyring=keydir.ring) if restamp else None
    await Replayer(player, path, rate=20.0, topics=["vla/v1/+/frame"],
                   restamper=restamper).run()
    actions: list[Action] = []
    decoder = Decoder(keydir.ring)

    async def settle() -> None:
        # Every frame ends as an action or a rejection; wait for that, not for a while.
        while len(actions) + worker.rejections.total < frames:
            message = await robot.receive()
            received = decoder.decode(message.payload)
            assert isinstance(received.message, Action)
            actions.append(received.message)

    async def count_rejections() -> None:
        while worker.rejections.total < frames:
            await asyncio.sleep(0.005)

    if restamp and replay_mode:
        await asyncio.wait_for(settle(), 20)
    else:
        await asyncio.wait_for(count_rejections(), 20)
    stop.set()
    await asyncio.wait_for(task, 30)
    await robot.close()
    await player.close()
    return worker, actions


def run_case(keydir: KeyDir, tmp_path: Path, **kw: bool) -> tuple[Worker, list[Action], int]:
    path = tmp_path / "log.mcap"
    written = write_log(path, keydir.signers, steps=4, start_ns=time.time_ns() - 60_000_000_000)
    frames = sum(1 for topic, _w, _l in written if topic.endswith("/frame"))
    url = f"memory://{uuid.uuid4().hex}"
    try:
        worker, actions = asyncio.run(replay_into_worker(url, keydir, path, frames=frames, **kw))
    finally:
        reset_memory(url.removeprefix("memory://"))
    return worker, actions, frames


def test_verbatim_replay_is_rejected_even_in_replay_mode(keydir: KeyDir, tmp_path: Path) -> None:
    worker, actions, frames = run_case(keydir, tmp_path, replay_mode=True, restamp=False)
    assert actions == []
    assert dict(worker.rejections.by_reason) == {"stale": frames}


def test_restamped_replay_is_rejected_by_a_normal_worker(keydir: KeyDir, tmp_path: Path) -> None:
    worker, actions, frames = run_case(keydir, tmp_path, replay_mode=False, restamp=True)
    assert actions == []
    assert dict(worker.rejections.by_reason) == {"identity_mismatch": frames}


def test_restamped_replay_is_served_in_replay_mode(keydir: KeyDir, tmp_path: Path) -> None:
    worker, actions, frames = run_case(keydir, tmp_path, replay_mode=True, restamp=True)
    assert worker.rejections.total == 0
    assert len(actions) == frames
    assert {(a.robot_id, a.worker_id) for a in actions} == {("robot-a", "worker-2"),
                                                            ("robot-b", "worker-2")}
    assert sorted(a.step for a in actions if a.robot_id == "robot-a") == [0, 1, 2, 3]
