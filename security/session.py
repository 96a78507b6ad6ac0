"""Session keys between a robot and its worker pool, and the keyed MAC that uses them. No I/O.

The exchange (one message, no round trip)::

    robot: e = fresh X25519 key; offer = SessionOffer(robot, pool, sid, e.public, limits)
           sent in an Ed25519-signed envelope (its signature authenticates e to the pool)
    pool:  shared = X25519(pool secret, e.public)      robot: shared = X25519(e, pool public)
    both:  master = BLAKE3 derive_key("vlabus 2026 session master v1",
                                      shared ‖ e.public ‖ pool public ‖ sid ‖ robot)
           up   = BLAKE3 keyed(master, "up")    robot → pool
           down = BLAKE3 keyed(master, "down")  pool → robot

The pool's X25519 key is the one already used for sealing (``DIR/pool/NAME.pub.pem``): a
robot's frames reach *any* worker of a shared subscription, so every worker of the pool must
hold the session key, and the pool key gives it to exactly those workers without a round trip.

A message's tag is ``BLAKE3 keyed(direction key, BLAKE3-256(bytes))``: the digest is computed
once and also feeds the sender's checkpoint chain (``security.checkpoint``).

A session ends after ``max_age_ns`` or ``max_messages``, on reconnect, or when a receiver
refuses it; :class:`SessionSender` then asks for a new offer. :class:`SessionTable` refuses a
message under a session it does not hold (``unknown_session``) or that ran out
(``expired_session``), never silently.
"""

from __future__ import annotations

import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import blake3
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from schemas.errors import MacError, Reason, SessionError
from schemas.messages import SessionOffer
from security.seal import PoolKey, PoolSecret

Clock = Callable[[], int]
Direction = Literal["up", "down"]
TAG_SIZE = 32
_MASTER_CONTEXT = "vlabus 2026-12 session master v1"


def digest_of(*parts: bytes | memoryview) -> bytes:
    """BLAKE3-256 over ``parts`` concatenated: what a tag and a checkpoint chain cover."""
    hasher = blake3.blake3()
    for part in parts:
        hasher.update(part)
    return hasher.digest()


@dataclass(frozen=True, slots=True)
class Rotation:
    """When a session ends: after ``max_age_s`` seconds or ``max_messages`` messages."""

    max_age_s: float = 600.0
    max_messages: int = 1 << 20
    #: a receiver keeps an expired session this long, to refuse it as expired, not unknown
    remember_s: float = 600.0
    #: a robot's older session stays valid this long after a newer one arrives (in flight)
    overlap_s: float = 5.0


@dataclass(slots=True)
class Session:
    """One agreed session: its id, who it binds, its two keys and its limits."""

    sid: str
    robot: str
    robot_key: str
    pool: str
    up: bytes
    down: bytes
    expires_ns: int
    max_messages: int
    used: int = 0

    def key(self, direction: Direction) -> bytes:
        return self.up if direction == "up" else self.down

    def tag(self, direction: Direction, digest: bytes) -> bytes:
        """The MAC of a message whose BLAKE3 digest is ``digest``."""
        return blake3.blake3(digest, key=self.key(direction)).digest()

    def check(self, direction: Direction, digest: bytes, tag: bytes | memoryview,
              sender: str) -> None:
        """Raise ``MacError`` unless ``tag`` is the MAC of ``digest`` (constant time)."""
        if not hmac.compare_digest(self.tag(direction, digest), bytes(tag)):
            raise MacError(self.sid, sender)


def _derive(shared: bytes, ephemeral: bytes, pool: bytes, sid: str, robot: str) -> tuple[
        bytes, bytes]:
    material = b"".join((shared, ephemeral, pool, sid.encode(), robot.encode()))
    master = blake3.blake3(material, derive_key_context=_MASTER_CONTEXT).digest()
    return (blake3.blake3(b"up", key=master).digest(),
            blake3.blake3(b"down", key=master).digest())


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def offer_session(robot: str, robot_key: str, pool: PoolKey, rotation: Rotation, *,
                  clock: Clock = time.time_ns) -> tuple[SessionOffer, Session]:
    """A fresh offer for ``pool`` (to send in a signed envelope) and the robot's session."""
    ephemeral = X25519PrivateKey.generate()
    eph_raw = _raw(ephemeral.public_key())
    sid = os.urandom(8).hex()
    now = clock()
    expires = now + int(rotation.max_age_s * 1e9)
    up, down = _derive(ephemeral.exchange(pool.key), eph_raw, _raw(pool.key), sid, robot)
    offer = SessionOffer(robot_id=robot, pool=pool.pool, session=sid, ephemeral=eph_raw,
                         created_ns=now, expires_ns=expires, max_messages=rotation.max_messages)
    return offer, Session(sid, robot, robot_key, pool.pool, up, down, expires,
                          rotation.max_messages)


