"""Wire messages, array and image encodings, topic names and the error tree. Pure, no I/O."""

from schemas.arrays import NDArray, pack_array, unpack_array
from schemas.errors import BusError, Reason, WireError
from schemas.images import Image, decode_image, encode_image
from schemas.messages import (
    KIND_OF,
    KINDS,
    Action,
    Frame,
    Message,
    ModelChunk,
    ModelManifest,
    Priority,
    Status,
    TaskRequest,
    TaskResult,
)

__all__ = [
    "KINDS", "KIND_OF", "Action", "BusError", "Frame", "Image", "Message", "ModelChunk",
    "ModelManifest", "NDArray", "Priority", "Reason", "Status", "TaskRequest", "TaskResult",
    "WireError", "decode_image", "encode_image", "pack_array", "unpack_array",
]
