"""Codec choice per camera and per step: what each camera image travels as.

``--codec raw|lz4|jpeg[:QUALITY]`` fixes it; ``auto`` (the default) picks, per camera, a rung
of :data:`LADDER` — lossless, a JPEG quality, or a JPEG at a lower resolution step — so the
expected transfer of the whole frame plus the worker's time fits the step's deadline with a
margin, and the frame rate fits the uplink. The uplink comes from
:class:`~edge_agent.uplink.UplinkEstimator` (reply timings of frames sent anyway: no probes).

:class:`CodecChooser` is plain logic with an injected clock:

* sizes: every rung is encoded once per camera on the first frame (``calibrate``); afterwards
  the size of what is sent corrects the table (content changes) by one factor per camera.
* down at once: while the frame's predicted transfer exceeds what is allowed, the camera with
  the largest image drops one rung (no hysteresis on the way down: a late frame is a fallback);
  and one rung when the replies meet a queue longer than ``congestion`` x the transfer budget
  (robots sharing the uplink send more than it carries), or when a step got no reply at all
  while the frame's transfer takes ``miss_share`` of the budget or more (a miss with a frame
  the link moves in a moment is the worker's or the CPU's, not the uplink's); at most once per
  ``drain_ns``.
* up slowly: after ``hold_ns`` without a change and with no queue to speak of, the camera with
  the smallest image rises one rung if the frame then still fits within ``up_fraction`` of what
  is allowed (after ``fast_hold_ns`` while it fits within ``fast_fraction``: far from the limit
  there is nothing to fear). The JPEG rungs are close (each 10-40% larger than the one below),
  so a step up that overloads a shared link overloads it a little and the queue signal catches
  it.
* no flapping: a rung a camera had to leave is barred for ``cooldown_ns``, doubled (up to
  ``max_cooldown_ns``) each time it is left again before it held for ``stable_ns``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.uplink import UplinkEstimate
from schemas.errors import SchemaError
from schemas.images import Codec, Image, encode_image

Clock = Callable[[], int]


@dataclass(frozen=True, slots=True)
class Rung:
    """One way to send a camera image."""

    codec: Codec
    quality: int = 0
    scale: int = 1

    @property
    def name(self) -> str:
        base = f"jpeg{self.quality}" if self.codec == "jpeg" else self.codec
        return base if self.scale == 1 else f"{base}/{self.scale}"

    def encode(self, pixels: npt.NDArray[Any]) -> Image:
        return encode_image(pixels, self.codec, self.quality or 85, self.scale)


#: Best first. Only one lossless rung is used per camera: lz4 where it pays, else raw.
LADDER: tuple[Rung, ...] = (
    Rung("raw"), Rung("lz4"), Rung("jpeg", 95), Rung("jpeg", 92), Rung("jpeg", 90),
    Rung("jpeg", 88), Rung("jpeg", 85), Rung("jpeg", 80), Rung("jpeg", 70), Rung("jpeg", 50),
    Rung("jpeg", 30), Rung("jpeg", 70, 2), Rung("jpeg", 40, 2), Rung("jpeg", 60, 4),
    Rung("jpeg", 30, 4),
)
START = Rung("jpeg", 70)  # before anything is measured: small enough for a few Mbit/s
LZ4_PAYS = 0.9  # lz4 replaces raw when it saves at least 10%


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """What ``--codec`` asked for: ``auto``, or one fixed rung."""

    mode: str  # "auto" or "fixed"
    rung: Rung | None = None

    @property
    def name(self) -> str:
        return "auto" if self.rung is None else self.rung.name


def parse_codec(text: str) -> CodecSpec:
    """``auto``, ``raw``, ``lz4``, ``jpeg`` (quality 85) or ``jpeg:QUALITY`` (1..100);
    ValueError with the reason otherwise (argparse shows it)."""
    name, _, quality = text.strip().lower().partition(":")
    if name == "auto" and not quality:
        return CodecSpec("auto")
    if name in ("raw", "lz4") and not quality:
        return CodecSpec("fixed", Rung(name))  # type: ignore[arg-type]
    if name == "jpeg":
        try:
            q = int(quality) if quality else 85
        except ValueError:
            q = -1
        if not 1 <= q <= 100:
            raise ValueError(f"JPEG quality is 1..100, not {quality!r}")
        return CodecSpec("fixed", Rung("jpeg", q))
    raise ValueError(f"codec is auto, raw, lz4, jpeg or jpeg:QUALITY, not {text!r}")


@dataclass
class _Camera:
    sizes: dict[int, int]  # rung index -> calibrated bytes
    level: int
    correction: float = 1.0
    cooldown: dict[int, int] = field(default_factory=dict)  # rung -> current cooldown ns
    barred_until: dict[int, int] = field(default_factory=dict)
    reached_ns: dict[int, int] = field(default_factory=dict)

    def predicted(self, level: int) -> float:
        return self.sizes[level] * self.correction

    def below(self, level: int) -> int | None:
        lower = [i for i in self.sizes if i > level]
        return min(lower) if lower else None

    def above(self, level: int) -> int | None:
        higher = [i for i in self.sizes if i < level]
        return max(higher) if higher else None


class CodecChooser:
    """Per-camera rungs for ``auto`` (see the module docstring)."""

    def __init__(self, clock: Clock = time.monotonic_ns, *, ladder: tuple[Rung, ...] = LADDER,
                 start: Rung = START, margin: float = 0.2, up_fraction: float = 0.7,
                 hold_ns: int = 1_000_000_000, fast_hold_ns: int = 250_000_000,
                 fast_fraction: float = 0.35, cooldown_ns: int = 2_000_000_000,
                 max_cooldown_ns: int = 60_000_000_000, stable_ns: int = 10_000_000_000,
                 congestion: float = 0.25, miss_share: float = 0.25,
                 drain_ns: int = 300_000_000,
                 overhead_bytes: int = 512) -> None:
        self._clock = clock
        self.ladder = ladder
        self._start = ladder.index(start)
        self.margin = margin
        self.up_fraction = up_fraction
        self.hold_ns = hold_ns
        self.fast_hold_ns = fast_hold_ns
        self.fast_fraction = fast_fraction
        self.cooldown_ns = cooldown_ns
        self.max_cooldown_ns = max_cooldown_ns
        self.stable_ns = stable_ns
        self.congestion = congestion
        self.miss_share = miss_share
        self.drain_ns = drain_ns
        self.overhead_bytes = overhead_bytes
        self.cameras: dict[str, _Camera] = {}
        self._changed_ns = clock()

    def calibrate(self, images: Mapping[str, npt.NDArray[Any]]) -> dict[str, dict[str, int]]:
        """Encode each camera at every rung once; returns the sizes by camera and rung name.
        Rungs a camera cannot take (e.g. a size not divisible by the step) are left out."""
        now = self._clock()
        table: dict[str, dict[str, int]] = {}
        for camera, pixels in images.items():
            sizes = {}
            for i, rung in enumerate(self.ladder):
                try:
                    sizes[i] = len(rung.encode(np.asarray(pixels, dtype=np.uint8)).data)
                except SchemaError:
                    continue
            raw, lz4 = self.ladder.index(Rung("raw")), self.ladder.index(Rung("lz4"))
            if raw in sizes and lz4 in sizes:
                del sizes[lz4 if sizes[lz4] > LZ4_PAYS * sizes[raw] else raw]
            if not sizes:
                raise SchemaError(f"camera {camera!r} fits no codec", f"cameras.{camera}")
            level = min(sizes, key=lambda i: abs(i - self._start))
            self.cameras[camera] = _Camera(sizes, level, reached_ns={level: now})
            table[camera] = {self.ladder[i].name: n for i, n in sizes.items()}
        self._changed_ns = now
        return table

    def rungs(self) -> dict[str, Rung]:
        """The rung each camera is at now."""
        return {name: self.ladder[cam.level] for name, cam in self.cameras.items()}

    def sent(self, camera: str, nbytes: int) -> None:
        """A camera image of ``nbytes`` went out at the camera's current rung."""
        cam = self.cameras.get(camera)
        if cam is not None and cam.sizes.get(cam.level):
            ratio = nbytes / cam.sizes[cam.level]
            cam.correction += 0.3 * (ratio - cam.correction)

    def frame_bytes(self, levels: Mapping[str, int] | None = None) -> float:
        """Predicted frame size with ``levels`` (default: the current ones)."""
        return self.overhead_bytes + sum(
            cam.predicted(cam.level if levels is None else levels[name])
            for name, cam in self.cameras.items())

    def allowed_bytes(self, estimate: UplinkEstimate, *, budget_ns: int, interval_ns: int,
                      encode_ns: int = 0) -> float:
        """The largest frame that arrives within the step's budget (less the worker's time
        and the link's fixed latency) and that the uplink carries at the rate frames are
        sent, with the margin."""
        keep = 1.0 - self.margin
        deadline = (budget_ns - estimate.worker_ns - encode_ns) * keep - estimate.base_ns
        rate = interval_ns * keep
        return max(0.0, min(deadline, rate)) / max(estimate.ns_per_byte, 1e-9)

    def choose(self, estimate: UplinkEstimate | None, *, budget_ns: int, interval_ns: int,
               encode_ns: int = 0) -> dict[str, Rung]:
        """The rung per camera for the next frame (see the module docstring)."""
        if estimate is None or not self.cameras:
            return self.rungs()
        now = self._clock()
        allowed = self.allowed_bytes(estimate, budget_ns=budget_ns, interval_ns=interval_ns,
                                     encode_ns=encode_ns)
        while self.frame_bytes() > allowed and self._step_down(now):
            pass
        room = max(0, budget_ns - estimate.worker_ns - encode_ns)
        queue_limit = self.congestion * room
        moving = estimate.transfer_ns(int(self.frame_bytes())) - estimate.base_ns
        link_missed = estimate.misses > 0 and moving >= self.miss_share * room
        if estimate.queue_ns > queue_limit or link_missed:
            if now - self._changed_ns >= self.drain_ns:
                self._step_down(now)
        elif estimate.queue_ns <= queue_limit / 2:
            self._step_up(now, allowed)
        return self.rungs()

    def _step_down(self, now: int) -> bool:
        movable = [(cam.predicted(cam.level), name) for name, cam in self.cameras.items()
                   if cam.below(cam.level) is not None]
        if not movable:
            return False
        cam = self.cameras[max(movable)[1]]
        left, lower = cam.level, cam.below(cam.level)
        assert lower is not None
        held = now - cam.reached_ns.get(left, now)
        cooldown = (self.cooldown_ns if held >= self.stable_ns or left not in cam.cooldown
                    else min(self.max_cooldown_ns, 2 * cam.cooldown[left]))
        cam.cooldown[left] = cooldown
        cam.barred_until[left] = now + cooldown
        cam.level = lower
        cam.reached_ns[lower] = now
        self._changed_ns = now
        return True

    def _step_up(self, now: int, allowed: float) -> None:
        candidates = []
        for name, cam in self.cameras.items():
            higher = cam.above(cam.level)
            if higher is not None and cam.barred_until.get(higher, 0) <= now:
                candidates.append((cam.predicted(cam.level), name, higher))
        if not candidates:
            return
        _, name, higher = min(candidates)
        levels = {n: c.level for n, c in self.cameras.items()}
        levels[name] = higher
        wanted = self.frame_bytes(levels)
        held = now - self._changed_ns
        if (held >= self.hold_ns and wanted <= self.up_fraction * allowed) or (
                held >= self.fast_hold_ns and wanted <= self.fast_fraction * allowed):
            cam = self.cameras[name]
            cam.level = higher
            cam.reached_ns[higher] = now
            self._changed_ns = now
