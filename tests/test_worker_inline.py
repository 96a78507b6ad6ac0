"""Cheap frame models run on the worker's event loop; slow or unmeasured ones on its thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from tests.conftest import KeyDir
from tests.test_worker import run, serving
from tests.test_worker_support import Robot, make_frame
from vlabus.policy import NoopPolicy, Observation


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
    run(body)
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

    run(body)
    assert sum(policy.sizes) == sent
    assert policy.sizes[0] == 1  # without the yield: all 24 in the first batch
    assert max(policy.sizes[1:]) > 1  # the rest queued, and batched, while the first ran
