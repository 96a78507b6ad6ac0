"""Session mode over a bus: the handshake, refusals and checkpoints around the session codec.

* :class:`RobotLink` keeps one session with its worker pool. Before a hot-path message it sends
  a signed offer when it has no live session (first message, after ``rotation`` by time or
  count, after :meth:`RobotLink.reconnected`, after a worker refused the session), then MACs
  the message. A refusal from a worker ends the session it names; the next message re-offers.
* :class:`PoolLink` is a worker's side: it reads every robot's offers (not shared: each worker
  of the pool needs the key), verifies and decodes inbound messages, and answers a message under
  a session it does not hold, or that expired, with a signed ``SessionRefused`` to that robot
  (at most one per session per second), so nothing is dropped silently.
* Both publish their signed checkpoints when due (:meth:`flush`) and on :meth:`close`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from schemas import topics
from schemas.errors import SessionError, TransportError, WireError
from schemas.messages import Message, SessionOffer, SessionRefused
from security.keys import Keyring, Signer
from security.replay import ReplayGuard
from security.seal import PoolKey, PoolSecret
from security.session import (
    Clock,
    Rotation,
    Session,
    SessionSender,
    SessionTable,
    accept_offer,
    offer_session,
)
from vlabus.bus.transport import Message as BusMessage
from vlabus.bus.transport import Transport
from vlabus.envelope import Received
from vlabus.inbound import Rejections
from vlabus.session_wire import SessionEncoder, SessionVerifier
from vlabus.wire import Decoder, Encoder

log = logging.getLogger(__name__)


class RobotLink:
    """A robot's session with pool ``pool``: sends in session mode, verifies the replies."""

    def __init__(self, bus: Transport, signer: Signer, pool: PoolKey, keyring: Keyring, *,
                 rotation: Rotation | None = None, checkpoint_interval_s: float = 1.0,
                 clock: Clock = time.time_ns, **encoder: Any) -> None:
        self.bus = bus
        self.signer = signer
        self.pool = pool
        self.rotation = rotation or Rotation()
        self.sender = SessionSender(self.rotation, clock)
        self.table = SessionTable(self.rotation, clock=clock)
        self.encoder = SessionEncoder(signer, self._pick, "up",
                                      checkpoint_interval_s=checkpoint_interval_s, clock=clock,
                                      **encoder)
        self._interval_ns = int(checkpoint_interval_s * 1e9)
        self._flushed_ns = clock()
        self._offering: asyncio.Task[None] | None = None
        self.verifier = SessionVerifier(self.table, "down")
        self.decoder = Decoder(keyring, guard=ReplayGuard(clock=clock), sessions=self.verifier)
        self.rejections = Rejections()
        self._clock = clock
        #: handshakes sent, and why the session before each ended ("" for the first)
        self.handshakes: list[str] = []
        self._reconnects = bus.counters().get("reconnects", 0)

    def _pick(self, _message: Message) -> Session | None:
        """The encoder's session for the next message. Used alone (an agent that only calls
        ``encoder.encode``), it schedules what :meth:`send` would do: an offer when none is
        live (this message is signed meanwhile) and the checkpoints that are due."""
        session = self.sender.current()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return session
        if session is None and (self._offering is None or self._offering.done()):
            self._offering = loop.create_task(self.ensure())
        if self._clock() - self._flushed_ns >= self._interval_ns:
            self._flushed_ns = self._clock()
            loop.call_soon(self.flush_nowait)  # not here: the encoder holds its lock
        return session

    async def ensure(self) -> None:
        """Send an offer now if no live session remains (by time, count, refusal, or because
        the transport reconnected since the last message: the pool may have restarted); and
        hand the checkpoints that are due to the transport."""
        self.flush_nowait()
        reconnects = self.bus.counters().get("reconnects", 0)
        if reconnects != self._reconnects:
            self._reconnects = reconnects
            self.reconnected()
        session = self.sender.session
        if (session is not None and self._clock() < session.expires_ns
                and session.used < session.max_messages):
            return
        if session is not None:
            self.sender.end("time" if self._clock() >= session.expires_ns else "count")
        offer, fresh = offer_session(self.signer.identity, self.signer.key_id, self.pool,
                                     self.rotation, clock=self._clock)
        await self.bus.publish(topics.session_topic(self.signer.identity),
                               self.encoder.encode(offer), qos=1)
        self.table.add(fresh)
        self.sender.session = fresh
        self.handshakes.append(self.sender.ended)

    async def send(self, topic: str, message: Message, *, qos: int = 0, **kw: Any) -> bytes:
        """Encode ``message`` (MACed under the session, after a handshake if one is due),
        publish it, then any checkpoint that is due; returns the bytes sent."""
        await self.ensure()
        wire = self.encoder.encode(message, **kw)
        await self.bus.publish(topic, wire, qos=qos)
        await self.flush()
        return wire

    def accept(self, message: BusMessage) -> Received | None:
        """Verify and decode a reply; a refusal of our session ends it (the next send offers
        a new one) and is returned like any message. Bad input is counted, never raised."""
        try:
            received = self.decoder.decode(message.payload)
        except WireError as exc:
            self.rejections.reject(exc, message.topic)
            return None
        if isinstance(received.message, SessionRefused):
            self.refused(received.message)
        return received

    def refused(self, refusal: SessionRefused) -> None:
        """A worker refused ``refusal.session``: end it; the next message offers a new one."""
        log.info("worker %r refused session %s (%s): a new handshake follows",
                 refusal.worker_id, refusal.session, refusal.reason)
        self.sender.end(refusal.reason, refusal.session)

    def reconnected(self) -> None:
        """The bus connection was re-established: rotate (the pool may have restarted)."""
        self.sender.end("reconnect")

    async def flush(self, *, final: bool = False) -> None:
        """Publish the checkpoints that are due (every one, closing the chains, if final)."""
        for point in self.encoder.checkpoints(final=final):
            await self.bus.publish(topics.checkpoint_topic(self.signer.identity),
                                   self.encoder.encode(point), qos=1)

    def flush_nowait(self) -> None:
        """:meth:`flush` without waiting for the broker's acknowledgements."""
        for point in self.encoder.checkpoints():
            self.bus.publish_nowait(topics.checkpoint_topic(self.signer.identity),
                                    self.encoder.encode(point), qos=1)

    async def close(self) -> None:
        """Publish the final checkpoints (a failure is logged); the bus stays open."""
        try:
            await self.flush(final=True)
        except TransportError as exc:
            log.warning("final checkpoints not published: %r", exc)


