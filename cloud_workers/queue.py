"""The worker's bounded request queue, ordered by (priority, absolute deadline, arrival).

Pure logic with an injected clock: no I/O, no threads. The worker pushes decoded requests and
the batcher takes batches of one model at a time. Two ways out other than being served, both
counted by the caller from the returned lists:

* ``deadline`` — at batch time, a request whose deadline falls before ``now + estimate`` of the
  inference time for its model can no longer be met, so it never reaches the model;
* ``shed`` — when the queue is full, the entry that sorts last (lowest priority, then latest
  deadline, then latest arrival) is dropped; that may be the newcomer itself.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vlabus.envelope import Header

Clock = Callable[[], int]
NO_DEADLINE = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """What the worker knows about a request besides its body: the verified envelope header
    (its sender gets the reply), when the transport received it and how long decoding took."""

    header: Header
    received_ns: int
    decode_ns: int


@dataclass(slots=True)
class Request:
    """One unit of work. ``deadline_ns`` is absolute wall-clock ns (0 = none)."""

    model: str
    priority: int
    deadline_ns: int
    arrived_ns: int
    payload: Any = None
    seq: int = 0
    meta: RequestMeta | None = None
    #: who sent it (the envelope's authenticated sender; "" when unknown)
    source: str = ""
    #: a periodic robot's frame: how long until it would send the next one (0: not stated)
    interval_ns: int = 0
    #: when the robot sent it (its wall clock; 0: unknown)
    sent_ns: int = 0
    #: the scheduler's send-time suggestion for the robot's next frame (0: none)
    hint_ns: int = 0

    @property
    def sort_key(self) -> tuple[int, int, int]:
        return (self.priority, self.deadline_ns or NO_DEADLINE, self.seq)


class InferenceEstimate:
    """Per-model exponentially weighted mean of batch inference time (ns).

    Before the first measurement a model's estimate is ``initial_ns`` (warm-up sets it)."""

    def __init__(self, alpha: float = 0.2, initial_ns: int = 0) -> None:
        self.alpha = alpha
        self.initial_ns = initial_ns
        self._mean: dict[str, float] = {}

    def observe(self, model: str, duration_ns: int) -> None:
        old = self._mean.get(model)
        self._mean[model] = float(duration_ns) if old is None else (
            old + self.alpha * (duration_ns - old))

    def get(self, model: str) -> int:
        return int(self._mean.get(model, self.initial_ns))

    def relax(self, model: str) -> None:
        """Shrink ``model``'s estimate after it caused drops.

        An estimate is only corrected by running the model; if one slow batch inflates it so
        far that every request looks hopeless, nothing would run again. Each drop pass pulls
        the estimate down, so a request soon runs and measures the model afresh.
        """
        mean = self._mean.get(model)
        if mean is not None:
            self._mean[model] = mean * (1.0 - self.alpha)


class DeadlineQueue:
    """Bounded priority/deadline queue. Entries are kept sorted with the best at the end,
    so serving pops from the end and shedding removes from the front."""

    def __init__(self, capacity: int, *, clock: Clock = time.time_ns,
                 estimate: InferenceEstimate | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.estimate = estimate or InferenceEstimate()
        self._clock = clock
        self._seq = 0
        # (negated sort key, request): ascending order puts the best request last
        self._items: list[tuple[tuple[int, int, int], Request]] = []

    def __len__(self) -> int:
        return len(self._items)

    def push(self, request: Request) -> list[Request]:
        """Queue ``request``; returns the entries shed to make room (possibly ``request``)."""
        self._seq += 1
        request.seq = self._seq
        p, d, s = request.sort_key
        bisect.insort(self._items, ((-p, -d, -s), request), key=lambda item: item[0])
        shed: list[Request] = []
        while len(self._items) > self.capacity:
            shed.append(self._items.pop(0)[1])
        return shed

    def head(self) -> Request | None:
        """The request that would be served next, without removing it."""
        return self._items[-1][1] if self._items else None

    def drop_hopeless(self, now_ns: int | None = None) -> list[Request]:
        """Remove every request whose deadline falls before now + its model's estimate."""
        now = self._clock() if now_ns is None else now_ns
        keep: list[tuple[tuple[int, int, int], Request]] = []
        dropped: list[Request] = []
        ready_at: dict[str, int] = {}  # earliest finish per model, if started now
        for item in self._items:
            req = item[1]
            finish = ready_at.get(req.model)
            if finish is None:
                finish = ready_at[req.model] = now + self.estimate.get(req.model)
            if req.deadline_ns and req.deadline_ns < finish:
                dropped.append(req)
            else:
                keep.append(item)
        if dropped:
            self._items = keep
            for model in {req.model for req in dropped}:
                self.estimate.relax(model)
        return dropped

    def count(self, model: str) -> int:
        return sum(1 for _, req in self._items if req.model == model)

    def take(self, model: str, limit: int) -> list[Request]:
        """Remove and return up to ``limit`` requests of ``model``, best first."""
        taken: list[Request] = []
        i = len(self._items) - 1
        while i >= 0 and len(taken) < limit:
            if self._items[i][1].model == model:
                taken.append(self._items.pop(i)[1])
            i -= 1
        return taken

    def oldest_arrival(self, model: str) -> int | None:
        arrivals = [req.arrived_ns for _, req in self._items if req.model == model]
        return min(arrivals) if arrivals else None

    def earliest_deadline(self, model: str) -> int | None:
        deadlines = [req.deadline_ns for _, req in self._items
                     if req.model == model and req.deadline_ns]
        return min(deadlines) if deadlines else None

    def remove_if(self, condition: Callable[[Request], bool]) -> list[Request]:
        """Remove and return every request for which ``condition`` holds (a revoked key)."""
        removed = [req for _, req in self._items if condition(req)]
        if removed:
            self._items = [item for item in self._items if not condition(item[1])]
        return removed

    def drain(self) -> list[Request]:
        """Remove everything (shutdown), best first."""
        items = [req for _, req in reversed(self._items)]
        self._items.clear()
        return items
