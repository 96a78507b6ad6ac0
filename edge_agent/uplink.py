"""What the robot's uplink carries, estimated from traffic it sends anyway (no probes).

Every cloud action splits its round trip into parts timed on one machine each (see
:mod:`edge_agent.stats`): robot encode, worker span (decode + queue + inference + encode, on the
worker's clock), robot decode, and what is left, the transfer up and down. The frame's size is
known, so each reply is a point (bytes, transfer time) of the line

    transfer = base + bytes x ns_per_byte

``base`` is what any frame pays whatever its size (propagation, broker hops, a bridge that holds
small packets back, the small action coming back), ``ns_per_byte`` the uplink's rate. The two are
told apart so that a fixed delay shrinks the time left for the bytes but is never read as a slow
link:

* **rate** — with frames of different sizes in the window (the codec moves between rungs,
  cameras differ) the slope is fitted robustly (Theil-Sen: the median slope of pairs of points
  whose sizes differ by ``spread`` x and ``min_delta`` bytes or more, weighted by how far apart
  they are). A size-independent delay, even one that comes and goes, moves both points of a
  pair alike and so leaves the median slope alone. On a link the robots share and step up or
  down together, the slope is the robot's share of the link, not the line rate: that is the
  rate its frames see. With one size only, or too few pairs, the last fit stands for
  ``slope_memory_ns``; without one, the fastest frame is the estimate (a frame of n bytes that
  arrived in t ns shows the link moves n / t bytes per ns or more, whatever delay came with
  it): cautious, never absurd, and it lets the chooser try the next rung up, and so get a
  second size. The fit never claims a link faster than ``rate_headroom`` x that.
* **base** — the median of what is left once the bytes are paid for (the residuals
  transfer - bytes x ``ns_per_byte``): what a typical frame pays on top of its bytes. A delay
  that comes and goes (Nagle's algorithm, a scheduler) raises it; it does not steepen the line.

A robot alone cannot see its share of a link other robots use too: a frame sent while the link
is idle moves at the full rate. It can see the queue building when the robots together send
more than the link carries: ``queue_ns`` is how far the residuals of *all* the latest
``recent`` replies rose above the least delayed reply of the last ``horizon_ns`` (the
min-filtered round trip of BBR). A queue delays every later frame; a delay that comes and goes
(a scheduling stall, Nagle holding one small packet back) spares some of them, so the least
delayed of the latest replies stays near the floor. A step that ends without any reply (the
frame expired in a queue) is counted in ``misses`` (within ``miss_window_ns``).

Plain logic with an injected clock: samples older than ``horizon_ns`` are forgotten, so a link
that recovers is seen as such.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], int]


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _weighted_median(pairs: list[tuple[float, int]]) -> float:
    """The value at half the total weight of (value, weight) pairs."""
    ordered = sorted(pairs)
    half, seen = sum(w for _, w in ordered) / 2, 0
    for value, weight in ordered:
        seen += weight
        if seen >= half:
            return value
    return ordered[-1][0]


@dataclass(frozen=True, slots=True)
class UplinkEstimate:
    """The transfer line (``base_ns`` + bytes x ``ns_per_byte``), the worker's time, the
    queueing delay the latest replies met, recent misses, and the samples behind it."""

    ns_per_byte: float
    worker_ns: int
    samples: int
    queue_ns: int = 0
    base_ns: int = 0
    misses: int = 0

    @property
    def bits_per_second(self) -> float:
        """The uplink rate this robot sees."""
        return 8e9 / self.ns_per_byte if self.ns_per_byte > 0 else float("inf")

    def transfer_ns(self, nbytes: int) -> int:
        """Expected time to move a frame of ``nbytes`` up and its action down."""
        return int(self.base_ns + nbytes * self.ns_per_byte)


@dataclass(frozen=True, slots=True)
class _Sample:
    at_ns: int
    nbytes: int
    transfer_ns: int


class UplinkEstimator:
    """The transfer line of this robot's uplink, from reply timings (module docstring)."""

    def __init__(self, clock: Clock = time.monotonic_ns, *, window: int = 32,
                 horizon_ns: int = 10_000_000_000, worker_quantile: float = 0.9,
                 spread: float = 1.15, min_delta: int = 2000, recent: int = 4,
                 miss_window_ns: int = 300_000_000, rate_headroom: float = 4.0,
                 slope_memory_ns: int = 30_000_000_000, history: int = 256) -> None:
        self._clock = clock
        self._samples: deque[_Sample] = deque(maxlen=window)
        self._worker: deque[tuple[int, int]] = deque(maxlen=window)
        self._misses: deque[int] = deque(maxlen=window)
        self._horizon = horizon_ns
        self._worker_q = worker_quantile
        self._spread = spread
        self._min_delta = min_delta
        self._recent = recent
        self._miss_window = miss_window_ns
        self._headroom = rate_headroom
        self._history: deque[_Sample] = deque(maxlen=history)  # every sample of the horizon
        self._slope_memory = slope_memory_ns
        self._slope: tuple[int, float] | None = None  # (when, ns per byte) of the last fit

    def reply(self, nbytes: int, transfer_ns: int, worker_ns: int) -> None:
        """A cloud action came back for a frame of ``nbytes``: ``transfer_ns`` is its round trip
        less robot encode/decode and the worker's span ``worker_ns``."""
        now = self._clock()
        if nbytes > 0:
            sample = _Sample(now, nbytes, max(1, transfer_ns))
            self._samples.append(sample)
            self._history.append(sample)
        self._worker.append((now, max(0, worker_ns)))

    def missed(self, nbytes: int, budget_ns: int) -> None:
        """No reply at all within ``budget_ns`` for a frame of ``nbytes``."""
        del nbytes, budget_ns  # a censored point: it says "slower", not how much
        self._misses.append(self._clock())

    def estimate(self) -> UplinkEstimate | None:
        """The current estimate, None before the first reply (or after ``horizon_ns`` of
        silence)."""
        now = self._clock()
        while self._samples and self._samples[0].at_ns < now - self._horizon:
            self._samples.popleft()
        while self._history and self._history[0].at_ns < now - self._horizon:
            self._history.popleft()
        while self._worker and self._worker[0][0] < now - self._horizon:
            self._worker.popleft()
        samples = list(self._samples)
        if not samples:
            return None
        misses = sum(1 for at in self._misses if at >= now - self._miss_window)
        worker = [float(w) for _, w in self._worker]
        worker_ns = int(_quantile(worker, self._worker_q)) if worker else 0
        # the link moved n bytes in t ns or less: the cost of a byte when nothing else is known
        proven = min(s.transfer_ns / s.nbytes for s in samples)
        fit = self._fit(samples)
        if fit is not None:
            self._slope = (now, fit)
        elif self._slope is not None and now - self._slope[0] <= self._slope_memory:
            fit = self._slope[1]
        per_byte = proven if fit is None else max(fit, proven / self._headroom)
        residuals = [s.transfer_ns - per_byte * s.nbytes for s in samples]
        typical = statistics.median(residuals)
        # queueing: how far all the latest replies rose above the least delayed of the horizon
        floor = min(s.transfer_ns - per_byte * s.nbytes for s in self._history)
        queue = min(residuals[-self._recent:]) - floor
        return UplinkEstimate(max(per_byte, 1e-3), worker_ns, len(samples),
                              int(max(0.0, queue)), int(max(0.0, typical)), misses)

    def _fit(self, samples: list[_Sample]) -> float | None:
        """ns per byte by Theil-Sen over pairs of different sizes; None without enough of
        them. The median of the pair slopes weighted by how far apart the pair's sizes are (a
        jitter of a few ms turns a pair 2 kB apart into a wild slope, not a pair 20 kB
        apart)."""
        slopes = []
        for i, a in enumerate(samples):
            for b in samples[i + 1:]:
                small, large = (a, b) if a.nbytes <= b.nbytes else (b, a)
                if (large.nbytes >= self._spread * small.nbytes
                        and large.nbytes - small.nbytes >= self._min_delta):
                    delta = large.nbytes - small.nbytes
                    slopes.append(((large.transfer_ns - small.transfer_ns) / delta, delta))
        if len(slopes) < 8:
            return None
        return _weighted_median(slopes)

    def clear(self) -> None:
        self._samples.clear()
        self._worker.clear()
        self._misses.clear()
        self._history.clear()
        self._slope = None
