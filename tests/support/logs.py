"""Synthetic recordings for the record, replay and log tests."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from schemas.arrays import pack_array
from schemas.messages import Action
from schemas.topics import action_topic, frame_topic
from security.keys import Signer
from tests.support.frames import make_frame
from vlabus.log.record import Recorder
from vlabus.wire import Encoder


def make_action(robot: str, step: int, worker: str, *, offset: float = 0.0) -> Action:
    chunk = np.full((4, 7), step + offset, dtype=np.float32)
    return Action(robot_id=robot, step=step, actions=pack_array(chunk), model="default",
                  model_version=1, worker_id=worker)


def write_log(path: Path, signers: dict[str, Signer], *, steps: int = 10,
              period_ns: int = 20_000_000, robots: tuple[str, ...] = ("robot-a", "robot-b"),
              start_ns: int | None = None,
              action_offset: float = 0.0) -> list[tuple[str, bytes, int]]:
    """Write a synthetic log: per step, one frame per robot and the worker's action 5 ms later.

    Returns (topic, wire, log_ns) in write order. Senders use a frozen clock at the log time,
    as a live recording would show.
    """
    base = time.time_ns() if start_ns is None else start_ns
    written: list[tuple[str, bytes, int]] = []
    encoders = {name: Encoder(signers[name]) for name in (*robots, "worker-1")}
    with Recorder(path) as recorder:
        for step in range(steps):
            for index, robot in enumerate(robots):
                t = base + step * period_ns + index * 1000
                frame = make_frame(robot, step, size=16, state_dim=7)
                wire = encoders[robot].encode(frame, sent_ns=t, corr=f"{robot}:{step}",
                                              deadline_ns=t + 100_000_000)
                recorder.write(frame_topic(robot), wire, t)
                written.append((frame_topic(robot), wire, t))
                t_action = t + 5_000_000
                wire = encoders["worker-1"].encode(
                    make_action(robot, step, "worker-1", offset=action_offset),
                    sent_ns=t_action, corr=f"{robot}:{step}")
                recorder.write(action_topic(robot), wire, t_action)
                written.append((action_topic(robot), wire, t_action))
    return written

