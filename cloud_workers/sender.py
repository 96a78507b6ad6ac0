"""Replies out: signed per batch, published with a bound on replies waiting for their ack.

The signer times each encode, and the time goes into the *next* reply (a message cannot carry
the time taken to encode itself). Replies go out at QoS 1 with an expiry that ends at their
deadline (at least a second: MQTT expiry intervals are whole seconds); each is counted as
served when the bus acknowledges it. A failed publish is logged and dropped: one reply must
never end the serving loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping

from cloud_workers.batcher import Batch
from cloud_workers.metrics import WorkerMetrics
from cloud_workers.queue import Request
from cloud_workers.replies import BatchTiming, build_declined, build_reply
from cloud_workers.runner import BatchResult
from schemas.deadline import Deadline
from schemas.errors import BusError
from vlabus.bus.transport import Transport
from vlabus.wire import Encoder

log = logging.getLogger(__name__)


class ReplySigner:
    """Builds and signs the replies to a batch, counting what cannot be answered."""

    def __init__(self, encoder: Encoder, metrics: WorkerMetrics, worker_id: str) -> None:
        self.encoder = encoder
        self.metrics = metrics
        self.worker_id = worker_id
        self.last_encode_ns = 0

    def sign(self, batch: Batch, result: BatchResult,
             versions: Mapping[str, int]) -> list[tuple[str, bytes, int]]:
        """The signed replies to ``batch``: (topic, payload, wall-clock deadline) each."""
        out = []
        for request, outcome in zip(batch.requests, result.outcomes, strict=True):
            self.metrics.on_wait(batch.formed_ns - request.arrived_ns)
            timing = BatchTiming(batch.model, batch.formed_ns, result.inference_ns,
                                 self.last_encode_ns)
            reply = build_reply(request, outcome, timing, worker_id=self.worker_id,
                                versions=versions, now_ns=time.time_ns())
            if reply is None:
                log.warning("no action for step %d on %r: %s", request.payload.step,
                            batch.model, outcome.error)
                self.metrics.on_drop("policy_error")
                continue
            start = time.perf_counter_ns()
            try:
                payload = self.encoder.encode(reply.body, deadline_ns=reply.deadline_ns,
                                              priority=reply.priority, corr=reply.corr)
            except BusError as exc:  # e.g. a policy's chunk too large for an envelope
                log.warning("reply to %r not encodable: %r", reply.topic, exc)
                self.metrics.on_drop("policy_error")
                continue
            self.last_encode_ns = time.perf_counter_ns() - start
            out.append((reply.topic, payload, reply.deadline_ns))
        return out


    def decline(self, requests: list[Request], reason: str) -> list[tuple[str, bytes, int]]:
        """Signed :class:`~schemas.messages.Declined` notices for the frames of ``requests``,
        dropped before the model for ``reason``: (topic, payload, wall-clock deadline) each."""
        out = []
        for request in requests:
            reply = build_declined(request, worker_id=self.worker_id, reason=reason)
            if reply is not None:
                payload = self.encoder.encode(reply.body, deadline_ns=reply.deadline_ns,
                                              priority=reply.priority, corr=reply.corr)
                out.append((reply.topic, payload, reply.deadline_ns))
        return out


class ReplySender:
    """Publishes replies on ``transport``; at most ``max_inflight`` wait for an ack."""

    def __init__(self, transport: Transport, metrics: WorkerMetrics, max_inflight: int) -> None:
        self.transport = transport
        self.metrics = metrics
        self.max_inflight = max_inflight
        self.inflight: set[asyncio.Future[None]] = set()

    @property
    def full(self) -> bool:
        return len(self.inflight) >= self.max_inflight

    async def send(self, topic: str, payload: bytes, deadline_ns: int) -> None:
        """Publish a reply once fewer than ``max_inflight`` wait for their acknowledgement."""
        if self.full:
            await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
        self.send_now(topic, payload, deadline_ns)

    def send_now(self, topic: str, payload: bytes, deadline_ns: int) -> None:
        """Publish a reply now (QoS 1; ``deadline_ns`` wall clock, 0 = none) and count it
        when acknowledged."""
        expiry = None
        if deadline_ns:
            expiry = Deadline.from_wall(deadline_ns).expiry_s(floor_s=1.0, whole=True)
        try:
            acked = self.transport.publish_nowait(topic, payload, qos=1, expiry_s=expiry)
        except Exception as exc:  # noqa: BLE001 - one failed reply must not end the loop
            log.warning("reply to %r not published: %r", topic, exc)
            return
        self.inflight.add(acked)
        acked.add_done_callback(functools.partial(self._replied, topic))

    async def settle(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the replies still waiting for their ack."""
        if self.inflight:
            await asyncio.wait(self.inflight, timeout=timeout)

    def _replied(self, topic: str, acked: asyncio.Future[None]) -> None:
        self.inflight.discard(acked)
        exc = None if acked.cancelled() else acked.exception()
        if acked.cancelled() or exc is not None:
            log.warning("reply to %r not published: %r", topic, exc or "cancelled")
            return
        self.metrics.replies.inc()
        self.metrics.summary.served += 1
