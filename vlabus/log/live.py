"""The live fleet behind ``vlabus view``: verified bus traffic as Foxglove channels, plus what
the bus shows about each robot and worker (docs/foxglove.md).

:class:`LiveView` verifies every message (signature, key role and identity; no replay guard: a
viewer keeps nothing and copies change nothing), turns it into Foxglove messages with
:class:`~vlabus.log.foxglove_msgs.Translator`, and tracks each frame until its action arrives
or its deadline budget passes on the viewer's clock. From that it publishes:

* ``vla/v1/{robot}/decision`` — per frame, as seen from the bus: ``cloud`` (an action arrived
  within the budget) or ``fallback`` (none did, ``cause`` ``no_reply``; or it came too late,
  ``late_reply``): the robot acted on its local policy for that step.
* ``vla/v1/{robot}/stats`` every ``stats_interval_s``: frame rate, cloud share, round-trip
  p50/p99, fallbacks, online state.
* ``vla/v1/workers/{worker}/stats``: replies per second, queue wait (p50, max) and inference time
  reported in the workers' actions, online state from their status messages.
* ``vlabus/rejected``: what failed verification, with the reason.

Everything here runs on one thread (the event loop that receives the messages).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import WireError
from schemas.messages import Action, Frame, Status
from security.keys import Keyring
from vlabus.bus.transport import Transport
from vlabus.inbound import Rejections
from vlabus.log.foxglove_msgs import SCHEMAS, Out, Sink, Translator
from vlabus.quantiles import quantiles
from vlabus.wire import Decoder

MAX_PENDING = 8192
_MS = {"type": ["number", "null"], "description": "milliseconds"}
LIVE_SCHEMAS: dict[str, dict[str, Any]] = {
    "vlabus.BusDecision": {
        "title": "vlabus.BusDecision", "type": "object",
        "description": "one robot step as the bus shows it (the viewer's clock)",
        "properties": {"robot_id": {"type": "string"}, "step": {"type": "integer"},
                       "source": {"enum": ["cloud", "fallback"]},
                       "cause": {"enum": [None, "no_reply", "late_reply"]},
                       "fallback": {"type": "integer"}, "rtt_ms": _MS, "budget_ms": _MS,
                       "worker_id": {"type": ["string", "null"]}},
        "required": ["robot_id", "step", "source", "fallback"]},
    "vlabus.RobotStats": {
        "title": "vlabus.RobotStats", "type": "object",
        "properties": {"robot_id": {"type": "string"}, "interval_s": {"type": "number"},
                       "fps": {"type": "number"}, "cloud_share": {"type": ["number", "null"]},
                       "rtt_p50_ms": _MS, "rtt_p99_ms": _MS, "fallbacks": {"type": "integer"},
                       "fallbacks_total": {"type": "integer"},
                       "late_replies_total": {"type": "integer"},
                       "online": {"type": ["boolean", "null"]}},
        "required": ["robot_id", "fps", "fallbacks"]},
    "vlabus.WorkerStats": {
        "title": "vlabus.WorkerStats", "type": "object",
        "properties": {"worker_id": {"type": "string"}, "interval_s": {"type": "number"},
                       "replies_per_s": {"type": "number"}, "queue_wait_p50_ms": _MS,
                       "queue_wait_max_ms": _MS, "inference_mean_ms": _MS,
                       "replies_total": {"type": "integer"},
                       "online": {"type": ["boolean", "null"]}},
        "required": ["worker_id", "replies_per_s"]},
}


@dataclass
class RobotTally:
    frames: int = 0
    cloud: int = 0
    fallbacks: int = 0
    fallbacks_total: int = 0
    late_replies_total: int = 0
    rtt_ms: list[float] = field(default_factory=list)
    online: bool | None = None


@dataclass
class WorkerTally:
    replies: int = 0
    replies_total: int = 0
    queue_wait_ms: list[float] = field(default_factory=list)
    inference_ms: list[float] = field(default_factory=list)
    online: bool | None = None


@dataclass(frozen=True, slots=True)
class Pending:
    robot: str
    step: int
    seen_ns: int
    budget_ns: int


class LiveView:
    """See the module docstring. ``on_message`` per bus message, ``tick`` on a timer."""

    def __init__(self, sink: Sink, keyring: Keyring, *,
                 stats_interval_s: float = 1.0, clock: Callable[[], int] = time.time_ns) -> None:
        self.sink = sink
        self.rejections = Rejections()
        self.messages = 0
        self._decoder = Decoder(keyring)
        self._translator = Translator()
        self._clock = clock
        self._interval_ns = int(stats_interval_s * 1e9)
        self._last_stats = clock()
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self.robots: dict[str, RobotTally] = {}
        self.workers: dict[str, WorkerTally] = {}

    def on_message(self, topic: str, payload: bytes | memoryview, received_ns: int) -> None:
        """Verify, translate and log one bus message; a bad one goes to ``vlabus/rejected``."""
        self.messages += 1
        try:
            received = self._decoder.decode(payload)
        except WireError as exc:
            self.rejections.count(exc.reason)
            self._log(self._translator.rejected(topic, exc.reason.value, exc.detail,
                                                len(payload)), received_ns)
            return
        header, message = received.header, received.message
        self._log(self._translator.envelope(topic, received_ns, header, message, True),
                  received_ns)
        if isinstance(message, Frame):
            tally = self.robots.setdefault(message.robot_id, RobotTally())
            tally.frames += 1
            if header.corr and header.deadline_ns:
                self._pending[header.corr] = Pending(message.robot_id, message.step, received_ns,
                                                     header.deadline_ns - header.sent_ns)
                while len(self._pending) > MAX_PENDING:
                    self._pending.popitem(last=False)
        elif isinstance(message, Action):
            self._on_action(header.corr, message, received_ns)
        elif isinstance(message, Status):
            online = message.state == "online"
            if message.role == "robot":
                self.robots.setdefault(message.client_id, RobotTally()).online = online
            elif message.role == "worker":
                self.workers.setdefault(message.client_id, WorkerTally()).online = online

    def _on_action(self, corr: str, action: Action, received_ns: int) -> None:
        worker = self.workers.setdefault(action.worker_id, WorkerTally())
        worker.replies += 1
        worker.replies_total += 1
        worker.queue_wait_ms.append(action.queue_wait_ns / 1e6)
        worker.inference_ms.append(action.inference_ns / 1e6)
        robot = self.robots.setdefault(action.robot_id, RobotTally())
        pending = self._pending.pop(corr, None) if corr else None
        if pending is None:  # its frame already counted as a fallback, or was not seen
            robot.late_replies_total += 1
            return
        rtt = received_ns - pending.seen_ns
        on_time = rtt <= pending.budget_ns
        if on_time:
            robot.cloud += 1
            robot.rtt_ms.append(rtt / 1e6)
        else:
            robot.fallbacks += 1
            robot.fallbacks_total += 1
        self._decision(pending, received_ns, cloud=on_time, rtt_ns=rtt,
                       worker=action.worker_id, cause=None if on_time else "late_reply")

    def tick(self) -> None:
        """Expire frames whose budget passed (fallbacks) and publish stats when due."""
        now = self._clock()
        expired = [corr for corr, p in self._pending.items() if now - p.seen_ns > p.budget_ns]
        for corr in expired:
            pending = self._pending.pop(corr)
            robot = self.robots.setdefault(pending.robot, RobotTally())
            robot.fallbacks += 1
            robot.fallbacks_total += 1
            self._decision(pending, now, cloud=False, rtt_ns=None, worker=None,
                           cause="no_reply")
        if now - self._last_stats >= self._interval_ns:
            self._stats(now, (now - self._last_stats) / 1e9)
            self._last_stats = now

    def _decision(self, pending: Pending, at_ns: int, *, cloud: bool, rtt_ns: int | None,
                  worker: str | None, cause: str | None) -> None:
        doc = {"robot_id": pending.robot, "step": pending.step,
               "source": "cloud" if cloud else "fallback", "cause": cause,
               "fallback": 0 if cloud else 1, "rtt_ms": None if rtt_ns is None else rtt_ns / 1e6,
               "budget_ms": pending.budget_ns / 1e6, "worker_id": worker}
        self._log([Out(f"vla/v1/{pending.robot}/decision", "json", doc, "vlabus.BusDecision")],
                  at_ns)

    def _stats(self, now: int, interval_s: float) -> None:
        outs = []
        for name, robot in sorted(self.robots.items()):
            found = quantiles(robot.rtt_ms, (0.5, 0.99)) if robot.rtt_ms else {}
            decided = robot.cloud + robot.fallbacks
            outs.append(Out(f"vla/v1/{name}/stats", "json", {
                "robot_id": name, "interval_s": interval_s, "fps": robot.frames / interval_s,
                "cloud_share": robot.cloud / decided if decided else None,
                "rtt_p50_ms": found.get("p50"), "rtt_p99_ms": found.get("p99"),
                "fallbacks": robot.fallbacks, "fallbacks_total": robot.fallbacks_total,
                "late_replies_total": robot.late_replies_total, "online": robot.online},
                "vlabus.RobotStats"))
            robot.frames = robot.cloud = robot.fallbacks = 0
            robot.rtt_ms.clear()
        for name, worker in sorted(self.workers.items()):
            waits = worker.queue_wait_ms
            outs.append(Out(f"vla/v1/workers/{name}/stats", "json", {
                "worker_id": name, "interval_s": interval_s,
                "replies_per_s": worker.replies / interval_s,
                "queue_wait_p50_ms": quantiles(waits, (0.5,))["p50"] if waits else None,
                "queue_wait_max_ms": max(waits) if waits else None,
                "inference_mean_ms": (sum(worker.inference_ms) / len(worker.inference_ms)
                                      if worker.inference_ms else None),
                "replies_total": worker.replies_total, "online": worker.online},
                "vlabus.WorkerStats"))
            worker.replies = 0
            waits.clear()
            worker.inference_ms.clear()
        self._log(outs, now)

    def _log(self, outs: list[Out], log_ns: int) -> None:
        for out in outs:
            self.sink.log(out, log_ns)


async def run_live(transport: Transport, view: LiveView, *, stop: asyncio.Event,
                   tick_s: float = 0.05) -> None:
    """Feed ``view`` from ``transport`` until ``stop`` is set or the transport closes.
    Subscribing is the caller's job."""

    async def drain() -> None:
        async for message in transport:
            view.on_message(message.topic, message.payload, message.received_ns)

    async def timer() -> None:
        while True:
            await asyncio.sleep(tick_s)
            view.tick()

    tasks = [asyncio.create_task(drain()), asyncio.create_task(timer()),
             asyncio.create_task(stop.wait())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def live_schemas() -> dict[str, dict[str, Any]]:
    """Every JSON Schema ``vlabus view`` may publish, by name."""
    return {**SCHEMAS, **LIVE_SCHEMAS}
