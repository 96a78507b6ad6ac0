"""Cheap frame models run on the worker's event loop; slow or unmeasured ones on its thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from schemas import topics
from schemas.messages import Action
from tests.support.frames import make_frame
from tests.support.keys import KeyDir
from tests.support.robot import Robot
from tests.support.worker import run_on_memory, serving
from vlabus.policy import Observation
from vlabus.policy.reference import NoopPolicy


class ThreadRecorder(NoopPolicy):
    """A no-op that records which thread ran each call, optionally taking ``cost_s``."""

    def __init__(self, cost_s: float = 0.0) -> None:
        super().__init__(horizon=2, action_dim=3)
        self.cost_s = cost_s
        self.threads: list[str] = []

    def infer(self, batch: Sequence[Observation]) -> npt.NDArray[np.float32]:
        self.threads.append(threading.current_thread().name)
        if self.cost_s:
            time.sleep(self.cost_s)  # stands in for a model's compute time
        return super().infer(batch)


def served_threads(keydir: KeyDir, policy: ThreadRecorder, **cfg: int) -> list[str]:
    async def body(url: str) -> None:
        async with serving(url, keydir, {"m": policy}, **cfg):  # type: ignore[arg-type]
            robot = await Robot.connect(url, keydir.signers["robot-a"], keydir.ring)
            for step in range(4):
                await robot.send_frame(make_frame("robot-a", step), f"c{step}")
                await robot.wait_for(step + 1)  # one at a time: each is its own batch
            await robot.close()
    run_on_memory(body)
    return policy.threads[-4:]  # the served frames, after warm-up


def test_cheap_policy_runs_on_the_event_loop(keydir: KeyDir) -> None:
    threads = served_threads(keydir, ThreadRecorder())
    assert threads == [threading.main_thread().name] * 4


def test_slow_policy_runs_on_the_inference_thread(keydir: KeyDir) -> None:
    threads = served_threads(keydir, ThreadRecorder(cost_s=0.002))
    assert all(name.startswith("inference") for name in threads)


def test_inline_can_be_disabled(keydir: KeyDir) -> None:
    threads = served_threads(keydir, ThreadRecorder(), inline_below_ns=0)
    assert all(name.startswith("inference") for name in threads)


class BatchRecorder(ThreadRecorder):
    """Records the size of every batch it is given."""

    def __init__(self, cost_s: float) -> None:
        super().__init__(cost_s)
        self.sizes: list[int] = []

    def infer(self, batch: Sequence[Observation]) -> npt.NDArray[np.float32]:
        self.sizes.append(len(batch))
        return super().infer(batch)


def test_a_backlog_does_not_keep_the_model_waiting_until_all_of_it_is_decoded(
        keydir: KeyDir) -> None:
    """Frames that arrive together are handed over without a suspension; the receive loop
    yields after each one, so the first batch starts at once instead of after the backlog."""
    policy = BatchRecorder(cost_s=0.002)
    sent = 24

    async def body(url: str) -> None:
        async with serving(url, keydir, {"m": policy}, max_batch=32, max_delay_ns=0):
            policy.sizes.clear()  # forget the warm-up
            robot = await Robot.connect(url, keydir.signers["robot-a"], keydir.ring)
            for step in range(sent):  # memory:// delivers each into the worker's inbox at once
                await robot.send_frame(make_frame("robot-a", step), f"c{step}")
            await robot.wait_for(sent)
            await robot.close()

    run_on_memory(body)
    assert sum(policy.sizes) == sent
    assert policy.sizes[0] == 1  # without the yield: all 24 in the first batch
    assert max(policy.sizes[1:]) > 1  # the rest queued, and batched, while the first ran


def answered_inside_publish(keydir: KeyDir, **cfg: int) -> bool:
    """Whether the worker's Action is already in the robot's inbox when the robot's publish of
    the frame returns. memory:// delivers inside ``publish_nowait``, so that is true only when
    the worker answered from its receive callback, with none of its tasks running between."""
    policy = ThreadRecorder()
    inside = False

    async def body(url: str) -> None:
        nonlocal inside
        settings: dict[str, object] = {"max_delay_ns": 0, **cfg}
        async with serving(url, keydir, {"m": policy}, **settings):  # type: ignore[arg-type]
            robot = await Robot.connect(url, keydir.signers["robot-a"], keydir.ring)
            await robot.send_frame(make_frame("robot-a", 0), "c0")
            await robot.wait_for(1)  # the model is measured now: cheap, so it runs inline
            before = robot.transport.counters()["received"]
            wire = robot.encoder.encode(make_frame("robot-a", 1),
                                        deadline_ns=time.time_ns() + 10**9, corr="c1")
            robot.transport.publish_nowait(topics.frame_topic("robot-a"), wire)
            inside = robot.transport.counters()["received"] == before + 1
            await robot.wait_for(2)
            reply = robot.replies["c1"]
            assert isinstance(reply, Action)
            assert reply.step == 1
            await robot.close()

    run_on_memory(body)
    return inside


def test_an_idle_worker_answers_from_the_receive_callback(keydir: KeyDir) -> None:
    assert answered_inside_publish(keydir)


def test_a_model_on_the_inference_thread_is_answered_by_the_serving_loop(
        keydir: KeyDir) -> None:
    assert not answered_inside_publish(keydir, inline_below_ns=0)


def test_a_batching_worker_waits_for_company_instead(keydir: KeyDir) -> None:
    """With a batching delay the direct path only queues the frame: the batch is formed by
    the serving loop when it is due, as before."""
    assert not answered_inside_publish(keydir, max_delay_ns=5_000_000)
