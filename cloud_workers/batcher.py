"""Dynamic batch formation: up to ``max_batch`` requests or ``max_delay``, whichever first.

Pure logic with an injected clock. A batch holds requests of one model only: the model of the
queue's head (best priority, earliest deadline). The batch is released when

* ``max_batch`` requests of that model are waiting, or
* the oldest of them has waited ``max_delay``, or
* waiting any longer would make the earliest deadline among them unreachable given the
  model's inference-time estimate, or
* the head is ``CRITICAL`` (safety-critical frames never wait for company).

Otherwise :meth:`Batcher.poll` says when to look again. Requests that can no longer meet their
deadline are removed first and returned for counting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cloud_workers.queue import Clock, DeadlineQueue, Request
from schemas.messages import Priority


@dataclass(slots=True)
class Batch:
    model: str
    requests: list[Request]
    formed_ns: int


@dataclass(slots=True)
class Decision:
    """A batch to run now, or the time to poll again (None: wait for a new request)."""

    batch: Batch | None = None
    wake_at_ns: int | None = None
    expired: list[Request] = field(default_factory=list)


class Batcher:
    def __init__(self, queue: DeadlineQueue, *, max_batch: int, max_delay_ns: int,
                 clock: Clock = time.time_ns) -> None:
        if max_batch < 1 or max_delay_ns < 0:
            raise ValueError("max_batch >= 1 and max_delay >= 0")
        self.queue = queue
        self.max_batch = max_batch
        self.max_delay_ns = max_delay_ns
        self._clock = clock

    def poll(self, now_ns: int | None = None) -> Decision:
        """Form a batch if one is due; see the module docstring for the rules."""
        now = self._clock() if now_ns is None else now_ns
        expired = self.queue.drop_hopeless(now)
        head = self.queue.head()
        if head is None:
            return Decision(expired=expired)
        model = head.model
        due = self._due(model)
        if (head.priority == Priority.CRITICAL or now >= due
                or self.queue.count(model) >= self.max_batch):
            batch = Batch(model, self.queue.take(model, self.max_batch), now)
            return Decision(batch=batch, expired=expired)
        return Decision(wake_at_ns=due, expired=expired)

    def _due(self, model: str) -> int:
        oldest = self.queue.oldest_arrival(model)
        due = (oldest or 0) + self.max_delay_ns
        deadline = self.queue.earliest_deadline(model)
        if deadline is not None:
            due = min(due, deadline - self.queue.estimate.get(model))
        return due
