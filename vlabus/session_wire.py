"""Session integrity on the wire: envelope version 2, with a keyed MAC instead of a signature.

Layout: the version-1 envelope (:mod:`vlabus.wire`) with byte 2 = ``0x02``, the header's
``key`` naming the session (16 hex digits) instead of a signing key, and a 32-byte trailer::

    tag = BLAKE3 keyed(session direction key, BLAKE3-256(bytes 0..N-32))

Only the hot-path kinds (``SESSION_KINDS``: frames, tasks, actions, declines, task results)
travel this way; releases, status, offers, refusals and checkpoints keep their Ed25519
signatures. Without a live session an encoder signs, as version 1, so no message waits for a
handshake.
The digest of each session message feeds the sender's checkpoint chain
(:mod:`security.checkpoint`), cut every ``checkpoint_interval_s`` and on close.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from schemas.errors import IdentityMismatchError
from schemas.messages import Checkpoint, Message
from security.checkpoint import Chain
from security.keys import Role, Signer
from security.session import TAG_SIZE, Direction, Session, SessionTable, digest_of
from vlabus.envelope import SESSION_VERSION, VERSION, Header
from vlabus.wire import Encoder

SESSION_KINDS = frozenset({"frame", "task", "action", "declined", "task_result"})
#: Picks the session for a message (None: sign it instead).
Pick = Callable[[Message], Session | None]


class SessionEncoder(Encoder):
    """An :class:`~vlabus.wire.Encoder` that MACs hot-path kinds under the session ``pick``
    returns for each message (direction ``up`` on a robot, ``down`` on a worker) and chains
    their digests for checkpoints. Everything else is signed as before."""

    def __init__(self, signer: Signer, pick: Pick, direction: Direction, *,
                 checkpoint_interval_s: float = 1.0, **options: Any) -> None:
        super().__init__(signer, **options)
        self._pick = pick
        self.direction: Direction = direction
        self._interval_ns = int(checkpoint_interval_s * 1e9)
        self._next: Session | None = None
        self._chains: dict[str, Chain] = {}
        #: messages sent per mode, for metrics and benches
        self.sent = {"session": 0, "signed": 0}

    def _encode(self, kind: str, message: Message, **kw: Any) -> bytes | memoryview:
        self._next = self._pick(message) if kind in SESSION_KINDS else None
        return super()._encode(kind, message, **kw)

    def _mode(self, kind: str) -> tuple[int, str]:
        if self._next is None:
            self.sent["signed"] += 1
            return VERSION, self.signer.key_id
        self.sent["session"] += 1
        return SESSION_VERSION, self._next.sid

    def _tag(self, version: int, seq: int, *parts: bytes | memoryview) -> bytes:
        session = self._next
        if version != SESSION_VERSION or session is None:
            return self.signer.sign(*parts)
        digest = digest_of(*parts)
        chain = self._chains.get(session.sid)
        if chain is None:
            chain = self._chains[session.sid] = Chain(
                self.signer.identity, session.sid, self._interval_ns, self._clock)
        chain.add(seq, digest)
        return session.tag(self.direction, digest)

    def checkpoints(self, *, final: bool = False) -> list[Checkpoint]:
        """The checkpoints owed now (all of them, and closing each chain, when ``final``);
        send each through :meth:`encode` (they are signed) to a checkpoint topic."""
        with self._lock:
            out = []
            for sid, chain in list(self._chains.items()):
                if final or chain.due():
                    point = chain.cut(final=final)
                    if point is not None:
                        out.append(point)
                if final:
                    del self._chains[sid]
            return out


@dataclass
class SessionVerifier:
    """Checks version-2 envelopes against ``table`` (what :class:`~vlabus.wire.Decoder` calls
    as ``sessions``). ``direction`` is what this side receives: ``up`` on a worker, where the
    session binds the robot's identity, ``down`` on a robot, where any worker of the pool may
    answer (a MAC cannot tell the pool's workers apart; their checkpoints can)."""

    table: SessionTable
    direction: Direction

    def authenticate(self, header: Header, view: memoryview) -> tuple[Role, str, str, bytes]:
        session = self.table.lookup(header.key)
        size = len(view)
        tag = bytes(view[size - TAG_SIZE:])
        session.check(self.direction, digest_of(view[: size - TAG_SIZE]), tag, header.sender)
        self.table.count(session)
        if self.direction == "up":
            if header.sender != session.robot:
                raise IdentityMismatchError(
                    f"session {session.sid} belongs to {session.robot!r}, header says "
                    f"{header.sender!r}")
            return "robot", session.robot, f"{session.sid}/{session.robot}", tag
        return "worker", header.sender, f"{session.sid}/{header.sender}", tag
