"""Observations to frames, and checked actions out of replies."""

from __future__ import annotations

import msgspec
import numpy as np
import numpy.typing as npt

from schemas.arrays import pack_array, unpack_array
from schemas.errors import SchemaError
from schemas.images import Codec, Image, encode_image
from schemas.messages import Action, Frame
from vlabus.policy import Observation

MAX_CHUNK_ROWS = 1024
MAX_ACTION_DIM = 256


def frame_of(observation: Observation, *, robot_id: str, step: int, capture_ns: int,
             model: str, safety_critical: bool = False, codec: Codec = "raw",
             quality: int = 85, cameras: dict[str, Image] | None = None,
             interval_ns: int = 0) -> Frame:
    """The wire frame for one observation (raw images are not copied); ``cameras``, when
    given, are its images already encoded (see :mod:`edge_agent.cameras`); ``interval_ns``:
    how long until the robot would send its next frame on its own (0: not stated)."""
    if cameras is None:
        cameras = {name: encode_image(np.asarray(pixels, dtype=np.uint8), codec, quality)
                   for name, pixels in observation.images.items()}
    return Frame(robot_id=robot_id, step=step, cameras=cameras, command=observation.command,
                 state=pack_array(np.asarray(observation.state, dtype=np.float32)),
                 capture_ns=capture_ns, safety_critical=safety_critical, model=model,
                 interval_ns=interval_ns or msgspec.UNSET)


def chunk_of(action: Action) -> npt.NDArray[np.float32]:
    """The HxD float32 chunk in ``action``; raises ``SchemaError`` when it is unusable."""
    array = unpack_array(action.actions, path="actions",
                         max_elements=MAX_CHUNK_ROWS * MAX_ACTION_DIM)
    if array.dtype.kind != "f":
        raise SchemaError(f"actions are {array.dtype}, expected floats", "actions.dtype")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise SchemaError(f"actions have shape {array.shape}, expected HxD", "actions.shape")
    chunk = array.astype(np.float32)
    if not np.isfinite(chunk).all():
        raise SchemaError("actions are not finite", "actions.data")
    return chunk
