"""Every message that crosses the bus, as typed frozen values.

Bodies are MessagePack maps whose keys are the field names below. The envelope header names the
kind (``KINDS``), so bodies carry no type tag. Unknown fields are ignored on decode, so a newer
sender may add fields; renaming or removing one is a format-version change.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Literal

import msgspec

from schemas.arrays import NDArray
from schemas.images import Image

Id = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")]
Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
Count = Annotated[int, msgspec.Meta(ge=0)]
Nanos = Annotated[int, msgspec.Meta(ge=0)]
Scalar = str | int | float | bool
Params = Annotated[dict[Annotated[str, msgspec.Meta(max_length=64)], Scalar],
                   msgspec.Meta(max_length=64)]

MAX_CAMERAS = 8
MAX_COMMAND = 1024


class Priority(IntEnum):
    """Lower values are served first; the queue sheds the highest value first."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    BACKGROUND = 4


class Frame(msgspec.Struct, frozen=True, kw_only=True):
    """One observation from a robot: cameras, a language command and the robot state."""

    robot_id: Id
    step: Count
    cameras: Annotated[dict[Name, Image], msgspec.Meta(min_length=1, max_length=MAX_CAMERAS)]
    command: Annotated[str, msgspec.Meta(max_length=MAX_COMMAND)]
    state: NDArray
    capture_ns: Nanos
    safety_critical: bool = False
    model: Name = "default"
    #: a periodic robot (refilling an action chunk): how long until it would send its next
    #: frame on its own; a worker may then suggest when to send it (``Action.slot_ns``).
    #: absent: not stated, no suggestion wanted (absent, not 0, so older frames' bytes stay)
    interval_ns: Nanos | msgspec.UnsetType = msgspec.UNSET


class TaskRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A request beyond per-step frames, e.g. a slower planning model at lower priority."""

    robot_id: Id
    task: Name
    params: Params = {}
    priority: Annotated[int, msgspec.Meta(ge=0, le=4)] = Priority.LOW


class Action(msgspec.Struct, frozen=True, kw_only=True):
    """A policy's answer to one frame: a D action or an HxD chunk executed every ``period_ns``.

    The timing fields are durations measured on the worker's own clock, so the robot can split
    its round trip into robot, transport and worker parts without synchronised clocks.
    """

    robot_id: Id
    step: Count
    actions: NDArray
    period_ns: Nanos = 0
    model: Name
    model_version: Count
    worker_id: Id
    decode_ns: Nanos = 0
    queue_wait_ns: Nanos = 0
    inference_ns: Nanos = 0
    encode_ns: Nanos = 0
    span_ns: Nanos = 0
    #: a suggestion (wall clock, the robot's own): send the next frame at this time, so it
    #: arrives just before a batch planned for it starts. Absent: none. Only for frames that
    #: state ``interval_ns``; a robot may ignore it and must not wait past its own refill
    #: deadline
    slot_ns: Nanos | msgspec.UnsetType = msgspec.UNSET


class Declined(msgspec.Struct, frozen=True, kw_only=True):
    """A worker will not answer frame ``step``: it dropped it before the model because no
    answer could arrive by the robot's decision time (``reason`` ``deadline``). Sent at once, so
    the robot decides locally without waiting for its deadline; ``slot_ns`` as in
    :class:`Action` (when to send the next frame; absent: no suggestion)."""

    robot_id: Id
    step: Count
    worker_id: Id
    reason: Annotated[str, msgspec.Meta(max_length=32)]
    slot_ns: Nanos | msgspec.UnsetType = msgspec.UNSET


class TaskResult(msgspec.Struct, frozen=True, kw_only=True):
    """A worker's answer to a :class:`TaskRequest`."""

    robot_id: Id
    task: Name
    ok: bool
    result: Params = {}
    error: Annotated[str, msgspec.Meta(max_length=1024)] = ""
    worker_id: Id
    queue_wait_ns: Nanos = 0
    inference_ns: Nanos = 0


class ModelManifest(msgspec.Struct, frozen=True, kw_only=True):
    """A signed description of a model release; its chunks follow on the model topic.

    Releases are ordered by (``epoch``, ``version``). A ``release`` key publishes within the
    robot's epoch; only the offline ``root`` key opens a new one (the recovery from a version
    pushed too far, docs/hardening.md)."""

    name: Name
    version: Count
    size: Count
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    chunk_size: Annotated[int, msgspec.Meta(ge=1)]
    chunk_sha256: Annotated[list[Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]],
                            msgspec.Meta(max_length=1 << 16)]
    created_ns: Nanos
    expires_ns: Nanos
    format: Literal["safetensors"] = "safetensors"
    metadata: Annotated[dict[str, str], msgspec.Meta(max_length=64)] = {}
    epoch: Count = 0


class ModelChunk(msgspec.Struct, frozen=True, kw_only=True):
    """One piece of a model release's weight file."""

    name: Name
    version: Count
    index: Count
    data: memoryview


