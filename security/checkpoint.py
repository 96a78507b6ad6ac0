"""Digest chains and signed checkpoints: what keeps session-mode recordings provable. No I/O.

A sender chains the BLAKE3 digest of every message it sends under a session::

    chain_0 = prev (32 zero bytes for a session's first checkpoint)
    chain_i = BLAKE3(chain_{i-1} ‖ seq_i as 8 bytes big-endian ‖ digest_i)

and publishes, every ``interval`` and when it closes, a ``Checkpoint`` (sender, session, first
and last sequence number, count, prev, chain) in an Ed25519-signed envelope. Each checkpoint
starts where the previous one ended, so they link too. Anyone with the sender's public key can
then recompute the chain over the recorded messages and prove each one — the MAC could only be
checked with the session key, which a verifier does not have.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import blake3

from schemas.messages import Checkpoint

ZERO = bytes(32)
_SEQ = struct.Struct(">Q")
Clock = Callable[[], int]


def chain_step(chain: bytes, seq: int, digest: bytes) -> bytes:
    """The chain after the message ``seq`` with BLAKE3 digest ``digest``."""
    return blake3.blake3(chain + _SEQ.pack(seq) + digest).digest()


def chain_over(prev: bytes, entries: Iterable[tuple[int, bytes]]) -> bytes:
    """The chain from ``prev`` over ``(seq, digest)`` pairs in the order given."""
    chain = prev
    for seq, digest in entries:
        chain = chain_step(chain, seq, digest)
    return chain


@dataclass
class Chain:
    """A sender's running chain under one session, cut into checkpoints.

    ``add`` each message as it is sent; ``due()`` says a checkpoint is owed (``interval_ns``
    passed since the last one with messages waiting); ``cut()`` returns it and starts the next.
    """

    sender: str
    session: str
    interval_ns: int = 1_000_000_000
    clock: Clock = time.time_ns
    prev: bytes = ZERO
    chain: bytes = ZERO
    first_seq: int = -1
    last_seq: int = -1
    count: int = 0
    last_cut_ns: int = 0
    _last_ever: int = -1

    def __post_init__(self) -> None:
        self.chain = self.prev
        self.last_cut_ns = self.clock()

    def add(self, seq: int, digest: bytes) -> None:
        if self.count == 0:
            self.first_seq = seq
        self.chain = chain_step(self.chain, seq, digest)
        self.last_seq = self._last_ever = seq
        self.count += 1

    def due(self) -> bool:
        return self.count > 0 and self.clock() - self.last_cut_ns >= self.interval_ns

    def cut(self, *, final: bool = False) -> Checkpoint | None:
        """The checkpoint over the messages added since the last cut (None if there were
        none and it is not ``final``); the next one continues the chain."""
        now = self.clock()
        self.last_cut_ns = now
        if self.count == 0 and not final:
            return None
        if self.count == 0:  # a final one with nothing new: it marks the end, after the last
            self.first_seq = self.last_seq = max(self._last_ever, 0)
        point = Checkpoint(sender=self.sender, session=self.session,
                           first_seq=self.first_seq, last_seq=self.last_seq,
                           count=self.count, prev=self.prev, chain=self.chain, time_ns=now,
                           final=final)
        self.prev = self.chain
        self.count = 0
        self.first_seq = self.last_seq = -1
        return point
