"""The injected clock for logic tests: time moves only when the test moves it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MS = 1_000_000
"""Nanoseconds per millisecond."""


@dataclass
class FakeClock:
    """A settable clock: calling it returns ``now``; ``advance(ms)`` moves it forward.

    ``per_ms`` is how many clock units make one millisecond: ``MS`` for the nanosecond clocks
    of the watchdog and the wire (the default), ``0.001`` for clocks in seconds (the outbox).
    """

    now: float = 1_000 * MS
    per_ms: float = MS

    def __call__(self) -> Any:
        return self.now

    def advance(self, ms: float) -> None:
        step = ms * self.per_ms
        self.now += round(step) if isinstance(self.now, int) else step
