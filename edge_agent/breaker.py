"""The offload decision: send this step to the cloud, probe it, or stay local.

Closed (offloading) → open after ``miss_limit`` consecutive misses, when ``max_miss_rate`` of the
last ``rate_window`` offloaded steps missed (misses that alternate with successes: one wedged
worker of two taking its round-robin share), or when the measured round trip (median of
recent replies, late ones included) no longer fits the deadline budget. Open →
one probe every ``probe_interval_ns``; ``close_after`` consecutive on-time probes close it again
(hysteresis: one lucky reply does not flip a robot back onto a flaky link).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from edge_agent.watchdog import MONOTONIC, Clock, LatencyEstimator


class Route(StrEnum):
    OFFLOAD = "offload"
    PROBE = "probe"
    LOCAL = "local"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    miss_limit: int = 3
    probe_interval_ns: int = 500_000_000
    close_after: int = 2
    rtt_window: int = 16
    min_rtt_samples: int = 4
    rate_window: int = 20
    max_miss_rate: float = 0.3


class OffloadBreaker:
    """Decides the route of each step from the outcomes of the previous ones."""

    def __init__(self, config: BreakerConfig | None = None, clock: Clock = MONOTONIC) -> None:
        self.config = config or BreakerConfig()
        self._clock = clock
        self.rtt = LatencyEstimator(self.config.rtt_window)
        self.open = False
        self.open_reason = ""
        self.misses = 0
        self.good_probes = 0
        self.opened = 0
        self.closed = 0
        self._next_probe_ns = 0
        self._probing = False
        self._outcomes: deque[bool] = deque(maxlen=self.config.rate_window)  # True: a miss
        self._window_misses = 0

    def route(self, budget_ns: int) -> Route:
        """The route for a step whose cloud round trip must fit in ``budget_ns``."""
        if not self.open and self._unreachable(budget_ns):
            self._trip("unreachable")
        if not self.open:
            return Route.OFFLOAD
        now = self._clock()
        if not self._probing and now >= self._next_probe_ns:
            self._probing = True
            self._next_probe_ns = now + self.config.probe_interval_ns
            return Route.PROBE
        return Route.LOCAL

    def on_time(self, rtt_ns: int, *, probe: bool = False) -> None:
        """A verified reply arrived before its deadline."""
        self.rtt.add(rtt_ns)
        self.misses = 0
        if not probe:
            self._outcome(False)
        if probe:
            self._probing = False
            self.good_probes += 1
            if self.open and self.good_probes >= self.config.close_after:
                self.open = False
                self.open_reason = ""
                self.closed += 1
                self.rtt.clear()
                self.rtt.add(rtt_ns)  # judge the link on what it does now, not before the trip

    def missed(self, *, probe: bool = False) -> None:
        """No usable reply by the deadline."""
        if probe:
            self._probing = False
            self.good_probes = 0
            return
        self.misses += 1
        self._outcome(True)
        if self.open:
            return
        if self.misses >= self.config.miss_limit:
            self._trip("misses")
        elif (len(self._outcomes) == self._outcomes.maxlen
              and self._window_misses >= self.config.max_miss_rate * len(self._outcomes)):
            self._trip("miss_rate")

    def _outcome(self, miss: bool) -> None:
        window = self._outcomes
        if len(window) == window.maxlen and window[0]:
            self._window_misses -= 1
        window.append(miss)
        self._window_misses += miss

    def late_reply(self, rtt_ns: int) -> None:
        """A reply arrived after its step was decided: still a round-trip measurement."""
        self.rtt.add(rtt_ns)

    def _unreachable(self, budget_ns: int) -> bool:
        return (len(self.rtt) >= self.config.min_rtt_samples
                and self.rtt.quantile(0.5) > budget_ns)

    def _trip(self, reason: str) -> None:
        self.open = True
        self.open_reason = reason
        self.opened += 1
        self.good_probes = 0
        self.misses = 0
        self._outcomes.clear()  # judged afresh once it closes again
        self._window_misses = 0
        self._probing = False
        self._next_probe_ns = self._clock() + self.config.probe_interval_ns
