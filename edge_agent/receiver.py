"""Everything that reaches the robot: actions (strictly checked) and model updates.

Actions go through :func:`vlabus.inbound.accept` with a strict replay guard (each worker's
sequence must only increase: the robot is the one place where a reordered or repeated action
can be refused outright), must come from a ``worker`` key, name this robot, and carry a finite
HxD chunk; the :class:`~edge_agent.watchdog.Watchdog` then calls them on time, late or unknown.
Model manifests and chunks go to the :class:`~edge_agent.updates.ModelUpdater`. A recorder,
when given, receives every byte sent and received and every decision (the robot's black box).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from edge_agent.frames import chunk_of
from edge_agent.local import Chunk, LocalPolicy
from edge_agent.metrics import EdgeMetrics
from edge_agent.stats import RunStats
from edge_agent.store import Installed, sha256_file
from edge_agent.updates import Download, ModelUpdater, UpdateResult
from edge_agent.watchdog import PendingStep, Verdict, Watchdog
from schemas.errors import BusError, Reason, SchemaError, WireError
from schemas.messages import Action, ModelChunk, ModelManifest
from schemas.topics import action_topic, model_chunk_topic, model_manifest_topic
from security.keys import Keyring
from security.replay import ReplayGuard
from vlabus.bus.transport import Message, Transport
from vlabus.inbound import Rejections, accept
from vlabus.wire import Decoder

if TYPE_CHECKING:
    from edge_agent.agent import ActionResult

log = logging.getLogger(__name__)


class BlackBox(Protocol):
    """What the receiver needs from a recorder (``vlabus.log.record.Recorder`` fits)."""

    def write(self, topic: str, payload: bytes | bytearray | memoryview, received_ns: int,
              sent_ns: int | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class CloudReply:
    chunk: Chunk
    rtt_ns: int
    worker_id: str
    tick_stride: float


def strict_action_guard() -> ReplayGuard:
    """Window 1: a worker's actions must arrive with strictly increasing sequence numbers."""
    return ReplayGuard(window=1)


