"""The robot's camera encoder: applies ``--codec`` to each frame and learns from the replies.

The agent calls :meth:`CameraEncoder.encode` when it builds a frame, :meth:`sent` once the
frame's envelope exists, :meth:`reply` when a cloud action splits its round trip (on time or
late) and :meth:`missed` when a step ended without any reply. A fixed codec only encodes (and
still measures the uplink, for ``--json`` and metrics); ``auto`` also asks its
:class:`~edge_agent.codec.CodecChooser` for the next frame's rungs.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.codec import CodecChooser, CodecSpec, Rung, parse_codec
from edge_agent.uplink import UplinkEstimator
from schemas.images import Image

Clock = Callable[[], int]


@dataclass(frozen=True, slots=True)
class Encoded:
    """A frame's camera images and the rung each was sent at (``{camera: rung name}``)."""

    cameras: dict[str, Image]
    choice: dict[str, str]
    encode_ns: int


class CameraEncoder:
    """Encodes camera images per ``spec``; see the module docstring for the calls it expects."""

    def __init__(self, spec: CodecSpec | str = "auto", *, interval_ns: int,
                 clock: Clock = time.monotonic_ns, chooser: CodecChooser | None = None,
                 estimator: UplinkEstimator | None = None, remember: int = 1024) -> None:
        self.spec = parse_codec(spec) if isinstance(spec, str) else spec
        self.interval_ns = interval_ns
        self.chooser = chooser or CodecChooser(clock)
        self.estimator = estimator or UplinkEstimator(clock)
        self.frames_by_rung: Counter[str] = Counter()
        self.bytes_sent = 0
        self.calibration: dict[str, dict[str, int]] = {}
        self._encode_ns = 0.0
        self._pending: OrderedDict[str, tuple[int, int]] = OrderedDict()  # corr -> bytes, budget
        self._remember = remember
        self.on_choice: Callable[[Mapping[str, str], int], None] = lambda choice, nbytes: None

    @property
    def auto(self) -> bool:
        return self.spec.rung is None

    def prepare(self, images: Mapping[str, npt.NDArray[Any]]) -> None:
        """Measure every rung's size on a first observation (auto), so the first frame does
        not pay for it; done by :func:`edge_agent.stack.open_edge` with its probe."""
        if self.auto and not self.chooser.cameras:
            self.calibration = self.chooser.calibrate(images)

    def encode(self, images: Mapping[str, npt.NDArray[Any]], *, budget_ns: int) -> Encoded:
        """Every camera of one observation, at the rungs chosen for a step whose reply must be
        back within ``budget_ns``."""
        started = time.perf_counter_ns()
        self.prepare(images)  # once, unless open_edge did it
        rungs: Mapping[str, Rung]
        if self.spec.rung is not None:
            rungs = dict.fromkeys(images, self.spec.rung)
        else:
            rungs = self.chooser.choose(self.estimator.estimate(), budget_ns=budget_ns,
                                        interval_ns=self.interval_ns,
                                        encode_ns=int(self._encode_ns))
        cameras = {name: rungs[name].encode(np.asarray(pixels, dtype=np.uint8))
                   for name, pixels in images.items()}
        elapsed = time.perf_counter_ns() - started
        self._encode_ns += 0.2 * (elapsed - self._encode_ns)
        choice = {name: rungs[name].name for name in cameras}
        if self.auto:
            for name, image in cameras.items():
                self.chooser.sent(name, len(image.data))
        return Encoded(cameras, choice, elapsed)

    def sent(self, corr: str, encoded: Encoded, wire_bytes: int, budget_ns: int) -> None:
        """The frame for ``corr`` went out as ``wire_bytes`` (the whole signed envelope)."""
        self._pending[corr] = (wire_bytes, budget_ns)
        while len(self._pending) > self._remember:
            self._pending.popitem(last=False)
        self.bytes_sent += wire_bytes
        for rung in encoded.choice.values():
            self.frames_by_rung[rung] += 1
        self.chooser.overhead_bytes = max(0, wire_bytes - sum(
            len(image.data) for image in encoded.cameras.values()))
        self.on_choice(encoded.choice, wire_bytes)

    def reply(self, corr: str, transfer_ns: int, worker_ns: int) -> None:
        """A cloud reply to ``corr`` split its round trip: transfer and worker parts."""
        sent = self._pending.pop(corr, None)
        if sent is not None:
            self.estimator.reply(sent[0], transfer_ns, worker_ns)

    def missed(self, corr: str) -> None:
        """The step of ``corr`` ended with no reply at all."""
        sent = self._pending.pop(corr, None)
        if sent is not None:
            self.estimator.missed(*sent)

    def uplink_bits_per_second(self) -> float:
        """The uplink rate seen so far (0 before the first reply)."""
        estimate = self.estimator.estimate()
        return 0.0 if estimate is None else estimate.bits_per_second

    def summary(self) -> dict[str, Any]:
        """The ``codec`` part of ``--json``: what was asked, sent, and the uplink seen."""
        estimate = self.estimator.estimate()
        return {
            "mode": self.spec.name,
            "frames_by_rung": dict(self.frames_by_rung),
            "current": {name: rung.name for name, rung in self.chooser.rungs().items()}
            if self.auto else {},
            "bytes_sent": self.bytes_sent,
            "uplink_mbit_s": None if estimate is None
            else round(estimate.bits_per_second / 1e6, 3),
            "worker_ms": None if estimate is None else round(estimate.worker_ns / 1e6, 3),
            "latency_ms": None if estimate is None else round(estimate.base_ns / 1e6, 3),
            "calibration_bytes": self.calibration,
        }
