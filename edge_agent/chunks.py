"""A queue of timestamped actions executed at the control rate, blended where chunks overlap.

Actions are keyed by control tick (``tick x period_ns`` after the queue's origin is when each is
due). A chunk answering the frame of tick ``k`` holds the actions for ticks ``k, k+1, …``; ticks
already executed are dropped, ticks already queued are cross-faded from the old chunk to the new
one over the overlap (so the arm does not jump), and the rest are appended.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class QueuedAction:
    tick: int
    action: Vector
    source: str
    blended: bool = False
    cause: str | None = None


class ActionQueue:
    """Bounded to ``capacity`` ticks ahead; not thread-safe (one control loop owns it)."""

    def __init__(self, period_ns: int, *, origin_ns: int = 0, capacity: int = 1024) -> None:
        if period_ns <= 0:
            raise ValueError("period_ns must be positive")
        self.period_ns = period_ns
        self.origin_ns = origin_ns
        self.capacity = capacity
        self._items: dict[int, QueuedAction] = {}
        self.next_tick = 0  # the first tick not executed yet
        self.blended = 0
        self.dropped_stale = 0

    def due_ns(self, tick: int) -> int:
        """When ``tick``'s action is due on the queue's clock."""
        return self.origin_ns + tick * self.period_ns

    def tick_at(self, now_ns: int) -> int:
        return max(0, (now_ns - self.origin_ns) // self.period_ns)

    def ahead(self) -> int:
        """How many consecutive ticks from ``next_tick`` already have an action."""
        count = 0
        while self.next_tick + count in self._items:
            count += 1
        return count

    def dry_tick(self) -> int:
        """The first tick with no queued action: when the queue runs dry."""
        return self.next_tick + self.ahead()

    def has(self, tick: int) -> bool:
        return tick in self._items

    def clear(self) -> None:
        """Forget every queued action (e.g. before acting on a safety-critical observation)."""
        self._items.clear()

    def add_chunk(self, first_tick: int, actions: npt.ArrayLike, source: str, *,
                  tick_stride: float = 1.0, cause: str | None = None) -> int:
        """Merge an HxD chunk whose row ``i`` is due at ``first_tick + round(i x stride)``.

        Returns how many rows landed (not stale, within capacity).
        """
        rows = np.asarray(actions, dtype=np.float32)
        if rows.ndim == 1:
            rows = rows[None, :]
        targets = [(first_tick + round(i * tick_stride), row) for i, row in enumerate(rows)]
        fresh = [(t, row) for t, row in targets
                 if self.next_tick <= t < self.next_tick + self.capacity]
        self.dropped_stale += len(targets) - len(fresh)
        overlap = [t for t, _ in fresh if t in self._items]
        span = len(overlap)
        for t, row in fresh:
            old = self._items.get(t)
            if old is None:
                self._items[t] = QueuedAction(t, row.copy(), source, cause=cause)
                continue
            # Linear cross-fade: the new chunk's weight grows over the overlap.
            weight = (overlap.index(t) + 1) / (span + 1)
            mixed = ((1.0 - weight) * old.action + weight * row).astype(np.float32)
            self._items[t] = QueuedAction(t, mixed, source, blended=True, cause=cause)
            self.blended += 1
        return len(fresh)

    def pop(self, tick: int) -> QueuedAction | None:
        """The action for ``tick``; everything before it is discarded as no longer due."""
        for old in [t for t in self._items if t < tick]:
            del self._items[old]
        self.next_tick = max(self.next_tick, tick + 1)
        return self._items.pop(tick, None)

    def __len__(self) -> int:
        return len(self._items)