async def final_checkpoints(bus: Transport, encoder: Encoder, topic: str) -> None:
    """Publish the closing checkpoints of ``encoder`` if it is a session encoder (what a
    robot whose agent only holds its encoder does before it leaves); failures are logged."""
    if not isinstance(encoder, SessionEncoder):
        return
    try:
        for point in encoder.checkpoints(final=True):
            await bus.publish(topic, encoder.encode(point), qos=1)
    except TransportError as exc:
        log.warning("final checkpoints not published: %r", exc)


class PoolSessions:
    """The pool's side without I/O: the sessions of the robots that offered one to pool
    ``secret.pool``, what to answer a refused session with, the worker's encoder. Used by
    :class:`PoolLink` and by ``vlabus worker --session-pool`` (which publishes from the
    transport's receive callback, without awaiting)."""

    def __init__(self, secret: PoolSecret, *, rotation: Rotation | None = None,
                 checkpoint_interval_s: float = 1.0, clock: Clock = time.time_ns) -> None:
        self.secret = secret
        self.rotation = rotation or Rotation()
        self.table = SessionTable(self.rotation, clock=clock)
        self.verifier = SessionVerifier(self.table, "up")
        self.interval_s = checkpoint_interval_s
        self._clock = clock
        self._refused: dict[str, int] = {}  # session -> when its robot was last told
        #: refusals sent, as (robot, session, reason)
        self.refusals: list[tuple[str, str, str]] = []

    def encoder(self, signer: Signer, **options: Any) -> SessionEncoder:
        """A worker's encoder: replies under the robot's session when it has one, else signed."""
        return SessionEncoder(signer, self._pick, "down", checkpoint_interval_s=self.interval_s,
                              clock=self._clock, **options)

    def _pick(self, message: Message) -> Any:
        robot = getattr(message, "robot_id", None)
        return None if robot is None else self.table.for_robot(robot)

    def take(self, got: Received) -> bool:
        """True when ``got`` is a session offer (now held, or not for this pool: ignored)."""
        if not isinstance(got.message, SessionOffer):
            return False
        try:
            self.table.add(accept_offer(got.message, got.header.key, self.secret,
                                        self.rotation))
        except SessionError as exc:
            log.debug("offer not for this pool: %r", exc)
        return True

    def refusal(self, exc: WireError, topic: str, worker: str) -> tuple[str, SessionRefused] | None:
        """(topic, message) to tell the robot its session was refused, or None: not a session
        error, not a robot's topic, or that session's robot was told less than 1 s ago."""
        robot = topics.robot_of(topic)
        if not isinstance(exc, SessionError) or robot is None:
            return None
        now = self._clock()
        last = self._refused.get(exc.session)
        if last is not None and now - last < 1_000_000_000:
            return None
        self._refused[exc.session] = now
        if len(self._refused) > 4096:
            self._refused.pop(next(iter(self._refused)))
        self.refusals.append((robot, exc.session, exc.reason.value))
        return topics.action_topic(robot), SessionRefused(
            worker_id=worker, robot_id=robot, session=exc.session, reason=exc.reason.value,
            time_ns=now)


