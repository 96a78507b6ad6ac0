"""Robots running ``--codec auto`` on a simulated shared uplink, on a fake clock.

A closed loop without sockets or sleeps, for the estimator and the chooser: every robot has its
own :class:`~edge_agent.uplink.UplinkEstimator` and :class:`~edge_agent.codec.CodecChooser`,
sends one frame (the chooser's predicted size) every interval, and the frames of all robots
queue for one link of ``mbit`` (first in, first out, like ``tc tbf``). Each frame then pays a
size-independent delay: ``base_ms`` plus a seeded jitter drawn from 0..``jitter_ms`` — what a
broker hop with Nagle's algorithm on adds (a packet held back for the previous one's
acknowledgement), whatever the frame's size. A reply arrives after the transfer and the
worker's time; after the step's budget it is a miss, as the agent reports it.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from edge_agent.codec import CodecChooser
from edge_agent.uplink import UplinkEstimate, UplinkEstimator
from tests.support.clock import MS, FakeClock


@dataclass
class SimRobot:
    """One robot's estimator, chooser and what happened to its steps."""

    estimator: UplinkEstimator
    chooser: CodecChooser
    on_time: int = 0
    steps: int = 0
    choices: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)  # (ns, rungs)
    estimates: list[UplinkEstimate] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (ns, frame bytes)

    def changes(self, since_ns: int = 0) -> int:
        """How often the rungs changed after ``since_ns``."""
        seen = [rungs for at, rungs in self.choices if at >= since_ns]
        return sum(a != b for a, b in itertools.pairwise(seen))


@dataclass
class SharedLink:
    """The simulated site (see the module docstring); :meth:`run` drives it."""

    images: Mapping[str, npt.NDArray[Any]]
    mbit: float
    robots: int = 4
    base_ms: float = 2.0
    jitter_ms: float = 0.0
    hold_share: float = 0.0
    hold_ms: float = 40.0
    worker_ms: float = 20.0
    budget_ms: float = 100.0
    fps: float = 15.0
    seed: int = 0
    queue_ms: float = 100.0
    chooser: Callable[[FakeClock], CodecChooser] = CodecChooser
    clock: FakeClock = field(default_factory=lambda: FakeClock(0))
    fleet: list[SimRobot] = field(default_factory=list)

    def __post_init__(self) -> None:
        for _ in range(self.robots):
            chooser = self.chooser(self.clock)
            chooser.calibrate(self.images)
            self.fleet.append(SimRobot(UplinkEstimator(self.clock), chooser))

    def run(self, seconds: float) -> list[SimRobot]:
        """Drive every robot for ``seconds`` more; the robots."""
        rng = random.Random(self.seed)
        interval = round(1e9 / self.fps)
        budget, worker = round(self.budget_ms * MS), round(self.worker_ms * MS)
        ns_per_byte = 8e3 / self.mbit
        start = self.clock.now
        sends = sorted((start + step * interval + i * interval // self.robots, i)
                       for step in range(round(seconds * self.fps))
                       for i in range(self.robots))
        events: list[tuple[int, int, int, int]] = []  # (at, robot, bytes, transfer ns or -1)
        link_free = start
        for at, i in sends:
            while events and events[0][0] <= at:
                self._deliver(heapq.heappop(events), worker)
            self.clock.now = at
            robot = self.fleet[i]
            estimate = robot.estimator.estimate()
            rungs = robot.chooser.choose(estimate, budget_ns=budget, interval_ns=interval)
            robot.choices.append((at, tuple(r.name for r in rungs.values())))
            if estimate is not None:
                robot.estimates.append(estimate)
            nbytes = round(robot.chooser.frame_bytes())
            robot.sizes.append((at, nbytes))
            if link_free - at > self.queue_ms * MS:  # the link's buffer is full: dropped
                robot.steps += 1
                heapq.heappush(events, (at + budget, i, nbytes, -1))
                continue
            link_free = max(at, link_free) + round(nbytes * ns_per_byte)
            transfer = link_free - at + round(self._delay_ms(rng) * MS)
            robot.steps += 1
            if transfer + worker <= budget:
                robot.on_time += 1
                heapq.heappush(events, (at + transfer + worker, i, nbytes, transfer))
            else:  # the agent gives up at the deadline: a miss
                heapq.heappush(events, (at + budget, i, nbytes, -1))
        while events:
            self._deliver(heapq.heappop(events), worker)
        return self.fleet

    def _delay_ms(self, rng: random.Random) -> float:
        held = rng.uniform(0, self.hold_ms) if rng.random() < self.hold_share else 0.0
        return self.base_ms + rng.uniform(0, self.jitter_ms) + held

    def _deliver(self, event: tuple[int, int, int, int], worker: int) -> None:
        at, i, nbytes, transfer = event
        self.clock.now = max(self.clock.now, at)
        estimator = self.fleet[i].estimator
        if transfer < 0:
            estimator.missed(nbytes, round(self.budget_ms * MS))
        else:
            estimator.reply(nbytes, transfer, worker)

    def frame_bytes(self, since_ns: int = 0) -> list[float]:
        """Each robot's mean frame size (bytes, predicted) over its choices after ``since_ns``."""
        out = []
        for robot in self.fleet:
            sizes = [size for at, size in robot.sizes if at >= since_ns]
            out.append(sum(sizes) / len(sizes) if sizes else 0.0)
        return out

    def on_time(self) -> float:
        """Share of all steps answered within the budget."""
        steps = sum(r.steps for r in self.fleet)
        return sum(r.on_time for r in self.fleet) / steps if steps else 0.0
