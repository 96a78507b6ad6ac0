"""Which direct worker a robot sends its next frame to. Pure logic, injected clock and random.

The :class:`Directory` holds the direct endpoints that workers advertise in their signed
status (:func:`schemas.status.direct_advert`), each with its advertised queue depth, the
fresher depth its last direct reply carried, and the requests this robot has in flight to it.
:meth:`Directory.pick` is *power of two choices*: draw two usable workers at random and take
the one with the lower load (depth + this robot's in-flight requests). Two random draws keep a
fleet of robots from all piling onto the one worker that looked idlest in the last status, yet
avoid the loaded one almost as well as a full scan.

A worker is not usable while its advert is older than ``stale_s`` (its status stopped; the will
may not have come yet) or while it cools down after a failure (a lost connection, a reply that
did not come in time): ``backoff_s`` doubling to ``max_backoff_s``, reset by a reply.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from schemas.status import DirectAdvert


@dataclass(slots=True)
class Entry:
    """One advertised worker as this robot sees it."""

    advert: DirectAdvert
    seen_ns: int
    depth: int
    inflight: int = 0
    failures: int = 0
    cool_until_ns: int = 0

    @property
    def load(self) -> int:
        return self.depth + self.inflight


class Directory:
    """Advertised direct workers and the choice between them; see the module docstring."""

    def __init__(self, *, clock: Callable[[], int] = time.monotonic_ns,
                 rng: random.Random | None = None, stale_s: float = 10.0,
                 backoff_s: float = 0.5, max_backoff_s: float = 8.0,
                 max_workers: int = 1024) -> None:
        self._clock = clock
        self._rng = rng or random.Random()
        self._stale_ns = int(stale_s * 1e9)
        self._backoff_ns = int(backoff_s * 1e9)
        self._max_backoff_ns = int(max_backoff_s * 1e9)
        self._max = max_workers
        self.entries: dict[str, Entry] = {}

    def update(self, advert: DirectAdvert) -> bool:
        """Take a worker's advert; False when it is older than the one held (a stale retained
        status arriving late must not replace a newer one)."""
        entry = self.entries.get(advert.worker)
        if entry is not None and (advert.session, advert.time_ns) < (
                entry.advert.session, entry.advert.time_ns):
            return False
        if entry is None:
            if len(self.entries) >= self._max:
                return False
            self.entries[advert.worker] = Entry(advert, self._clock(), advert.queue_depth)
            return True
        if advert.endpoint != entry.advert.endpoint or advert.session != entry.advert.session:
            entry.failures, entry.cool_until_ns, entry.inflight = 0, 0, 0  # a restarted worker
        entry.advert, entry.seen_ns, entry.depth = advert, self._clock(), advert.queue_depth
        return True

    def remove(self, worker: str) -> None:
        """The worker went offline (its death status or will) or stopped advertising."""
        self.entries.pop(worker, None)

    def usable(self) -> list[str]:
        now = self._clock()
        return [name for name, e in self.entries.items()
                if now - e.seen_ns < self._stale_ns and now >= e.cool_until_ns]

    def pick(self) -> str | None:
        """Power of two choices over the usable workers; None when there is none."""
        usable = self.usable()
        if len(usable) <= 1:
            return usable[0] if usable else None
        first, second = self._rng.sample(usable, 2)
        a, b = self.entries[first], self.entries[second]
        return first if a.load <= b.load else second

    def sent(self, worker: str) -> None:
        entry = self.entries.get(worker)
        if entry is not None:
            entry.inflight += 1

    def answered(self, worker: str, depth: int | None = None) -> None:
        """A reply came back from ``worker`` (with its queue depth then, when it said)."""
        entry = self.entries.get(worker)
        if entry is None:
            return
        entry.inflight = max(0, entry.inflight - 1)
        entry.failures = 0
        if depth is not None:
            entry.depth = depth

    def failed(self, worker: str, inflight: int = 1) -> float:
        """``worker`` failed (lost connection, no reply in time): cool it down; the seconds."""
        entry = self.entries.get(worker)
        if entry is None:
            return 0.0
        entry.inflight = max(0, entry.inflight - inflight)
        wait = min(self._max_backoff_ns, self._backoff_ns << min(entry.failures, 16))
        entry.failures += 1
        entry.cool_until_ns = self._clock() + wait
        return wait / 1e9
