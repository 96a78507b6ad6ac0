"""The serving loop's watchdog: notices a batch running far past its estimate (a hung policy).

Pure: the worker calls :meth:`StallWatch.started` and :meth:`StallWatch.finished` around each
batch and :meth:`StallWatch.check` on a timer; the clock is injected. A batch is stalled once it
has run ``factor`` times its estimate and at least ``min_ns``. The worker then leaves its shared
group (so its round-robin share goes to the others), drops what queued behind the batch, and
announces itself degraded; when the batch returns it rejoins. Stalled for ``exit_after_ns`` the
worker gives up and exits for its supervisor (0: never).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    OK = "ok"
    STALLED = "stalled"  # just now: leave the pool
    EXIT = "exit"  # stalled past the limit: exit for the supervisor


@dataclass(frozen=True, slots=True)
class StallConfig:
    factor: float = 10.0
    min_ns: int = 2_000_000_000
    exit_after_ns: int = 60_000_000_000


class StallWatch:
    """Tracks the batch in hand; not thread-safe (the worker's event loop only)."""

    def __init__(self, config: StallConfig | None = None,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.config = config or StallConfig()
        self._clock = clock
        self._started_ns: int | None = None
        self._limit_ns = 0
        self._model = ""
        self.stalled_since_ns: int | None = None
        self.reason = ""
        self.episodes = 0

    @property
    def stalled(self) -> bool:
        return self.stalled_since_ns is not None

    def started(self, model: str, estimate_ns: int) -> None:
        """A batch of ``model`` (expected to take ``estimate_ns``) went to the policy."""
        self._started_ns = self._clock()
        self._model = model
        self._limit_ns = max(int(self.config.factor * estimate_ns), self.config.min_ns)

    def finished(self) -> bool:
        """The batch in hand returned; True when that ends a stall (rejoin the pool)."""
        self._started_ns = None
        recovered = self.stalled
        self.stalled_since_ns = None
        self.reason = ""
        return recovered

    def check(self) -> Verdict:
        """STALLED once when the batch in hand passes its limit; EXIT once stalled for longer
        than ``exit_after_ns``; else OK."""
        started = self._started_ns
        if started is None:
            return Verdict.OK
        now = self._clock()
        if self.stalled_since_ns is None:
            if now - started <= self._limit_ns:
                return Verdict.OK
            self.stalled_since_ns = now
            self.episodes += 1
            self.reason = (f"a batch of {self._model!r} has run {(now - started) / 1e9:.1f} s, "
                           f"limit {self._limit_ns / 1e9:.1f} s")
            return Verdict.STALLED
        limit = self.config.exit_after_ns
        if limit and now - self.stalled_since_ns > limit:
            return Verdict.EXIT
        return Verdict.OK
