"""The live view's bookkeeping behind ``vlabus view``: verification, per-step cloud/fallback as
the bus shows it, robot and worker stats (no sockets; an injected clock)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("foxglove")

from schemas.arrays import pack_array
from schemas.messages import Action
from schemas.topics import action_topic, frame_topic
from tests.support.frames import make_frame
from tests.support.keys import KeyDir
from vlabus.log.foxglove_msgs import Out
from vlabus.log.live import LiveView
from vlabus.wire import Encoder


class Captured:
    def __init__(self) -> None:
        self.outs: list[Out] = []
        self.logged = 0

    def log(self, out: Out, log_ns: int) -> None:
        self.outs.append(out)
        self.logged += 1

    def topic(self, name: str) -> list[dict[str, Any]]:
        return [o.message for o in self.outs if o.topic == name]


def test_live_view_verifies_and_tracks_fallbacks_seen_on_the_bus(keydir: KeyDir) -> None:
    now = [1_000_000_000_000]
    sink = Captured()
    view = LiveView(sink, keydir.ring, stats_interval_s=1.0, clock=lambda: now[0])
    robot = Encoder(keydir.signers["robot-a"], clock=lambda: now[0])
    worker = Encoder(keydir.signers["worker-1"], clock=lambda: now[0])
    budget = 100_000_000
    for step in range(3):
        wire = robot.encode(make_frame("robot-a", step), corr=f"c{step}",
                            deadline_ns=now[0] + budget)
        view.on_message(frame_topic("robot-a"), wire, now[0])
    reply = Action(robot_id="robot-a", step=0, actions=pack_array(np.zeros((4, 7), np.float32)),
                   model="m", model_version=1, worker_id="worker-1", queue_wait_ns=2_000_000)
    now[0] += 5_000_000
    view.on_message(action_topic("robot-a"), worker.encode(reply, corr="c0"), now[0])
    forged = bytearray(robot.encode(make_frame("robot-a", 9), corr="c9"))
    forged[-3] ^= 1
    view.on_message(frame_topic("robot-a"), bytes(forged), now[0])
    now[0] += budget  # steps 1 and 2 got no action within their budget
    view.tick()
    now[0] += 1_000_000_000
    view.tick()
    decisions = sink.topic("vla/v1/robot-a/decision")
    assert [(d["step"], d["source"], d["cause"]) for d in decisions] == [
        (0, "cloud", None), (1, "fallback", "no_reply"), (2, "fallback", "no_reply")]
    assert decisions[0]["rtt_ms"] == 5.0
    assert sink.topic("vlabus/rejected")[0]["reason"] == "bad_signature"
    assert view.rejections.by_reason == {"bad_signature": 1}
    (stats,) = sink.topic("vla/v1/robot-a/stats")[-1:]
    assert (stats["fallbacks"], stats["cloud_share"]) == (2, 1 / 3)
    (workers,) = sink.topic("vla/v1/workers/worker-1/stats")[-1:]
    assert workers["queue_wait_max_ms"] == 2.0
    assert workers["replies_total"] == 1
    cameras = [o for o in sink.outs if o.topic == "vla/v1/robot-a/frame/camera/front"]
    assert len(cameras) == 3  # the forged frame's image was not shown
