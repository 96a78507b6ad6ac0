"""The policy contract: what turns a batch of observations into action chunks.

A policy is any object with ``infer(batch: Sequence[Observation]) -> np.ndarray`` that
returns a float32 array of shape ``(len(batch), H, D)``: one HxD action chunk per observation.
Optional attributes ``name`` (str) and ``version`` (int) identify it in worker status and in
``Action`` provenance; :func:`describe` reads them with defaults. No torch here: the bus, the
robot's decision types and the worker's queue import this without pulling in a runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from schemas.arrays import unpack_array
from schemas.images import decode_image
from schemas.messages import Frame

FloatArray = npt.NDArray[Any]


class PolicyInputError(ValueError):
    """An observation does not fit the policy (missing camera, wrong state size, mixed shapes)."""


@dataclass(frozen=True, slots=True)
class Observation:
    """What a policy sees for one step: camera images (uint8 HxWxC), a command and a state."""

    images: dict[str, FloatArray]
    command: str
    state: FloatArray

    @classmethod
    def from_frame(cls, frame: Frame) -> Observation:
        """Views over a decoded frame: raw images and the state are not copied (read-only)."""
        images = {name: decode_image(image, path=f"cameras.{name}")
                  for name, image in frame.cameras.items()}
        state = unpack_array(frame.state, path="state", max_elements=4096)
        if state.dtype != np.float32:
            state = state.astype(np.float32)
        return cls(images=images, command=frame.command, state=state.reshape(-1))


@runtime_checkable
class Policy(Protocol):
    """Anything that maps a batch of observations to a (B, H, D) float32 array."""

    def infer(self, batch: Sequence[Observation]) -> FloatArray: ...


def describe(policy: Policy) -> tuple[str, int]:
    """The (name, version) a policy reports, defaulting to ("default", 0)."""
    name = getattr(policy, "name", "default")
    version = getattr(policy, "version", 0)
    return (str(name), int(version))

