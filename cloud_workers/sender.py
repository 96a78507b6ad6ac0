"""Reply publishing with a bound on replies waiting for their acknowledgement.

Replies go out at QoS 1 with an expiry that ends at their deadline (at least a second: MQTT
expiry intervals are whole seconds); each is counted as served when the bus acknowledges it.
A failed publish is logged and dropped: one reply must never end the serving loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from cloud_workers.metrics import WorkerMetrics
from schemas.deadline import Deadline
from vlabus.bus.transport import Transport

log = logging.getLogger(__name__)


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
