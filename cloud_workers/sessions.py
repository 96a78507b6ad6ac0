"""A worker's side of session integrity (``vlabus worker --session-pool NAME``).

The worker reads every robot's session offers (not shared: each worker of the pool needs each
key), answers under the robot's session (MACs, envelope version 2), tells a robot whose frame
arrived under a session it does not hold, or that expired, with a signed ``SessionRefused``
(at most once per session per second), and publishes its signed checkpoints every interval and
when it stops. Everything here runs on the event loop and publishes without waiting, so it can
be called from the transport's receive callback. See docs/security-session.md.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from schemas import topics
from schemas.errors import SessionError, WireError
from schemas.messages import Message, SessionOffer, SessionRefused
from security.keys import Signer
from security.seal import PoolSecret
from security.session import Rotation, SessionTable, accept_offer
from vlabus.bus.transport import Message as BusMessage
from vlabus.bus.transport import Transport
from vlabus.session_wire import SessionEncoder, SessionVerifier
from vlabus.wire import Received

log = logging.getLogger(__name__)
_REFUSE_EVERY_NS = 1_000_000_000


class WorkerSessions:
    """The sessions of the robots that offered one to pool ``secret.pool``."""

    def __init__(self, secret: PoolSecret, *, rotation: Rotation | None = None,
                 checkpoint_interval_s: float = 1.0) -> None:
        self.secret = secret
        self.rotation = rotation or Rotation()
        self.table = SessionTable(self.rotation)
        self.verifier = SessionVerifier(self.table, "up")
        self.interval_s = checkpoint_interval_s
        self._refused: dict[str, int] = {}
        #: refusals sent, by reason
        self.refusals: dict[str, int] = {}

    def encoder(self, signer: Signer) -> SessionEncoder:
        """The worker's encoder: replies under the robot's session, the rest signed."""
        return SessionEncoder(signer, self._pick, "down",
                              checkpoint_interval_s=self.interval_s)

    def _pick(self, message: Message) -> Any:
        robot = getattr(message, "robot_id", None)
        return None if robot is None else self.table.for_robot(robot)

    def take(self, got: Received) -> bool:
        """True when ``got`` was a session offer (now held, or not for this pool)."""
        if not isinstance(got.message, SessionOffer):
            return False
        try:
            self.table.add(accept_offer(got.message, got.header.key, self.secret,
                                        self.rotation))
        except SessionError as exc:
            log.debug("offer not for this pool: %r", exc)
        return True

    def refused(self, exc: WireError, message: BusMessage, transport: Transport,
                encoder: SessionEncoder) -> None:
        """Tell the robot when ``exc`` is about its session (unknown or expired)."""
        if not isinstance(exc, SessionError):
            return
        robot = topics.robot_of(message.topic)
        now = time.monotonic_ns()
        last = self._refused.get(exc.session)
        if robot is None or (last is not None and now - last < _REFUSE_EVERY_NS):
            return
        self._refused[exc.session] = now
        if len(self._refused) > 4096:
            self._refused.pop(next(iter(self._refused)))
        refusal = SessionRefused(worker_id=encoder.signer.identity, robot_id=robot,
                                 session=exc.session, reason=exc.reason.value,
                                 time_ns=time.time_ns())
        self.refusals[exc.reason.value] = self.refusals.get(exc.reason.value, 0) + 1
        transport.publish_nowait(topics.action_topic(robot), encoder.encode(refusal), qos=1)

    def checkpoints(self, transport: Transport, encoder: SessionEncoder, *,
                    final: bool = False) -> None:
        """Publish the checkpoints that are due (all, closing the chains, when ``final``)."""
        topic = topics.worker_checkpoint_topic(encoder.signer.identity)
        for point in encoder.checkpoints(final=final):
            transport.publish_nowait(topic, encoder.encode(point), qos=1)