class Receiver:
    """Owns the robot's subscriptions and decoders; the agent registers what it waits for."""

    def __init__(self, transport: Transport, keyring: Keyring, robot_id: str, *,
                 metrics: EdgeMetrics, period_ns: int, updater: ModelUpdater | None = None,
                 local: LocalPolicy | None = None, recorder: BlackBox | None = None,
                 max_wait: int = 1024) -> None:
        self.transport = transport
        self.robot_id = robot_id
        self.metrics = metrics
        self.period_ns = period_ns
        self.updater = updater
        self.local = local
        self.recorder = recorder
        self.stats = RunStats()
        self.watchdog = Watchdog(time.monotonic_ns)
        self.rejections = Rejections(lambda reason: metrics.rejected.labels(reason.value).inc())
        self.actions = Decoder(keyring, strict_action_guard())
        self.models = Decoder(keyring, ReplayGuard())
        self.on_late: Callable[[int], None] = lambda rtt_ns: None
        #: other topics this robot subscribed to on the same connection (federated rounds)
        self.routes: dict[str, Callable[[Message], None]] = {}
        self._expected: OrderedDict[str, asyncio.Future[CloudReply]] = OrderedDict()
        self._encode_ns: OrderedDict[str, int] = OrderedDict()
        self._max_wait = max_wait
        self._action_topic = action_topic(robot_id)
        self._decision_topic = f"vla/v1/{robot_id}/decision"
        self._task: asyncio.Task[None] | None = None
        self._installs: set[asyncio.Task[None]] = set()
        self._pack = msgspec.msgpack.Encoder()
        if updater is not None:  # read when Prometheus scrapes
            metrics.download_missing.set_function(lambda: _progress(updater, "missing"))
            metrics.download_idle.set_function(lambda: _progress(updater, "idle_s"))

    async def start(self) -> None:
        await self.transport.subscribe(self._action_topic, qos=1)
        if self.updater is not None:
            await self.transport.subscribe(model_manifest_topic(self.updater.name), qos=1)
            await self.transport.subscribe(model_chunk_topic(self.updater.name), qos=1)
        self._task = asyncio.create_task(self._run(), name=f"edge-recv-{self.robot_id}")
        # Handled as they arrive, in the transport's receive callback: an action reaches the
        # waiting control step without first waking the task below (which takes what queued
        # before this was set, or while it had a backlog).
        self.transport.inbox.direct = self._take

    def expect(self, corr: str, step: int, decide_ns: int, *,
               probe: bool = False) -> asyncio.Future[CloudReply]:
        """Register a step before its frame goes out; the future gets its reply if it arrives
        by ``decide_ns`` (monotonic)."""
        self.watchdog.open(corr, step, decide_ns, probe=probe)
        future: asyncio.Future[CloudReply] = asyncio.get_running_loop().create_future()
        self._expected[corr] = future
        while len(self._expected) > self._max_wait:
            _, old = self._expected.popitem(last=False)
            old.cancel()
        return future

    def sent(self, corr: str, encode_ns: int, wire: bytes | memoryview, topic: str) -> None:
        """A frame went out: keep its encode time for the breakdown, and record it."""
        self._encode_ns[corr] = encode_ns
        while len(self._encode_ns) > self._max_wait:
            self._encode_ns.popitem(last=False)
        self._record(topic, wire)

    def expire(self, corr: str) -> PendingStep | None:
        """The fallback decides ``corr``: later replies are late."""
        expected = self._expected.pop(corr, None)
        if expected is not None:
            expected.cancel()
        return self.watchdog.expire(corr)

    def decided(self, result: ActionResult) -> None:
        if self.recorder is None:
            return
        record = {"step": result.step, "source": result.source.value,
                  "cause": None if result.cause is None else result.cause.value,
                  "lateness_ns": result.lateness_ns, "rtt_ns": result.rtt_ns,
                  "worker_id": result.worker_id, "model_version": result.model_version,
                  "action": None if result.action is None else result.action.tolist()}
        self._record(self._decision_topic, self._pack.encode(record))

    def _record(self, topic: str, payload: bytes | bytearray | memoryview) -> None:
        if self.recorder is None:
            return
        try:
            self.recorder.write(topic, payload, time.time_ns())
        except BusError as exc:  # a full disk ends the recording, never the robot
            log.error("black box stopped: %r", exc)  # noqa: TRY400 - expected, no traceback
            self.recorder = None

    def rolled_back(self, failed_version: int) -> None:
        """The agent went back to its previous policy: point the store back at it too."""
        updater = self.updater
        if updater is not None:
            current = updater.store.active(updater.name)
            target = None
            if current is not None and current.previous is not None:
                path = updater.store.path_of(updater.name, current.previous)
                if path.is_file():
                    target = Installed(updater.name, current.previous, path, sha256_file(path))
            updater.rolled_back(target, failed_version)
        self.metrics.model_updates.labels(UpdateResult.ROLLED_BACK.value).inc()

    async def _run(self) -> None:
        async for message in self.transport.messages():
            self._take(message)

    def _take(self, message: Message) -> bool:
        try:
            self.handle(message)
        except Exception:  # the robot keeps acting whatever one message does
            log.exception("unexpected error handling a message on %r", message.topic)
        return True

    def handle(self, message: Message) -> None:
        """Route one received message; never raises for bad input."""
        self._record(message.topic, message.payload)
        route = self.routes.get(message.topic)
        if route is not None:
            route(message)
        elif message.topic == self._action_topic:
            self._on_action(message)
        elif self.updater is not None:
            self._on_model(message)

    def _on_action(self, message: Message) -> None:
        arrived = time.monotonic_ns()
        received = accept(self.actions, message, self.rejections)
        decode_ns = time.monotonic_ns() - arrived
        if received is None:
            self._mark_rejected(message)
            return
        action = received.message
        if not isinstance(action, Action) or action.robot_id != self.robot_id:
            self.rejections.count(Reason.IDENTITY_MISMATCH)
            log.warning("reply on %r is not an action for %s", message.topic, self.robot_id)
            self.watchdog.mark_rejected(received.header.corr)
            return
        corr = received.header.corr
        try:
            chunk = chunk_of(action)
        except SchemaError as exc:
            self.rejections.count(exc.reason)
            log.warning("unusable action from %r: %r", action.worker_id, exc)
            self.watchdog.mark_rejected(corr)
            return
        reply = self.watchdog.reply(corr, action.step)
        if reply.verdict is Verdict.UNKNOWN:
            self.stats.unmatched_replies += 1
            return
        self._measure(corr, reply.rtt_ns, decode_ns, action)
        if reply.verdict is Verdict.LATE:
            self.stats.late_replies_discarded += 1
            self.metrics.late_replies.inc()
            self.on_late(reply.rtt_ns)
            self._expected.pop(corr, None)
            return
        expected = self._expected.pop(corr, None)
        if expected is None or expected.done():
            return
        stride = action.period_ns / self.period_ns if action.period_ns else 1.0
        expected.set_result(CloudReply(chunk, reply.rtt_ns, action.worker_id, stride))

    def _measure(self, corr: str, rtt_ns: int, decode_ns: int, action: Action) -> None:
        self.stats.rtt_ns.append(rtt_ns)
        self.metrics.round_trip.observe(rtt_ns / 1e9)
        encode_ns = self._encode_ns.pop(corr, None)
        if encode_ns is None or not action.span_ns:
            return
        parts = self.stats.add_breakdown(
            rtt_ns=rtt_ns, robot_encode_ns=encode_ns, robot_decode_ns=decode_ns,
            worker={"decode": action.decode_ns, "queue_wait": action.queue_wait_ns,
                    "inference": action.inference_ns, "encode": action.encode_ns,
                    "span": action.span_ns})
        for part, nanos in parts.items():
            self.metrics.latency_parts.labels(part).observe(nanos / 1e9)

    def _mark_rejected(self, message: Message) -> None:
        # The header is unverified here: it only attributes the fallback's cause, nothing more.
        with contextlib.suppress(WireError):
            self.watchdog.mark_rejected(self.actions.read_header(memoryview(message.payload)).corr)

    def _on_model(self, message: Message) -> None:
        updater = self.updater
        assert updater is not None
        received = accept(self.models, message, self.rejections)
        if received is None:
            return
        body = received.message
        if isinstance(body, ModelManifest):
            self._count(updater.on_manifest(body))
        elif isinstance(body, ModelChunk):
            self._count(updater.on_chunk(body))
            download = updater.take()
            if download is not None:
                task = asyncio.create_task(self._install(updater, download))
                self._installs.add(task)
                task.add_done_callback(self._installs.discard)

    async def _install(self, updater: ModelUpdater, download: Download) -> None:
        result, ready = await asyncio.to_thread(updater.finish, download)
        self._count(result)
        if ready is not None and self.local is not None:
            self.local.stage(ready.policy, ready.installed.version)

    async def settle(self) -> None:
        """Wait for model installs in progress (tests, orderly shutdown)."""
        while self._installs:
            await asyncio.gather(*self._installs, return_exceptions=True)

    def _count(self, result: UpdateResult) -> None:
        self.metrics.model_updates.labels(result.value).inc()

    def counters(self) -> dict[str, Any]:
        updater = self.updater
        return {"model_updates": dict(updater.results) if updater else {},
                "model_download": updater.progress() if updater else None}

    async def close(self) -> None:
        self.transport.inbox.direct = None
        for task in [self._task, *self._installs]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def _progress(updater: ModelUpdater, key: str) -> float:
    progress = updater.progress()
    if progress is None:
        return 0.0
    if key == "missing":
        return float(progress["total"] - progress["chunks"])
    return float(progress[key])
