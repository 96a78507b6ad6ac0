"""Jittered exponential backoff for reconnects.

Delays grow ``first * 2**attempt`` up to ``cap``; each is drawn uniformly from the upper half of
that range ("equal jitter"), so a fleet that lost its broker at the same instant does not come
back in lockstep, yet no client retries in a tight loop.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

log = logging.getLogger("vlabus.bus")


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
        self._hold_s = 0.0

    def hold(self, seconds: float) -> None:
        """Make the next delay at least ``seconds`` (another client holds our id: wait)."""
        self._hold_s = max(self._hold_s, seconds)

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds."""
        ceiling = min(self.cap_s, self.first_s * 2.0 ** min(self.attempt, 32))
        self.attempt += 1
        held, self._hold_s = self._hold_s, 0.0
        return max(held, self._uniform(ceiling / 2, ceiling))

    def reset(self) -> None:
        self.attempt = 0


class Flaps:
    """Connections that end soon after they are made, and sessions another client took over.

    Backoff is reset only after a connection that lasted ``stable_s`` (``options.extra``,
    default 3 s), so a connection that keeps being closed right after it is made backs off like
    a failing one. Two clients with the same client id make exactly that pattern on a broker
    that closes the older connection without saying why (Mosquitto 2.0). A session taken over
    (MQTT reason 0x8E, the hub's takeover NACK), or ``streak`` short-lived connections in a
    row, hold the next attempt for ``takeover_hold_s`` (default 30 s): two copies of a client
    then trade the id at most once per hold instead of fighting in a reconnect loop. Counted in
    ``flaps`` and ``taken_over``.
    """

    def __init__(self, backoff: Backoff, extra: dict[str, str], client_id: str,
                 streak: int = 3) -> None:
        self.backoff = backoff
        self.stable_s = float(extra.get("stable_s", "3"))
        self.hold_s = float(extra.get("takeover_hold_s", "30"))
        self.client_id = client_id
        self.counts = {"flaps": 0, "taken_over": 0}
        self._limit = streak
        self._streak = 0
        self._up_at: float | None = None

    def up(self, now: float) -> None:
        self._up_at = now

    def down(self, now: float, *, taken_over: bool = False) -> dict[str, int]:
        """A connection ended at ``now``; returns the updated counts."""
        lived = now - self._up_at if self._up_at is not None else 0.0
        self._up_at = None
        if taken_over:
            self.counts["taken_over"] += 1
            self._streak = 0
            self.backoff.hold(self.hold_s)
            log.error("%s: another client connected with this client id and took it over; "
                      "taking it back in %.0f s (client ids must be unique)",
                      self.client_id, self.hold_s)
        elif lived >= self.stable_s:
            self._streak = 0
            self.backoff.reset()
        else:
            self.counts["flaps"] += 1
            self._streak += 1
            if self._streak >= self._limit:
                self._streak = 0
                self.backoff.hold(self.hold_s)
                log.error("%s: %d connections in a row ended within %.1f s of being made "
                          "(another client with this client id, or a broker dropping it); "
                          "next attempt in %.0f s", self.client_id, self._limit,
                          self.stable_s, self.hold_s)
        return self.counts