class Status(msgspec.Struct, frozen=True, kw_only=True):
    """Birth (``online``) or death (``offline``) of a client, retained; ``session`` counts its
    connections so a stale death cannot overwrite a newer birth."""

    client_id: Id
    role: Literal["robot", "worker", "recorder", "publisher", "hub"]
    state: Literal["online", "offline"]
    session: Count
    time_ns: Nanos
    models: Annotated[dict[Name, Count], msgspec.Meta(max_length=64)] = {}
    detail: Annotated[dict[str, str], msgspec.Meta(max_length=64)] = {}


class SessionOffer(msgspec.Struct, frozen=True, kw_only=True):
    """A robot's half of a session key exchange (``security.session``), sent in a signed
    envelope: its ephemeral X25519 key for worker pool ``pool``, the session id it will use and
    the limits after which it rotates."""

    robot_id: Id
    pool: Name
    session: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16}$")]
    ephemeral: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    created_ns: Nanos
    expires_ns: Nanos
    max_messages: Count


class SessionRefused(msgspec.Struct, frozen=True, kw_only=True):
    """A worker refused a message under ``session``: ``reason`` is ``unknown_session`` or
    ``expired_session``; the robot answers with a new offer."""

    worker_id: Id
    robot_id: Id
    session: Annotated[str, msgspec.Meta(max_length=16)]
    reason: Annotated[str, msgspec.Meta(max_length=32)]
    time_ns: Nanos


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A sender's signed statement over the messages it sent under ``session`` from
    ``first_seq`` to ``last_seq``: ``chain`` is BLAKE3 chained over their digests in sequence
    order, starting from ``prev`` (the previous checkpoint's chain, or 32 zero bytes)."""

    sender: Id
    session: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16}$")]
    first_seq: Count
    last_seq: Count
    count: Count
    prev: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    chain: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    time_ns: Nanos
    final: bool = False



Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
Precision = Literal["fp16", "int8"]
Prefixes = Annotated[list[Annotated[str, msgspec.Meta(max_length=128)]],
                     msgspec.Meta(max_length=64)]
Positive = Annotated[float, msgspec.Meta(gt=0)]


class RoundAnnouncement(msgspec.Struct, frozen=True, kw_only=True):
    """A federated round: train on top of release ``base_version`` and answer by ``deadline_ns``
    (wall clock). ``trainable`` names the tensor prefixes that are trained and averaged,
    ``personal`` those trained but kept on each robot; the rest stays frozen."""

    coordinator: Id
    model: Name
    round: Count
    base_version: Count
    base_sha256: Sha256
    deadline_ns: Nanos
    epochs: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    examples: Annotated[int, msgspec.Meta(ge=1, le=1 << 20)] = 256
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1 << 16)] = 32
    lr: Positive = 0.05
    example_clip: Positive = 1.0
    noise_multiplier: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    delta: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 1e-5
    update_clip: Positive = 1.0
    precision: Precision = "fp16"
    trainable: Prefixes = []
    personal: Prefixes = []


class UpdateManifest(msgspec.Struct, frozen=True, kw_only=True):
    """A robot's answer to a round: its weight delta against the base, described (size, hashes,
    chunks) by ``file`` exactly as a model release is; chunks follow as :class:`UpdateChunk`.
    ``epsilon`` is the robot's privacy spent so far, this round included."""

    robot_id: Id
    model: Name
    round: Count
    base_version: Count
    base_sha256: Sha256
    examples: Count
    epsilon: Annotated[float, msgspec.Meta(ge=0)]
    delta: Annotated[float, msgspec.Meta(ge=0, lt=1)]
    precision: Precision
    file: ModelManifest


class UpdateChunk(msgspec.Struct, frozen=True, kw_only=True):
    """One piece of a robot's update file."""

    robot_id: Id
    round: Count
    index: Count
    data: memoryview


class RoundResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a round came to: who took part, what was refused and why, the candidate's error on
    the held-out recording against the current model's, and whether it was released."""

    coordinator: Id
    model: Name
    round: Count
    participants: Annotated[list[Id], msgspec.Meta(max_length=4096)] = []
    refused: Annotated[dict[str, Count], msgspec.Meta(max_length=64)] = {}
    epsilon: Annotated[dict[Id, float], msgspec.Meta(max_length=4096)] = {}
    base_error: float | None = None
    candidate_error: float | None = None
    released: bool = False
    version: Count = 0
    detail: Annotated[str, msgspec.Meta(max_length=1024)] = ""


Message = (Frame | TaskRequest | Action | Declined | TaskResult | ModelManifest | ModelChunk
           | Status | SessionOffer | SessionRefused | Checkpoint
           | RoundAnnouncement | UpdateManifest | UpdateChunk | RoundResult)

#: Envelope kind -> body type. The kind is the only type information on the wire.
KINDS: dict[str, type[Message]] = {
    "frame": Frame,
    "task": TaskRequest,
    "action": Action,
    "declined": Declined,
    "task_result": TaskResult,
    "model_manifest": ModelManifest,
    "model_chunk": ModelChunk,
    "status": Status,
    "session_offer": SessionOffer,
    "session_refused": SessionRefused,
    "checkpoint": Checkpoint,
    "fl_round": RoundAnnouncement,
    "fl_update": UpdateManifest,
    "fl_chunk": UpdateChunk,
    "fl_result": RoundResult,
}
KIND_OF: dict[type[Message], str] = {cls: kind for kind, cls in KINDS.items()}
