"""The worker's schedulers, selectable with ``vlabus worker --scheduler``, all in the same
worker code so a comparison measures the scheduling rule and nothing else:

* ``vlabus`` — :class:`~cloud_workers.deadline.DeadlineScheduler`: priority and deadline order,
  batch size from t(batch), hopeless requests dropped before the model, no starvation.
* ``fifo`` — dynamic batching in arrival order, released at ``max_batch`` requests or after
  ``max_delay`` (Triton's default dynamic batcher); nothing is dropped for lateness.
* ``serial`` — one request at a time in arrival order (how openpi's and LeRobot's policy servers
  answer); nothing is dropped for lateness.

Each returns a queue (``push``, ``len``, ``drain``, ``remove_if``, ``estimate``) and a batcher
(``poll``) with the interfaces the worker already uses. Pure logic with an injected clock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge, Histogram

from cloud_workers.batcher import Batch, Decision
from cloud_workers.batchtime import BatchTimes
from cloud_workers.deadline import BatchObserver, DeadlineScheduler, ServiceQueue
from cloud_workers.queue import Clock, Request
from cloud_workers.slots import SlotPlanner

SCHEDULERS = ("vlabus", "fifo", "serial")
_SLACK = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class WorkQueue(Protocol):
    """What the worker asks of a queue."""

    estimate: BatchTimes

    def __len__(self) -> int: ...

    def push(self, request: Request) -> list[Request]: ...

    def drain(self) -> list[Request]: ...

    def remove_if(self, condition: Callable[[Request], bool]) -> list[Request]: ...


class Scheduler(Protocol):
    """What the worker asks of a batcher."""

    def poll(self, now_ns: int | None = None) -> Decision: ...


class ArrivalQueue:
    """Bounded, first in first out; when full the newcomer is refused (returned as shed)."""

    def __init__(self, capacity: int, estimate: BatchTimes) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.estimate = estimate
        self._items: deque[Request] = deque()
        self._seq = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, request: Request) -> list[Request]:
        if len(self._items) >= self.capacity:
            return [request]
        self._seq += 1
        request.seq = self._seq
        self._items.append(request)
        return []

    def head(self) -> Request | None:
        return self._items[0] if self._items else None

    def take(self, model: str, limit: int) -> list[Request]:
        """Remove and return up to ``limit`` requests of ``model``, oldest first."""
        taken = [req for req in self._items if req.model == model][:limit]
        gone = {id(req) for req in taken}
        self._items = deque(req for req in self._items if id(req) not in gone)
        return taken

    def count(self, model: str) -> int:
        return sum(1 for req in self._items if req.model == model)

    def drain(self) -> list[Request]:
        items = list(self._items)
        self._items.clear()
        return items

    def remove_if(self, condition: Callable[[Request], bool]) -> list[Request]:
        """Remove and return every request for which ``condition`` holds (a revoked key)."""
        removed = [req for req in self._items if condition(req)]
        if removed:
            self._items = deque(req for req in self._items if not condition(req))
        return removed


class FifoBatcher:
    """Dynamic batching in arrival order (``serial`` is ``max_batch=1, max_delay_ns=0``)."""

    def __init__(self, queue: ArrivalQueue, *, max_batch: int, max_delay_ns: int,
                 clock: Clock = time.time_ns, observer: BatchObserver | None = None) -> None:
        if max_batch < 1 or max_delay_ns < 0:
            raise ValueError("max_batch >= 1 and max_delay >= 0")
        self.queue = queue
        self.max_batch = max_batch
        self.max_delay_ns = max_delay_ns
        self.observer = observer
        self._clock = clock

    def poll(self, now_ns: int | None = None) -> Decision:
        """The oldest request's model: a batch when ``max_batch`` wait or the oldest has waited
        ``max_delay``; otherwise when to look again."""
        now = self._clock() if now_ns is None else now_ns
        head = self.queue.head()
        if head is None:
            return Decision()
        due = head.arrived_ns + self.max_delay_ns
        if now < due and self.queue.count(head.model) < self.max_batch:
            return Decision(wake_at_ns=due)
        members = self.queue.take(head.model, self.max_batch)
        if self.observer is not None:
            predicted = self.queue.estimate.time(head.model, len(members))
            self.observer(head.model, len(members), predicted,
                          [r.deadline_ns - now - predicted for r in members if r.deadline_ns])
        return Decision(batch=Batch(head.model, members, now))


class SchedulerMetrics:
    """The worker's inference-time estimate and the deadline slack of what it runs."""

    def __init__(self, registry: CollectorRegistry, kind: str) -> None:
        self.estimate = Gauge("vlabus_worker_inference_estimate_seconds",
                              "Estimated time of the batch just formed (from t(batch))",
                              registry=registry)
        self.slack = Histogram("vlabus_worker_deadline_slack_seconds",
                               "Deadline minus estimated finish, per request at batch start "
                               "(0 bucket: expected late)", buckets=_SLACK, registry=registry)
        self.info = Gauge("vlabus_worker_scheduler_info", "The scheduler in use", ["scheduler"],
                          registry=registry)
        self.info.labels(kind).set(1)

    def observe(self, model: str, size: int, predicted_ns: int, slacks: list[int]) -> None:
        del model, size
        self.estimate.set(predicted_ns / 1e9)
        for slack in slacks:
            self.slack.observe(max(0.0, slack / 1e9))


def make_scheduler(kind: str, policies: Mapping[str, Any], *, max_batch: int,
                   max_delay_ns: int, capacity: int, registry: CollectorRegistry | None = None,
                   clock: Clock = time.time_ns, slots: bool = True,
                   ) -> tuple[WorkQueue, Scheduler]:
    """The queue and batcher for ``kind`` (one of :data:`SCHEDULERS`). Policies with a
    ``profile`` seed the t(batch) estimate; others are learnt from the batches they run.
    ``slots``: ``vlabus`` plans periodic robots' next frames and suggests when to send them
    (:mod:`cloud_workers.slots`); ``fifo`` and ``serial`` never do."""
    if kind not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {kind!r}; choose one of {', '.join(SCHEDULERS)}")
    times = BatchTimes()
    for name, policy in policies.items():
        profile = getattr(policy, "profile", None)
        if profile is not None and callable(getattr(profile, "time_ns", None)):
            times.seed(name, profile, max_batch)
    observer = SchedulerMetrics(registry, kind).observe if registry is not None else None
    if kind == "vlabus":
        queue = ServiceQueue(capacity, clock=clock, estimate=times)
        scheduler = DeadlineScheduler(queue, max_batch=max_batch, max_delay_ns=max_delay_ns,
                                      clock=clock, observer=observer)
        if slots:
            scheduler.planner = SlotPlanner(times, max_batch=max_batch,
                                            margin_ns=scheduler.margin_ns)
        return queue, scheduler
    fifo = ArrivalQueue(capacity, times)
    if kind == "serial":
        max_batch, max_delay_ns = 1, 0
    return fifo, FifoBatcher(fifo, max_batch=max_batch, max_delay_ns=max_delay_ns, clock=clock,
                             observer=observer)
