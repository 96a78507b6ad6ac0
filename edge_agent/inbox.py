"""The robot's action inbox: verifies replies and matches them against the watchdog.

Actions go through the envelope checks with a strict replay guard (each worker's sequence must
only increase: the robot is the one place where a reordered or repeated action can be refused
outright), must come from a ``worker`` key, name this robot, and carry a finite HxD chunk. The
injected :class:`~edge_agent.watchdog.Watchdog` then calls them on time, late or unknown. A reply
refused after its header was read marks its step rejected from that header (carried by the
error), so the fallback names the cause and nothing is parsed twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.frames import chunk_of
from edge_agent.local import Chunk
from edge_agent.metrics import EdgeMetrics
from edge_agent.stats import RunStats
from edge_agent.watchdog import MONOTONIC, Clock, PendingStep, Verdict, Watchdog
from schemas.errors import Reason, SchemaError, WireError
from schemas.messages import Action, Declined, SessionRefused
from schemas.topics import action_topic
from security.keys import Keyring
from security.replay import ReplayGuard
from vlabus.bus.transport import Message
from vlabus.envelope import Header, Received, SessionAuth
from vlabus.inbound import Rejections
from vlabus.wire import Decoder

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CloudReply:
    """A verified, on-time answer; ``chunk`` None when the worker declined the frame."""

    chunk: Chunk | None
    rtt_ns: int
    worker_id: str
    tick_stride: float
    #: the worker's suggested send time for the next frame (wall ns; 0: none)
    slot_ns: int = 0


def strict_action_guard() -> ReplayGuard:
    """Window 1: a worker's actions must arrive with strictly increasing sequence numbers."""
    return ReplayGuard(window=1)


def _ignore_late(rtt_ns: int) -> None:
    del rtt_ns


class ActionInbox:
    """Futures for the steps the agent waits on, completed by verified, on-time replies."""

    def __init__(self, keyring: Keyring, robot_id: str, watchdog: Watchdog, *,
                 rejections: Rejections, stats: RunStats, metrics: EdgeMetrics, period_ns: int,
                 on_late: Callable[[int], None] = _ignore_late, clock: Clock = MONOTONIC,
                 max_wait: int = 1024, sessions: SessionAuth | None = None,
                 on_refused: Callable[[SessionRefused], None] | None = None) -> None:
        self.robot_id = robot_id
        self.watchdog = watchdog
        self.rejections = rejections
        self.stats = stats
        self.metrics = metrics
        self.period_ns = period_ns
        self.on_late = on_late
        #: (corr, transfer ns, worker span ns) of each reply whose round trip could be split
        self.on_transfer: Callable[[str, int, int], None] = lambda corr, ns, worker: None
        self.topic = action_topic(robot_id)
        self._decoder = Decoder(keyring, strict_action_guard(), sessions=sessions)
        self._on_refused = on_refused  # a worker refused our session: the next step re-offers
        self._clock = clock
        self._expected: OrderedDict[str, asyncio.Future[CloudReply]] = OrderedDict()
        self._encode_ns: OrderedDict[str, int] = OrderedDict()
        self._max_wait = max_wait

    def use_sessions(self, sessions: SessionAuth,
                     on_refused: Callable[[SessionRefused], None]) -> None:
        """Verify session-mode actions too (``vlabus edge --session-pool``); ``on_refused``
        sees a worker's refusal of our session."""
        self._decoder.sessions = sessions
        self._on_refused = on_refused

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

    @property
    def waiting(self) -> int:
        """Frames sent whose reply has not come and whose step is not decided yet."""
        return sum(1 for future in self._expected.values() if not future.done())

    def sent(self, corr: str, encode_ns: int) -> None:
        """The frame of ``corr`` went out: keep its encode time for the latency breakdown."""
        self._encode_ns[corr] = encode_ns
        while len(self._encode_ns) > self._max_wait:
            self._encode_ns.popitem(last=False)

    def expire(self, corr: str) -> PendingStep | None:
        """The fallback decides ``corr``: later replies are late."""
        expected = self._expected.pop(corr, None)
        if expected is not None:
            expected.cancel()
        return self.watchdog.expire(corr)

    def handle(self, message: Message) -> None:
        """Verify one message from the action topic and settle its step; never raises for
        bad input."""
        arrived = self._clock()
        try:
            # commit=False: the worker's sequence window moves only for an action that passed
            # every check below too, so a signed action refused here (another robot's, not
            # usable) cannot make that worker's later genuine actions look like replays
            received = self._decoder.decode(message.payload, topic=message.topic, commit=False)
        except WireError as exc:
            self._refuse(exc, message.topic)
            return
        decode_ns = self._clock() - arrived
        action = received.message
        corr = received.header.corr
        if isinstance(action, SessionRefused) and self._on_refused is not None:
            self._on_refused(action)
            return
        if isinstance(action, Declined) and action.robot_id == self.robot_id:
            self._declined(corr, action, received)
            return
        if not isinstance(action, Action) or action.robot_id != self.robot_id:
            self.rejections.count(Reason.IDENTITY_MISMATCH)
            log.warning("reply on %r is not an action for %s", message.topic, self.robot_id)
            self.watchdog.mark_rejected(corr)
            return
        try:
            chunk = chunk_of(action)
        except SchemaError as exc:
            self.rejections.count(exc.reason)
            log.warning("unusable action from %r: %r", action.worker_id, exc)
            self.watchdog.mark_rejected(corr)
            return
        if self._commit(received, message.topic):
            self._settle(corr, action, chunk, decode_ns)

    def _commit(self, received: Received, topic: str) -> bool:
        """Move the worker's sequence window; False (refused, counted) when another message
        took the sequence meanwhile."""
        try:
            self._decoder.commit(received)
        except WireError as exc:
            exc.header = received.header
            self._refuse(exc, topic)
            return False
        return True

    def _declined(self, corr: str, declined: Declined, received: Received) -> None:
        """A worker will not answer ``corr``: its step is decided locally now, not at its
        deadline, and the worker's send-time hint is kept."""
        if not self._commit(received, self.topic):
            return
        self.stats.declined += 1
        expected = self._expected.get(corr)
        if expected is not None and not expected.done():
            expected.set_result(CloudReply(None, 0, declined.worker_id, 1.0,
                                           declined.slot_ns or 0))

    def _refuse(self, exc: WireError, topic: str) -> None:
        self.rejections.reject(exc, topic)
        if isinstance(exc.header, Header):  # unverified: it only attributes the cause
            self.watchdog.mark_rejected(exc.header.corr)

    def _settle(self, corr: str, action: Action, chunk: Chunk, decode_ns: int) -> None:
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
        expected.set_result(CloudReply(chunk, reply.rtt_ns, action.worker_id, stride,
                                       action.slot_ns or 0))

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
        self.on_transfer(corr, parts["transport_up_down"], action.span_ns)
