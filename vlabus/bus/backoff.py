"""Jittered exponential backoff for reconnects.

Delays grow ``first * 2**attempt`` up to ``cap``; each is drawn uniformly from the upper half of
that range ("equal jitter"), so a fleet that lost its broker at the same instant does not come
back in lockstep, yet no client retries in a tight loop.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays for successive reconnect attempts; ``reset()`` after a success."""

    def __init__(self, first_s: float = 0.1, cap_s: float = 15.0,
                 uniform: Callable[[float, float], float] = random.uniform) -> None:
        if not 0 < first_s <= cap_s:
            raise ValueError(f"need 0 < first_s <= cap_s, got {first_s}, {cap_s}")
        self.first_s = first_s
        self.cap_s = cap_s
        self.attempt = 0
        self._uniform = uniform

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds."""
        ceiling = min(self.cap_s, self.first_s * 2.0 ** min(self.attempt, 32))
        self.attempt += 1
        return self._uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
