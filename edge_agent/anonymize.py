"""Anonymise observations on the robot, before a frame is encoded, kept or recorded.

``--anonymize faces`` blurs every face OpenCV's bundled frontal-face Haar cascade finds
(``opencv-python-headless<5``: OpenCV 5 no longer ships the cascades); the region, grown by a
margin, is pixelated and blurred so that the detector no longer finds a face there.
``--anonymize state:FIELD=SIGMA`` adds Gaussian noise of standard deviation SIGMA to state
fields: FIELD is an index (``3``), an inclusive range (``0-6``) or ``all``.
:meth:`Anonymizer.describe` is what recordings carry in their metadata (``anonymized``).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from vlabus.policy import Observation

Image = npt.NDArray[np.uint8]
_STATE = re.compile(r"^state:(all|\d+|\d+-\d+)=([0-9]*\.?[0-9]+(?:e-?\d+)?)$")


class AnonymizeError(ValueError):
    """An --anonymize value cannot be used (unknown kind, bad field, OpenCV missing)."""


class FaceBlur:
    """Finds faces with OpenCV's frontal-face Haar cascade and blurs them in place of a copy."""

    def __init__(self, *, margin: float = 0.25, min_size: int = 24) -> None:
        try:
            import cv2
        except ImportError as exc:
            raise AnonymizeError("--anonymize faces needs OpenCV: pip install "
                                 "'vlabus[anonymize]' (opencv-python-headless<5)") from exc
        path = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if path is None or not hasattr(cv2, "CascadeClassifier"):
            raise AnonymizeError("this OpenCV has no Haar cascades (OpenCV 5 dropped them): "
                                 "install opencv-python-headless<5")
        self._cv2 = cv2
        self.cascade = cv2.CascadeClassifier(path + "haarcascade_frontalface_default.xml")
        if self.cascade.empty():
            raise AnonymizeError("OpenCV's frontal-face cascade could not be loaded")
        self.margin = margin
        self.min_size = min_size

    def detect(self, image: Image) -> list[tuple[int, int, int, int]]:
        """Face boxes (x, y, w, h) in an RGB HxWx3 image."""
        gray = self._cv2.cvtColor(np.ascontiguousarray(image), self._cv2.COLOR_RGB2GRAY)
        found = self.cascade.detectMultiScale(gray, scaleFactor=1.2, minNeighbors=5,
                                              minSize=(self.min_size, self.min_size))
        return [tuple(int(v) for v in box) for box in found]  # type: ignore[misc]

    def __call__(self, image: Image) -> tuple[Image, int]:
        """The image with every detected face blurred (a copy when any), and the count."""
        boxes = self.detect(image)
        if not boxes:
            return image, 0
        out = np.array(image, copy=True)
        height, width = out.shape[:2]
        cv2 = self._cv2
        for x, y, w, h in boxes:
            dx, dy = int(w * self.margin), int(h * self.margin)
            x0, y0 = max(0, x - dx), max(0, y - dy)
            x1, y1 = min(width, x + w + dx), min(height, y + h + dy)
            region = out[y0:y1, x0:x1]
            k = max(3, (min(x1 - x0, y1 - y0) // 2) | 1)
            blurred = cv2.GaussianBlur(region, (k, k), 0)
            # a soft elliptical mask: hard block edges made the cascade see new "faces"
            mask = np.zeros(region.shape[:2], np.float32)
            cv2.ellipse(mask, (((x1 - x0) / 2, (y1 - y0) / 2), (x1 - x0, y1 - y0), 0), 1.0, -1)
            mask = cv2.GaussianBlur(mask, (k, k), 0)[..., None]
            out[y0:y1, x0:x1] = (region * (1 - mask) + blurred * mask).astype(np.uint8)
        return out, len(boxes)


@dataclass(frozen=True)
class StateNoise:
    """Gaussian noise of ``sigma`` on the state fields ``fields`` (``None``: all)."""

    fields: slice | None
    sigma: float
    label: str


@dataclass
class Anonymizer:
    """Applies every requested step to an observation; counts what it did."""

    faces: FaceBlur | None = None
    state: list[StateNoise] = field(default_factory=list)
    seed: int | None = None
    frames: int = 0
    faces_blurred: int = 0
    face_ns: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def check_state(self, size: int) -> None:
        """Raise :class:`AnonymizeError` when a state field is past a state of ``size``."""
        for noise in self.state:
            if noise.fields is not None and noise.fields.stop > size:
                raise AnonymizeError(f"--anonymize {noise.label}: the state has {size} "
                                     f"fields (0 to {size - 1})")

    def describe(self) -> str:
        """What is anonymised, e.g. ``faces,state:0-6=0.01`` (recording metadata)."""
        parts = ["faces"] if self.faces is not None else []
        return ",".join([*parts, *(s.label for s in self.state)])

    def __call__(self, observation: Observation) -> Observation:
        self.frames += 1
        images = observation.images
        if self.faces is not None:
            started = time.perf_counter_ns()
            images = {}
            for name, image in observation.images.items():
                images[name], count = self.faces(image)
                self.faces_blurred += count
            self.face_ns += time.perf_counter_ns() - started
        state = observation.state
        if self.state:
            state = np.array(state, dtype=np.float32, copy=True)
            for noise in self.state:
                view = state[noise.fields] if noise.fields is not None else state
                view += self._rng.normal(0.0, noise.sigma, view.shape).astype(np.float32)
        return dataclasses.replace(observation, images=images, state=state)

    def counters(self) -> dict[str, Any]:
        return {"anonymized": self.describe(), "frames": self.frames,
                "faces_blurred": self.faces_blurred,
                "face_ms_per_frame": round(self.face_ns / max(1, self.frames) / 1e6, 4)}


def parse_anonymize(values: Sequence[str], *, seed: int | None = None) -> Anonymizer | None:
    """An :class:`Anonymizer` for ``--anonymize`` values, None when there are none."""
    if not values:
        return None
    anonymizer = Anonymizer(seed=seed)
    for value in values:
        if value == "faces":
            anonymizer.faces = anonymizer.faces or FaceBlur()
            continue
        match = _STATE.match(value)
        if match is None:
            raise AnonymizeError(f"--anonymize {value!r}: use faces or state:FIELD=SIGMA "
                                 "(FIELD: an index, A-B or all)")
        where, sigma = match[1], float(match[2])
        if where == "all":
            fields = None
        elif "-" in where:
            first, last = (int(v) for v in where.split("-"))
            if last < first:
                raise AnonymizeError(f"--anonymize {value!r}: empty range")
            fields = slice(first, last + 1)
        else:
            fields = slice(int(where), int(where) + 1)
        anonymizer.state.append(StateNoise(fields, sigma, value))
    return anonymizer