class PoolLink:
    """A worker's side of the sessions of every robot that offers one to its pool."""

    def __init__(self, bus: Transport, signer: Signer, secret: PoolSecret, keyring: Keyring, *,
                 rotation: Rotation | None = None, checkpoint_interval_s: float = 1.0,
                 clock: Clock = time.time_ns, **encoder: Any) -> None:
        self.bus = bus
        self.signer = signer
        self.pool = PoolSessions(secret, rotation=rotation,
                                 checkpoint_interval_s=checkpoint_interval_s, clock=clock)
        self.table = self.pool.table
        self.encoder = self.pool.encoder(signer, **encoder)
        self.decoder = Decoder(keyring, guard=ReplayGuard(clock=clock),
                               sessions=self.pool.verifier)
        self.rejections = Rejections()

    async def start(self) -> None:
        """Subscribe to every robot's offers (each worker needs each session key)."""
        await self.bus.subscribe(topics.ALL_SESSION_OFFERS, qos=1)

    async def accept(self, message: BusMessage) -> Received | None:
        """A verified request, or None: offers are taken in, refusals sent, bad input
        counted. Never raises for bad input."""
        try:
            received = self.decoder.decode(message.payload)
        except WireError as exc:
            self.rejections.reject(exc, message.topic)
            refusal = self.pool.refusal(exc, message.topic, self.signer.identity)
            if refusal is not None:
                await self.bus.publish(refusal[0], self.encoder.encode(refusal[1]), qos=1)
            return None
        return None if self.pool.take(received) else received

    async def reply(self, topic: str, message: Message, *, qos: int = 1, **kw: Any) -> bytes:
        """Encode (MACed under the robot's session when it has one) and publish a reply."""
        wire = self.encoder.encode(message, **kw)
        await self.bus.publish(topic, wire, qos=qos)
        await self.flush()
        return wire

    async def flush(self, *, final: bool = False) -> None:
        for point in self.encoder.checkpoints(final=final):
            await self.bus.publish(topics.worker_checkpoint_topic(self.signer.identity),
                                   self.encoder.encode(point), qos=1)

    async def close(self) -> None:
        await self.flush(final=True)


