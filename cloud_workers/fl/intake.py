"""One round's intake of robot updates: every refusal has a reason, and each is counted.

Envelope checks come first (:class:`~vlabus.wire.Decoder`: signature by a ``robot`` key whose
identity is the update's ``robot_id``, replay guard); then the manifest is checked against the
round; then the chunks are written at their offsets into a part file in ``spool`` (memory
stays one chunk per message), each hash-checked against the manifest, as a robot does with a
model release; a complete file is hash-checked whole, decoded, checked for finite values and
norm, and clipped. Reasons (:class:`Refusal`):

``malformed``     unreadable, wrong size, wrong shapes or precision, bad chunk hash
``non_finite``    NaN or infinite values (or scales)
``over_norm``     L2 norm over ``over_norm`` x the clip: not a rounding error, a scaled update
``wrong_base``    trained on another base model than the one announced
``late``          for a closed round, or chunks still missing at the deadline
``second_update`` the key already sent an update this round (one key counts once)
``replayed``      the same envelope again, or an update file seen in an earlier round
``unverified``    no valid signature from a known robot key
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from schemas.errors import Reason, WireError
from schemas.messages import RoundAnnouncement, UpdateChunk, UpdateManifest
from vlabus.bus.transport import Message
from vlabus.envelope import Header
from vlabus.fl.delta import Delta, DeltaError, Shapes, clip, decode_delta
from vlabus.wire import Decoder

log = logging.getLogger(__name__)


class Refusal(StrEnum):
    MALFORMED = "malformed"
    NON_FINITE = "non_finite"
    OVER_NORM = "over_norm"
    WRONG_BASE = "wrong_base"
    LATE = "late"
    SECOND_UPDATE = "second_update"
    REPLAYED = "replayed"
    UNVERIFIED = "unverified"


@dataclass(frozen=True, slots=True)
class Accepted:
    """A checked, centrally clipped delta from one robot."""

    robot_id: str
    delta: Delta
    examples: int
    epsilon: float
    norm: float


@dataclass
class _Part:
    manifest: UpdateManifest
    path: Path
    have: set[int] = field(default_factory=set)


def max_file_bytes(shapes: Shapes) -> int:
    """The largest honest update file: fp16 of every tensor plus a generous header."""
    return 2 * sum(math.prod(s) for s in shapes.values()) + 64 * len(shapes) + (64 << 10)


class RoundIntake:
    """Checks the updates of one announced round; see the module docstring."""

    def __init__(self, announcement: RoundAnnouncement, shapes: Shapes, spool: Path, *,
                 over_norm: float = 2.0, seen: OrderedDict[str, None] | None = None,
                 refused: Counter[str] | None = None) -> None:
        self.round = announcement
        self.shapes = dict(shapes)
        self.spool = spool
        self.over_norm = over_norm
        self.max_bytes = max_file_bytes(shapes)
        self.open = True
        self.refused: Counter[str] = refused if refused is not None else Counter()
        self.epsilon: dict[str, float] = {}
        self._seen = seen if seen is not None else OrderedDict()  # update sha256, all rounds
        self._senders: set[str] = set()
        self._claimed: set[str] = set()  # senders named by refused replays (not verified)
        self._parts: dict[str, _Part] = {}
        self.orphan_chunks = 0
        spool.mkdir(parents=True, exist_ok=True)

    def refuse(self, reason: Refusal, robot: str, detail: str) -> None:
        self.refused[reason.value] += 1
        log.warning("round %d: update from %r refused (%s): %s", self.round.round, robot,
                    reason.value, detail)

    def on_message(self, decoder: Decoder, message: Message) -> Accepted | None:
        """Verify and route one message from an update topic; an update that completes and
        passes every check comes back, anything refused is counted."""
        try:
            received = decoder.decode(message.payload)
        except WireError as exc:
            header = _header(decoder, message.payload)
            sender = "?" if header is None else header.sender
            if header is not None and header.kind != "fl_update":
                self.orphan_chunks += 1  # a chunk redelivered (QoS 1) or of a refused update
            elif exc.reason in (Reason.DUPLICATE, Reason.REPLAY, Reason.STALE):
                self.refuse(Refusal.REPLAYED, sender, str(exc))
                self._claimed.add(sender)
            else:
                self.refuse(Refusal.UNVERIFIED, sender, str(exc))
            return None
        body = received.message
        if isinstance(body, UpdateManifest):
            self.on_manifest(body)
            return None
        if isinstance(body, UpdateChunk):
            return self.on_chunk(body)
        self.refuse(Refusal.MALFORMED, received.header.sender, f"{type(body).__name__} "
                    "on an update topic")
        return None

    def on_manifest(self, update: UpdateManifest) -> None:
        robot, current = update.robot_id, self.round
        file = update.file
        if update.model != current.model or update.round > current.round:
            self.refuse(Refusal.MALFORMED, robot, f"for {update.model} round {update.round}")
            return
        if update.round < current.round or not self.open:
            self.refuse(Refusal.LATE, robot, f"round {update.round} is closed")
            return
        if robot in self._senders:  # one key counts once a round, whatever came first
            self.refuse(Refusal.SECOND_UPDATE, robot, f"round {current.round}")
            return
        self._senders.add(robot)
        if update.base_version != current.base_version or \
                update.base_sha256 != current.base_sha256:
            self.refuse(Refusal.WRONG_BASE, robot, f"base v{update.base_version}")
        elif file.sha256 in self._seen:
            self.refuse(Refusal.REPLAYED, robot, f"file {file.sha256[:12]} seen before")
        elif update.precision != current.precision or file.size == 0 or \
                file.size > self.max_bytes or \
                len(file.chunk_sha256) != math.ceil(file.size / file.chunk_size):
            self.refuse(Refusal.MALFORMED, robot, f"{file.size} bytes at {update.precision}")
        else:
            self._remember(file.sha256)
            path = self.spool / f"{robot}.part"
            with open(path, "wb") as handle:
                handle.truncate(file.size)
            self._parts[robot] = _Part(update, path)

    def on_chunk(self, chunk: UpdateChunk) -> Accepted | None:
        part = self._parts.get(chunk.robot_id)
        if part is None or chunk.round != self.round.round or not self.open:
            self.orphan_chunks += 1  # of a refused, finished or unknown update
            return None
        file = part.manifest.file
        if chunk.index >= len(file.chunk_sha256) or chunk.index in part.have:
            self.orphan_chunks += 1
            return None
        offset = chunk.index * file.chunk_size
        if len(chunk.data) != min(file.chunk_size, file.size - offset) or \
                hashlib.sha256(chunk.data).hexdigest() != file.chunk_sha256[chunk.index]:
            self._drop(chunk.robot_id)
            self.refuse(Refusal.MALFORMED, chunk.robot_id, f"chunk {chunk.index} hash")
            return None
        fd = os.open(part.path, os.O_WRONLY)
        try:
            os.pwrite(fd, chunk.data, offset)
        finally:
            os.close(fd)
        part.have.add(chunk.index)
        if len(part.have) < len(file.chunk_sha256):
            return None
        return self._finish(chunk.robot_id)

    def _finish(self, robot: str) -> Accepted | None:
        part = self._drop(robot)
        assert part is not None
        data = part.path.read_bytes()
        part.path.unlink(missing_ok=True)
        update = part.manifest
        if hashlib.sha256(data).hexdigest() != update.file.sha256:
            self.refuse(Refusal.MALFORMED, robot, "file hash")
            return None
        try:
            delta = decode_delta(data, self.shapes, update.precision)
        except DeltaError as exc:
            self.refuse(Refusal(exc.reason), robot, str(exc))
            return None
        missing = set(self.shapes) - set(delta)
        if missing:
            self.refuse(Refusal.MALFORMED, robot, f"missing tensors {sorted(missing)[:3]}")
            return None
        bound = self.round.update_clip
        clipped, size = clip(delta, bound)
        if size > self.over_norm * bound:
            self.refuse(Refusal.OVER_NORM, robot, f"norm {size:.4g} > {self.over_norm} x "
                        f"clip {bound:.4g}")
            return None
        self.epsilon[robot] = update.epsilon
        examples = min(update.examples, self.round.examples)
        return Accepted(robot, clipped, max(1, examples), update.epsilon, size)

    def answered(self) -> int:
        """Robots whose update for this round is settled: accepted or refused (the round may
        close early once every expected robot has answered)."""
        return len((self._senders | self._claimed) - set(self._parts))

    def close(self) -> None:
        """The deadline passed: whatever is still incomplete is late."""
        self.open = False
        for robot in list(self._parts):
            self._drop(robot)
            self.refuse(Refusal.LATE, robot, "chunks missing at the deadline")

    def _drop(self, robot: str) -> _Part | None:
        part = self._parts.pop(robot, None)
        if part is not None and not part.have.issuperset(range(len(part.manifest.file
                                                                  .chunk_sha256))):
            part.path.unlink(missing_ok=True)
        return part

    def _remember(self, sha: str) -> None:
        self._seen[sha] = None
        while len(self._seen) > 65536:
            self._seen.popitem(last=False)


def _header(decoder: Decoder, payload: bytes | memoryview) -> Header | None:
    """The header of a refused envelope, unverified: only to tell a replayed update from a
    redelivered chunk in the counts, and who claims to have sent it."""
    try:
        return decoder.read_header(memoryview(payload))
    except WireError:
        return None
