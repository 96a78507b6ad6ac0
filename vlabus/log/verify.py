"""Prove every message of a recording with public keys alone (``vlabus log verify``).

* A signed envelope (version 1) is proven by its Ed25519 signature.
* A session-mode envelope (version 2) carries a MAC only its session's holders can check. It is
  proven by a signed :class:`~schemas.messages.Checkpoint` of its sender over its session whose
  chain, recomputed over the recorded messages in sequence order, equals the signed one.

Reported, each with its reason: messages that fail (``refused``: a flipped byte, an unknown key,
a forged checkpoint, a session message whose bytes the sender's chain does not hold...),
checkpoints whose range the recording does not hold completely (``gaps``: their messages stay
unproven), checkpoints whose chain does not match (``mismatches``), and session messages no
checkpoint covers (``uncovered``).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import WireError
from schemas.messages import Checkpoint
from security.checkpoint import ZERO, chain_over
from security.keys import Keyring
from security.session import TAG_SIZE, digest_of
from vlabus.envelope import SESSION_VERSION
from vlabus.log.reader import LogRecord
from vlabus.wire import Decoder

_Key = tuple[str, str]  # (sender, session)
_MAX_TRIES = 256


@dataclass
class _Pending:
    topic: str
    position: int
    digest: bytes


@dataclass
class Verification:
    """What ``vlabus log verify`` found; ``ok`` only when every envelope is proven."""

    messages: int = 0
    not_envelopes: int = 0
    signed: int = 0
    session_proven: int = 0
    checkpoints: int = 0
    refused: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    uncovered: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.refused or self.gaps or self.mismatches or self.uncovered)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "messages": self.messages, "not_envelopes": self.not_envelopes,
                "signed_verified": self.signed, "session_proven": self.session_proven,
                "checkpoints": self.checkpoints, "refused": self.refused, "gaps": self.gaps,
                "mismatches": self.mismatches, "uncovered": self.uncovered}


def verify_records(records: Iterable[LogRecord], keyring: Keyring) -> Verification:
    """Check ``records`` (one recording, in file order) against ``keyring``'s public keys."""
    result = Verification()
    decoder = Decoder(keyring)  # no replay guard: a recording holds what it holds
    sent: dict[_Key, dict[int, list[_Pending]]] = defaultdict(lambda: defaultdict(list))
    points: dict[_Key, list[Checkpoint]] = defaultdict(list)
    for record in records:
        result.messages += 1
        if record.format != "envelope":
            result.not_envelopes += 1
            continue
        view = memoryview(record.data)
        try:
            header = decoder.read_header(view)
            if view[2] == SESSION_VERSION:
                digest = digest_of(view[: len(view) - TAG_SIZE])
                sent[(header.sender, header.key)][header.seq].append(
                    _Pending(record.topic, record.position, digest))
                continue
            received = decoder.decode(view)
        except WireError as exc:
            result.refused.append({"position": record.position, "topic": record.topic,
                                   "reason": exc.reason.value, "detail": exc.detail})
            continue
        result.signed += 1
        if isinstance(received.message, Checkpoint):
            point = received.message
            result.checkpoints += 1
            points[(point.sender, point.session)].append(point)
    for key, by_seq in sent.items():
        _prove(result, key, by_seq, points.get(key, []))
    return result


def _prove(result: Verification, key: _Key, by_seq: dict[int, list[_Pending]],
           points: list[Checkpoint]) -> None:
    sender, session = key
    covered: set[int] = set()
    previous = None
    for point in sorted(points, key=lambda p: (p.last_seq, p.count == 0, p.time_ns)):
        seqs = [s for s in sorted(by_seq) if point.count and point.first_seq <= s <= point.last_seq]
        covered.update(seqs)
        where = {"sender": sender, "session": session, "first_seq": point.first_seq,
                 "last_seq": point.last_seq}
        if point.prev != (ZERO if previous is None else previous.chain):
            result.gaps.append({**where, "reason": "a checkpoint before this one is missing",
                                "expected": point.count, "recorded": len(seqs)})
        previous = point
        if len(seqs) != point.count:
            result.gaps.append({**where, "reason": f"{point.count - len(seqs)} of its "
                                f"{point.count} messages are not in the recording",
                                "expected": point.count, "recorded": len(seqs)})
            continue
        # identical copies (a QoS 1 redelivery recorded twice) count once; where copies differ
        # (someone sent other bytes under the sender's name), the chain says which is real
        options = [sorted({p.digest for p in by_seq[s]}) for s in seqs]
        real = _matching(point, seqs, options)
        if real is None:
            result.mismatches.append({**where, "reason": "the recorded messages do not hash to "
                                      "the signed chain (one was altered or is not the sender's)"})
            continue
        for seq, digest in zip(seqs, real, strict=True):
            for pending in by_seq[seq]:
                if pending.digest == digest:
                    result.session_proven += 1
                else:
                    result.refused.append({
                        "position": pending.position, "topic": pending.topic,
                        "reason": "not_in_chain", "detail": f"{sender} seq {seq} under session "
                        f"{session}: other bytes than the sender's signed chain holds"})
    for seq in sorted(set(by_seq) - covered):
        for pending in by_seq[seq]:
            result.uncovered.append({"position": pending.position, "topic": pending.topic,
                                     "sender": sender, "session": session, "seq": seq})


def _matching(point: Checkpoint, seqs: list[int], options: list[list[bytes]]) -> list[bytes] | None:
    """The one digest per sequence number whose chain equals the checkpoint's, trying every
    combination where copies differ (at most ``_MAX_TRIES``), else None."""
    tries = 1
    for digests in options:
        tries *= len(digests)
    if tries > _MAX_TRIES:
        return None
    for combo in itertools.product(*options):
        if chain_over(point.prev, zip(seqs, combo, strict=True)) == point.chain:
            return list(combo)
    return None
