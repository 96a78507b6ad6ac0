"""What the robot's uplink carries, estimated from traffic it sends anyway (no probes).

Every cloud action splits its round trip into parts timed on one machine each (see
:mod:`edge_agent.stats`): robot encode, worker span (decode + queue + inference + encode, on the
worker's clock), robot decode, and what is left, the transfer up and down. The frame's size is
known, so each reply gives a sample of *nanoseconds per byte sent*, fixed latency included: a
conservative figure for frames larger than the one measured, and corrected by the next replies
for smaller ones. A step that times out without any reply says its frame took longer than the
budget it had: a censored sample that raises the estimate at once (the uplink may be saturated,
and then no reply comes back to measure).

A robot alone cannot see its share of a link that other robots use too: a frame sent while
the link is idle moves at the full rate. What it can see is the queue building when the robots
together send more than the link carries. ``queue_ns`` is that signal: how much longer the last
replies' transfers took than the fastest per-byte cost in the window predicts (the delay
gradient congestion controllers use), so the chooser backs off before frames miss.

Plain logic with an injected clock: samples older than ``horizon_ns`` are forgotten, so a link
that recovers is seen as such.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], int]


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass(frozen=True, slots=True)
class UplinkEstimate:
    """Per-byte transfer cost (ns), the worker's time (ns), how many samples back them, and
    the queueing delay the latest replies met (ns)."""

    ns_per_byte: float
    worker_ns: int
    samples: int
    queue_ns: int = 0

    @property
    def bits_per_second(self) -> float:
        """The uplink rate this robot sees (fixed latency counted as transfer time)."""
        return 8e9 / self.ns_per_byte if self.ns_per_byte > 0 else float("inf")

    def transfer_ns(self, nbytes: int) -> int:
        """Expected time to move a frame of ``nbytes`` up and its action down."""
        return int(nbytes * self.ns_per_byte)


class UplinkEstimator:
    """A windowed, conservative estimate of this robot's uplink from reply timings.

    ``quantile`` of the per-byte samples in the window is the estimate (0.75: one slow reply in
    four is expected, not every spike). The worker's time is its ``worker_quantile``.
    """

    def __init__(self, clock: Clock = time.monotonic_ns, *, window: int = 32,
                 horizon_ns: int = 10_000_000_000, quantile: float = 0.75,
                 worker_quantile: float = 0.9, miss_factor: float = 1.5,
                 recent: int = 4) -> None:
        self._clock = clock
        self._per_byte: deque[tuple[int, float]] = deque(maxlen=window)
        self._worker: deque[tuple[int, int]] = deque(maxlen=window)
        self._recent: deque[tuple[int, int]] = deque(maxlen=recent)  # (bytes, transfer ns)
        self._horizon = horizon_ns
        self._q = quantile
        self._worker_q = worker_quantile
        self._miss_factor = miss_factor

    def reply(self, nbytes: int, transfer_ns: int, worker_ns: int) -> None:
        """A cloud action came back for a frame of ``nbytes``: ``transfer_ns`` is its round trip
        less robot encode/decode and the worker's span ``worker_ns``."""
        now = self._clock()
        if nbytes > 0:
            self._per_byte.append((now, max(1, transfer_ns) / nbytes))
            self._recent.append((nbytes, max(0, transfer_ns)))
        self._worker.append((now, max(0, worker_ns)))

    def missed(self, nbytes: int, budget_ns: int) -> None:
        """No reply at all within ``budget_ns`` for a frame of ``nbytes``: the transfer took
        longer, so the per-byte cost is at least ``(budget - worker time)/nbytes`` (raised by
        ``miss_factor`` over the current estimate when that is higher)."""
        if nbytes <= 0:
            return
        current = self.estimate()
        worker = 0 if current is None else current.worker_ns
        floor = max(1, budget_ns - worker) / nbytes
        if current is not None:
            floor = max(floor, current.ns_per_byte * self._miss_factor)
        self._per_byte.append((self._clock(), floor))

    def _fresh(self, samples: deque[tuple[int, float]] | deque[tuple[int, int]]) -> list[float]:
        limit = self._clock() - self._horizon
        while samples and samples[0][0] < limit:
            samples.popleft()
        return [float(value) for _, value in samples]

    def estimate(self) -> UplinkEstimate | None:
        """The current estimate, None before the first sample (or after ``horizon_ns`` of
        silence)."""
        per_byte = self._fresh(self._per_byte)
        if not per_byte:
            return None
        worker = self._fresh(self._worker)
        fastest = min(per_byte)
        queue = [max(0.0, transfer - nbytes * fastest) for nbytes, transfer in self._recent]
        return UplinkEstimate(_quantile(per_byte, self._q),
                              int(_quantile(worker, self._worker_q)) if worker else 0,
                              len(per_byte), int(_quantile(queue, 0.5)) if queue else 0)

    def clear(self) -> None:
        self._per_byte.clear()
        self._worker.clear()
        self._recent.clear()
