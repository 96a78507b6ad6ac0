"""The envelope's layout: its constants, :class:`Header`, limits, who may send each kind, and
the :class:`Received` result. Pure values; :mod:`vlabus.wire` encodes and decodes with them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Protocol

import msgspec

from schemas.errors import (
    TopicMismatchError,
)
from schemas.messages import Message, Priority
from schemas.topics import robot_of
from security.keys import Role

MAGIC = b"VB"
VERSION = 1
SESSION_VERSION = 2
PREFIX_SIZE = 5
SIGNATURE_SIZE = 64
ENC_LZ4 = 1
ENC_SEAL = 2
KNOWN_ENC = ENC_LZ4 | ENC_SEAL
_PREFIX = struct.Struct(">2sBH")

Clock = Callable[[], int]
#: What msgspec raises on bytes it cannot read: invalid or mistyped MessagePack (``DecodeError``
#: and its ``ValidationError``), invalid UTF-8 in a string (``UnicodeDecodeError``, not a
#: ``DecodeError``) and nesting past its recursion limit (``RecursionError``).
_UNREADABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


class Header(msgspec.Struct, frozen=True, kw_only=True):
    """Envelope header; a MessagePack map with these keys."""

    kind: Annotated[str, msgspec.Meta(max_length=32)]
    sender: Annotated[str, msgspec.Meta(max_length=64)]
    key: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16}$")]
    seq: Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
    sent_ns: Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
    deadline_ns: Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)] = 0
    priority: Annotated[int, msgspec.Meta(ge=0, le=4)] = Priority.NORMAL
    corr: Annotated[str, msgspec.Meta(max_length=64)] = ""
    enc: Annotated[int, msgspec.Meta(ge=0, le=255)] = 0
    raw_len: Annotated[int, msgspec.Meta(ge=0, lt=1 << 40)] = 0


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on what one envelope may cost a receiver."""

    max_envelope: int = 16 << 20
    max_header: int = 1024
    max_body: int = 16 << 20


_MAX_BODY = Limits().max_body
#: Room an encoder leaves in front of the body for prefix and header (a header is at most
#: ~300 bytes: its strings are capped); a larger one falls back to joining the parts.
_HEAD_ROOM = 384
_SKIP_FIRST = 16  # after lz4 fails to pay, skip it for this many messages of the kind...
_SKIP_MAX = 1024  # ...doubling on each further failure up to this (~20 s at 50 Hz)


#: Roles allowed to send each kind, and the body field that must equal the sender's identity.
SENDER_ROLES: dict[str, frozenset[Role]] = {
    "frame": frozenset({"robot"}),
    "task": frozenset({"robot"}),
    "action": frozenset({"worker"}),
    "declined": frozenset({"worker"}),
    "task_result": frozenset({"worker"}),
    "model_manifest": frozenset({"release", "root"}),
    "model_chunk": frozenset({"release", "root"}),
    "status": frozenset({"robot", "worker", "release", "replay"}),
    "session_offer": frozenset({"robot"}),
    "session_refused": frozenset({"worker"}),
    "checkpoint": frozenset({"robot", "worker"}),
    "fl_round": frozenset({"release"}),
    "fl_result": frozenset({"release"}),
    "fl_update": frozenset({"robot"}),
    "fl_chunk": frozenset({"robot"}),
}
IDENTITY_FIELD: dict[str, str] = {
    "frame": "robot_id",
    "task": "robot_id",
    "action": "worker_id",
    "declined": "worker_id",
    "task_result": "worker_id",
    "status": "client_id",
    "session_offer": "robot_id",
    "session_refused": "worker_id",
    "checkpoint": "sender",
    "fl_round": "coordinator",
    "fl_result": "coordinator",
    "fl_update": "robot_id",
    "fl_chunk": "robot_id",
}
#: The body field that must equal the robot id of the per-robot topic a message arrived on.
TOPIC_FIELD: dict[str, str] = {
    "frame": "robot_id",
    "task": "robot_id",
    "action": "robot_id",
    "declined": "robot_id",
    "task_result": "robot_id",
    "status": "client_id",
}
#: Kinds that are retained or long-lived: no clock-skew check (manifests carry an expiry).
UNTIMED_KINDS = frozenset({"status", "model_manifest", "model_chunk", "fl_round", "fl_result"})


class SessionAuth(Protocol):
    """Checks the MAC of a version-2 envelope (:class:`vlabus.session_wire.SessionVerifier`)."""

    def authenticate(self, header: Header, view: memoryview) -> tuple[Role, str, str, bytes]:
        """(role, identity, replay-guard key, tag) of a message whose MAC verifies, or raise."""
        ...


def trailer_size(view: memoryview) -> int:
    """Bytes after the body: a 64-byte signature, or a 32-byte MAC in session mode."""
    return 32 if view[2] == SESSION_VERSION else SIGNATURE_SIZE


@dataclass(frozen=True, slots=True)
class Received:
    """A message that passed every check, with its header and the exact bytes received."""

    header: Header
    message: Message
    wire: bytes | memoryview
    role: Role
    #: what the replay guard records it under (a key id or a session) and its tag
    guard_key: str = ""
    tag: bytes = b""


def check_topic(topic: str, kind: str, message: Message) -> None:
    """Raise ``TopicMismatchError`` when ``topic`` is a per-robot topic and ``message`` names
    another robot (``TOPIC_FIELD``)."""
    field_name = TOPIC_FIELD.get(kind)
    robot = robot_of(topic)
    if field_name is None or robot is None:
        return
    named = getattr(message, field_name)
    if named != robot:
        raise TopicMismatchError(f"{field_name}={named!r} arrived on {topic!r}")


def _header_len(view: memoryview) -> int:
    return int(_PREFIX.unpack_from(view)[2])


def _path_of(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    marker = "at `"
    start = text.rfind(marker)
    return text[start + len(marker): text.rfind("`")] if start >= 0 else "$"
