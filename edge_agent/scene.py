"""Camera images that look like a tabletop scene: smooth table, lit objects, edges, noise.

Used by the simulated robot, the tests and the benchmarks, so compression and JPEG figures are
measured on image statistics like a real camera's, not on uniform noise.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


class TabletopScene:
    """Deterministic for a seed; ``render(step)`` moves the objects a little each step."""

    def __init__(self, height: int = 224, width: int = 224, *, objects: int = 5, seed: int = 0,
                 noise: float = 3.0) -> None:
        self.height = height
        self.width = width
        self.noise = noise
        self._rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self._yy = yy / height
        self._xx = xx / width
        # wood-like table: a vertical light gradient with low-frequency grain
        grain = 12 * np.sin(self._xx * 40 + 3 * np.sin(self._yy * 7))
        shade = 150 - 50 * self._yy
        self._table = np.stack([shade + grain + 25, shade + grain, shade * 0.7 + grain], axis=-1)
        self._objects = [
            (self._rng.uniform(0.15, 0.85, 2), self._rng.uniform(0.06, 0.16),
             self._rng.uniform(30, 230, 3), self._rng.uniform(-0.004, 0.004, 2))
            for _ in range(objects)
        ]

    def render(self, step: int = 0) -> npt.NDArray[np.uint8]:
        """One HxWx3 uint8 frame."""
        image = self._table.copy()
        for center, radius, color, velocity in self._objects:
            cy, cx = (center + velocity * step) % 1.0
            dist = np.sqrt((self._yy - cy) ** 2 + (self._xx - cx) ** 2)
            inside = dist < radius
            light = 1.0 - 0.5 * (dist / radius)  # shaded sphere-ish object with a hard edge
            image[inside] = color * light[inside, None]
            shadow = (dist >= radius) & (dist < radius * 1.25) & (self._yy > cy)
            image[shadow] *= 0.6
        image += self._rng.normal(0.0, self.noise, image.shape)
        frame: npt.NDArray[np.uint8] = np.clip(image, 0, 255).astype(np.uint8)
        return frame
