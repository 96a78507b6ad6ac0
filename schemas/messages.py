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


Message = Frame | TaskRequest | Action | TaskResult | ModelManifest | ModelChunk | Status

#: Envelope kind -> body type. The kind is the only type information on the wire.
KINDS: dict[str, type[Message]] = {
    "frame": Frame,
    "task": TaskRequest,
    "action": Action,
    "task_result": TaskResult,
    "model_manifest": ModelManifest,
    "model_chunk": ModelChunk,
    "status": Status,
}
KIND_OF: dict[type[Message], str] = {cls: kind for kind, cls in KINDS.items()}
