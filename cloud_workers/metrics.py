"""Worker metrics: Prometheus series on a per-worker registry, plus the ``--json`` summary.

Labels are bounded: ``reason`` is a :class:`~schemas.errors.Reason`, ``cause`` one of
:data:`CAUSES`. Latency samples for the summary live in bounded deques (the newest
``SAMPLES`` of each), so a long-running worker's memory stays flat.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections import deque
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from schemas.errors import Reason
from vlabus.metrics import LATENCY_BUCKETS
from vlabus.quantiles import quantiles

#: Why a request left the queue without a reply.
CAUSES = ("deadline", "shed", "unknown_model", "policy_error", "shutdown", "revoked", "stalled")
SAMPLES = 65_536
_LATENCY = LATENCY_BUCKETS  # resolve 1–20 ms (see vlabus.metrics)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter("vlabus_worker_received_total",
                                "Messages taken off the bus", registry=r)
        self.rejected = Counter("vlabus_worker_rejected_total",
                                "Messages that failed the receive pipeline", ["reason"], registry=r)
        self.queue_depth = Gauge("vlabus_worker_queue_depth", "Requests waiting", registry=r)
        self.queue_wait = Histogram("vlabus_worker_queue_wait_seconds",
                                    "Arrival to batch formation", buckets=_LATENCY, registry=r)
        self.batch_size = Histogram("vlabus_worker_batch_size", "Requests per batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.inference = Histogram("vlabus_worker_inference_seconds",
                                   "Policy time per batch", buckets=_LATENCY, registry=r)
        self.dropped = Counter("vlabus_worker_dropped_total",
                               "Requests dropped before a reply", ["cause"], registry=r)
        self.replies = Counter("vlabus_worker_replies_total", "Replies published", registry=r)
        self.stalled = Gauge("vlabus_worker_stalled",
                             "1 while a batch runs far past its estimate (out of the pool)",
                             registry=r)
        for reason in Reason:
            self.rejected.labels(reason.value)
        for cause in CAUSES:
            self.dropped.labels(cause)
        self.summary = Summary()

    def on_reject(self, reason: Reason) -> None:
        self.rejected.labels(reason.value).inc()
        self.summary.rejected[reason.value] += 1

    def on_drop(self, cause: str, count: int = 1) -> None:
        if count:
            self.dropped.labels(cause).inc(count)
            self.summary.dropped[cause] += count

    def on_batch(self, size: int, inference_ns: int) -> None:
        self.batch_size.observe(size)
        self.inference.observe(inference_ns / 1e9)
        self.summary.batches += 1
        self.summary.batched += size
        self.summary.inference_ns.append(inference_ns)

    def on_wait(self, wait_ns: int) -> None:
        self.queue_wait.observe(wait_ns / 1e9)
        self.summary.queue_wait_ns.append(wait_ns)


class Summary:
    """Plain counts for ``--json``; independent of the Prometheus registry."""

    def __init__(self) -> None:
        self.received = 0
        self.served = 0
        self.batches = 0
        self.batched = 0
        self.rejected: Tally[str] = Tally()
        self.dropped: Tally[str] = Tally()
        self.queue_wait_ns: deque[int] = deque(maxlen=SAMPLES)
        self.inference_ns: deque[int] = deque(maxlen=SAMPLES)

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_total": sum(self.rejected.values()),
            "served": self.served,
            "dropped": dict(sorted(self.dropped.items())),
            "dropped_total": sum(self.dropped.values()),
            "batches": self.batches,
            "mean_batch_size": round(self.batched / self.batches, 3) if self.batches else 0.0,
            "queue_wait_ms": quantiles(self.queue_wait_ns, (0.5, 0.99), scale=1e6),
            "inference_ms": quantiles(self.inference_ns, (0.5, 0.99), scale=1e6),
        }

