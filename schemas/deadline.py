"""Deadlines: held on the monotonic clock, carried on the wire as wall-clock ns.

A robot times its steps on the monotonic clock (immune to NTP steps); the envelope header
carries an absolute wall-clock deadline so another machine can read it. :class:`Deadline` is the
one place a deadline crosses between the two clocks; both are read from an injected
:class:`Clocks`, so the conversion is tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], int]


@dataclass(frozen=True, slots=True)
class Clocks:
    """A monotonic and a wall clock, both in ns."""

    monotonic: Clock = time.monotonic_ns
    wall: Clock = time.time_ns


SYSTEM_CLOCKS = Clocks()


@dataclass(frozen=True, slots=True)
class Deadline:
    """An absolute deadline in monotonic ns (of ``Clocks.monotonic``)."""

    monotonic_ns: int

    @classmethod
    def within(cls, budget_ns: int, clocks: Clocks = SYSTEM_CLOCKS) -> Deadline:
        """The deadline ``budget_ns`` from now."""
        return cls(clocks.monotonic() + budget_ns)

    @classmethod
    def from_wall(cls, wall_ns: int, clocks: Clocks = SYSTEM_CLOCKS) -> Deadline:
        """The deadline a header's wall-clock ``deadline_ns`` names, on this monotonic clock."""
        return cls(clocks.monotonic() + (wall_ns - clocks.wall()))

    def wall_ns(self, clocks: Clocks = SYSTEM_CLOCKS) -> int:
        """This deadline as absolute wall-clock ns (for an envelope header)."""
        return clocks.wall() + (self.monotonic_ns - clocks.monotonic())

    def remaining_ns(self, clocks: Clocks = SYSTEM_CLOCKS) -> int:
        """ns left until the deadline (negative once it has passed)."""
        return self.monotonic_ns - clocks.monotonic()

    def expiry_s(self, clocks: Clocks = SYSTEM_CLOCKS, *, floor_s: float = 0.001,
                 whole: bool = False) -> float:
        """A message expiry for the time left: at least ``floor_s``; rounded up to whole
        seconds when ``whole`` (MQTT expiry intervals are whole seconds)."""
        remaining = self.remaining_ns(clocks)
        left = float(-(-remaining // 1_000_000_000)) if whole else remaining / 1e9
        return max(floor_s, left)