def accept_offer(offer: SessionOffer, robot_key: str, secret: PoolSecret,
                 rotation: Rotation) -> Session:
    """The pool's side of ``offer``, which arrived in an envelope verified as ``robot_key``'s.
    The pool's own limits cap the robot's (a robot cannot ask for a session that never ends)."""
    if offer.pool != secret.pool:
        raise SessionError(offer.session, f"offer is for pool {offer.pool!r}, not "
                           f"{secret.pool!r}", reason=Reason.UNKNOWN_SESSION)
    shared = secret.key.exchange(X25519PublicKey.from_public_bytes(offer.ephemeral))
    up, down = _derive(shared, offer.ephemeral, _raw(secret.key.public_key()), offer.session,
                       offer.robot_id)
    expires = min(offer.expires_ns, offer.created_ns + int(rotation.max_age_s * 1e9))
    return Session(offer.session, offer.robot_id, robot_key, secret.pool, up, down, expires,
                   min(offer.max_messages, rotation.max_messages))


@dataclass
class SessionSender:
    """The sending side's current session: ``current()`` is None when there is none or it ran
    out (by time or count), which means: make and send a new offer first."""

    rotation: Rotation = field(default_factory=Rotation)
    clock: Clock = time.time_ns
    session: Session | None = None
    #: why the last session ended ("time", "count", "reconnect", or a receiver's reason)
    ended: str = ""

    def current(self) -> Session | None:
        """The session to use for the next message, counting it; None if a new one is due."""
        session = self.session
        if session is None:
            return None
        if self.clock() >= session.expires_ns:
            self.end("time")
            return None
        if session.used >= session.max_messages:
            self.end("count")
            return None
        session.used += 1
        return session

    def end(self, why: str, sid: str | None = None) -> None:
        """End the session (only ``sid``'s when given: a late refusal of an older session
        must not end the new one)."""
        if self.session is not None and (sid is None or sid == self.session.sid):
            self.session = None
            self.ended = why


class SessionTable:
    """The sessions a receiver holds, by id, bounded; :meth:`lookup` refuses with a reason."""

    def __init__(self, rotation: Rotation | None = None, *, clock: Clock = time.time_ns,
                 max_sessions: int = 4096) -> None:
        self.rotation = rotation or Rotation()
        self._clock = clock
        self._max = max_sessions
        self._live: OrderedDict[str, Session] = OrderedDict()
        self._ended: OrderedDict[str, tuple[int, str]] = OrderedDict()  # sid -> (until, why)

    def add(self, session: Session) -> None:
        """Hold ``session``; a robot's older sessions end ``overlap_s`` later (what is in
        flight under them still arrives)."""
        cut = self._clock() + int(self.rotation.overlap_s * 1e9)
        for sid, old in self._live.items():
            if old.robot == session.robot and old.pool == session.pool and sid != session.sid:
                old.expires_ns = min(old.expires_ns, cut)
        self._live[session.sid] = session
        self._live.move_to_end(session.sid)
        while len(self._live) > self._max:
            self._retire(next(iter(self._live)), "evicted (too many sessions)")

    def lookup(self, sid: str) -> Session:
        """The live session ``sid`` or ``SessionError``; :meth:`count` the message once its
        MAC verified (a forged one must not use up the session)."""
        session = self._live.get(sid)
        if session is None:
            ended = self._ended.get(sid)
            if ended is not None and ended[0] > self._clock():
                raise SessionError(sid, f"expired: {ended[1]}", reason=Reason.EXPIRED_SESSION)
            raise SessionError(sid, "no key for it here (no offer received)",
                               reason=Reason.UNKNOWN_SESSION)
        if self._clock() >= session.expires_ns:
            self._retire(sid, "its time ran out")
            raise SessionError(sid, "expired: its time ran out", reason=Reason.EXPIRED_SESSION)
        if session.used >= session.max_messages:
            self._retire(sid, f"its {session.max_messages} messages are used")
            raise SessionError(sid, f"expired: its {session.max_messages} messages are used",
                               reason=Reason.EXPIRED_SESSION)
        return session

    def count(self, session: Session) -> None:
        session.used += 1

    def get(self, sid: str) -> Session | None:
        return self._live.get(sid)

    def for_robot(self, robot: str) -> Session | None:
        """The newest live session of ``robot`` (what a worker answers it under), or None."""
        now = self._clock()
        for session in reversed(self._live.values()):
            if session.robot == robot and now < session.expires_ns:
                return session
        return None

    def _retire(self, sid: str, why: str) -> None:
        self._live.pop(sid, None)
        self._ended[sid] = (self._clock() + int(self.rotation.remember_s * 1e9), why)
        while len(self._ended) > self._max:
            self._ended.popitem(last=False)

    def __len__(self) -> int:
        return len(self._live)
