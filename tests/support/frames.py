"""The one ``Frame`` builder of the test suites."""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt

from schemas.arrays import pack_array
from schemas.images import encode_image
from schemas.messages import Frame


def make_frame(robot_id: str = "robot-a", step: int = 1, *, size: int = 32,
               noise: bool = True, state: npt.NDArray[np.float32] | None = None,
               state_dim: int = 14, command: str = "pick up the red cube",
               model: str = "default", critical: bool = False,
               capture_ns: int | None = None) -> Frame:
    """A ``size``×``size`` one-camera frame of ``robot_id`` at ``step``.

    ``noise`` fills the image with bytes seeded by ``step`` (incompressible); otherwise a
    fixed compressible pattern. The state is ``arange(state_dim) + step`` unless ``state`` is
    given (so a policy can read the step back from ``state[0]``). ``capture_ns`` defaults to now.
    """
    if noise:
        pixels = np.random.default_rng(step).integers(0, 256, (size, size, 3), dtype=np.uint8)
    else:
        pixels = (np.arange(size * size * 3) % 251).astype(np.uint8).reshape(size, size, 3)
    if state is None:
        state = np.arange(state_dim, dtype=np.float32) + step
    return Frame(robot_id=robot_id, step=step, cameras={"front": encode_image(pixels)},
                 command=command, state=pack_array(state),
                 capture_ns=time.time_ns() if capture_ns is None else capture_ns,
                 safety_critical=critical, model=model)
