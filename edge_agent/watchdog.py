"""Per-step deadlines without I/O: latency estimates, hedge timing and reply classification.

Every time here is a monotonic nanosecond count from an injected clock, so the logic is tested
with a fake clock and no sleeps. The agent's loop shell only turns these decisions into timers.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

Clock = Callable[[], int]
MONOTONIC: Clock = time.monotonic_ns


class LatencyEstimator:
    """A windowed percentile and an EMA over the last ``window`` samples (ns)."""

    def __init__(self, window: int = 64, *, alpha: float = 0.2, initial_ns: int = 0) -> None:
        self._samples: deque[int] = deque(maxlen=window)
        self._alpha = alpha
        self.ema_ns = float(initial_ns)
        self.initial_ns = initial_ns

    def add(self, sample_ns: int) -> None:
        sample_ns = max(0, sample_ns)
        self.ema_ns = (float(sample_ns) if not self._samples
                       else self.ema_ns + self._alpha * (sample_ns - self.ema_ns))
        self._samples.append(sample_ns)

    def __len__(self) -> int:
        return len(self._samples)

    def recent(self, count: int) -> list[int]:
        """The last ``count`` samples, oldest first."""
        return list(self._samples)[-count:]

    def keep_last(self, count: int) -> None:
        """Drop all but the last ``count`` samples (e.g. the cold ones of a warm-up)."""
        kept = self.recent(count)
        self.clear()
        for sample in kept:
            self.add(sample)

    def clear(self) -> None:
        self._samples.clear()
        self.ema_ns = float(self.initial_ns)

    def quantile(self, q: float) -> int:
        """The ``q`` quantile of the window (nearest rank), ``initial_ns`` when empty."""
        if not self._samples:
            return self.initial_ns
        ordered = sorted(self._samples)
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class TimerSlack:
    """How early to set a deadline timer: the measured p99 overshoot of this loop's timers.

    asyncio timers fire late by the selector's millisecond rounding plus whatever else holds the
    loop or the CPU; deciding that much before the deadline keeps the action on time. Bounded
    below by ``floor_ns`` and above by ``ceiling`` x the deadline (so the cloud keeps most of its
    budget).
    """

    def __init__(self, floor_ns: int, *, window: int = 256, margin_ns: int = 250_000,
                 ceiling: float = 0.25) -> None:
        self.floor_ns = floor_ns
        self.margin_ns = margin_ns
        self.ceiling = ceiling
        self.overshoot = LatencyEstimator(window)

    def observe(self, overshoot_ns: int) -> None:
        self.overshoot.add(overshoot_ns)

    def for_deadline(self, budget_ns: int) -> int:
        measured = self.overshoot.quantile(0.99) + self.margin_ns if len(self.overshoot) else 0
        return int(min(max(self.floor_ns, measured), self.ceiling * budget_ns))


@dataclass(frozen=True, slots=True)
class HedgeTiming:
    """When to start local inference and when to decide, for one step."""

    start_ns: int
    decide_ns: int


def plan_hedge(deadline_ns: int, local: LatencyEstimator, *, slack_ns: int,
               timer_slack_ns: int, safety: float = 1.5) -> HedgeTiming:
    """Start local inference so it is ready at the deadline even at its p99 latency.

    The decision is taken ``timer_slack_ns`` before the deadline because timers fire late by up
    to about a millisecond (epoll rounds up to whole milliseconds); the start timer gets the same
    slack. ``safety`` scales the p99 for a noisy machine.
    """
    decide = deadline_ns - timer_slack_ns
    need = int(max(local.quantile(0.99), local.ema_ns) * safety) + slack_ns
    return HedgeTiming(start_ns=decide - need - timer_slack_ns, decide_ns=decide)


class Verdict(StrEnum):
    ON_TIME = "on_time"
    LATE = "late"
    UNKNOWN = "unknown"


@dataclass(slots=True)
class PendingStep:
    """A frame sent to the cloud and not decided yet."""

    corr: str
    step: int
    sent_ns: int
    deadline_ns: int
    probe: bool = False
    rejected: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    verdict: Verdict
    pending: PendingStep | None
    rtt_ns: int = 0


class Watchdog:
    """Tracks in-flight steps by correlation id and decides each exactly once.

    A reply counts only while its step is pending and before the decision time; once a step is
    decided (by the cloud or by the fallback) every later reply for it is ``LATE``. Remembers at
    most ``remember`` decided steps, so memory stays bounded.
    """

    def __init__(self, clock: Clock = MONOTONIC, *, remember: int = 1024) -> None:
        self._clock = clock
        self._pending: dict[str, PendingStep] = {}
        self._decided: OrderedDict[str, tuple[int, int]] = OrderedDict()  # corr -> (step, sent)
        self._remember = remember

    def open(self, corr: str, step: int, deadline_ns: int, *, probe: bool = False) -> PendingStep:
        pending = PendingStep(corr, step, self._clock(), deadline_ns, probe)
        self._pending[corr] = pending
        return pending

    def pending(self, corr: str) -> PendingStep | None:
        return self._pending.get(corr)

    def reply(self, corr: str, step: int, decide_ns: int | None = None) -> Reply:
        """Classify a verified reply; ``ON_TIME`` decides the step for the cloud."""
        now = self._clock()
        pending = self._pending.get(corr)
        if pending is not None and pending.step == step:
            limit = pending.deadline_ns if decide_ns is None else decide_ns
            if now <= limit:
                self._close(pending)
                return Reply(Verdict.ON_TIME, pending, now - pending.sent_ns)
            # Past the decision time but the timer has not fired yet: still too late.
            self._close(pending)
            return Reply(Verdict.LATE, pending, now - pending.sent_ns)
        decided = self._decided.get(corr)
        if decided is not None and decided[0] == step:
            return Reply(Verdict.LATE, None, now - decided[1])
        return Reply(Verdict.UNKNOWN, None)

    def mark_rejected(self, corr: str) -> None:
        """A reply for ``corr`` failed verification (so a fallback has that cause)."""
        pending = self._pending.get(corr)
        if pending is not None:
            pending.rejected = True

    def expire(self, corr: str) -> PendingStep | None:
        """Decide a step for the fallback; None if the cloud already decided it."""
        pending = self._pending.get(corr)
        if pending is not None:
            self._close(pending)
        return pending

    def _close(self, pending: PendingStep) -> None:
        del self._pending[pending.corr]
        self._decided[pending.corr] = (pending.step, pending.sent_ns)
        while len(self._decided) > self._remember:
            self._decided.popitem(last=False)

    def __len__(self) -> int:
        return len(self._pending)
