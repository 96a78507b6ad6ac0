"""Publish a recording back onto a bus with its recorded timing, like ``ros2 bag play``.

Timing: message *i* is due at ``t0 + (log_ns_i - origin_ns) / rate`` on a monotonic clock, where
``origin_ns`` is the first log time (plus ``start_offset_s``). Every due time is computed from
the same origin, so lateness never accumulates; a late message is sent at once and the next one
is still due at its own time. With ``loop`` the next pass starts where the previous pass's
timeline ended. Order is log time, ties by file position (:func:`vlabus.log.reader.iter_log`).

Messages are sent verbatim by default: live receivers reject them through their replay guard
(``duplicate`` within the sequence window, ``stale`` by sender time). A :class:`Restamper`
re-signs each message as a ``replay`` identity with a fresh sequence number and times, after
checking the recorded signature when it holds the keyring.

``prefix`` puts every topic under another root (``vlabus replay`` uses ``replay/`` unless
``--onto-live``), so a replay is never mistaken for live traffic by a process that did not ask
for it. Status messages (``…/status``: retained births and deaths, which no clock check
refuses) are skipped unless ``with_status``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import WireError
from security.keys import Keyring, Signer
from security.seal import Opener
from vlabus.bus.transport import Transport
from vlabus.log.reader import iter_log, time_range, topic_filter
from vlabus.quantiles import quantiles
from vlabus.wire import Decoder, Encoder

log = logging.getLogger(__name__)

Monotonic = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Restamper:
    """Turns recorded envelopes into fresh ones signed by a ``replay`` key.

    With ``keyring`` the recorded signature must verify first (no replay guard: a log holds
    copies by design); without one the envelope is only parsed (header, bounded decompression,
    typed decode). Sealed bodies need ``opener`` (the pool's secret); the restamped copy is
    sent unsealed. The deadline keeps its recorded budget (deadline minus sender time).
    Raises :class:`~schemas.errors.WireError` for a message that cannot be restamped.
    """

    def __init__(self, signer: Signer, *, keyring: Keyring | None = None,
                 opener: Opener | None = None, clock: Callable[[], int] = time.time_ns) -> None:
        if signer.role != "replay":
            raise ValueError(f"restamp needs a replay-role key, not {signer.role!r}")
        self._encoder = Encoder(signer, clock=clock)
        self._decoder = Decoder(keyring or Keyring(), opener=opener)
        self._verify = keyring is not None
        self._clock = clock

    def restamp(self, data: bytes) -> bytes:
        if self._verify:
            received = self._decoder.decode(data)
            header, message = received.header, received.message
        else:
            header, message = self._decoder.parse_unverified(data)
        now = self._clock()
        deadline = now + header.deadline_ns - header.sent_ns if header.deadline_ns else 0
        return self._encoder.encode(message, deadline_ns=max(deadline, 0),
                                    priority=header.priority, corr=header.corr, sent_ns=now)


@dataclass
class OffsetStats:
    """Actual minus intended send time (ms), kept in a bounded sample."""

    limit: int = 100_000
    samples: list[float] = field(default_factory=list)
    count: int = 0
    max_ms: float = 0.0

    def add(self, offset_ms: float) -> None:
        self.count += 1
        self.max_ms = max(self.max_ms, offset_ms)
        if len(self.samples) < self.limit:
            self.samples.append(offset_ms)
        else:  # keep a spread over the whole run: overwrite a slot in a fixed stride
            self.samples[self.count % self.limit] = offset_ms

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {"count": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0, "mean_ms": 0.0}
        found = quantiles(self.samples, (0.5, 0.99))
        return {"count": self.count, "p50_ms": found["p50"], "p99_ms": found["p99"],
                "max_ms": round(self.max_ms, 3),
                "mean_ms": round(sum(self.samples) / len(self.samples), 3)}


@dataclass
class ReplayStats:
    published: int = 0
    bytes: int = 0
    passes: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    topics: Counter[str] = field(default_factory=Counter)
    offsets: OffsetStats = field(default_factory=OffsetStats)
    span_s: float = 0.0  # recorded time covered by one pass, after the start offset

    def as_dict(self) -> dict[str, Any]:
        return {"published": self.published, "bytes": self.bytes, "passes": self.passes,
                "skipped": dict(self.skipped), "topics": dict(self.topics),
                "recorded_span_s": round(self.span_s, 3), "offset_ms": self.offsets.summary()}


#: Where ``vlabus replay`` publishes unless ``--onto-live``: ``replay/vla/v1/...``.
REPLAY_PREFIX = "replay/"


def is_status(topic: str) -> bool:
    """A robot's or worker's retained birth/death topic."""
    return topic.endswith("/status")


class Replayer:
    """Plays ``path`` onto ``transport``; :attr:`stats` stays valid if :meth:`run` is cancelled."""

    def __init__(
        self,
        transport: Transport,
        path: str | Path,
        *,
        rate: float = 1.0,
        loop: bool = False,
        topics: Iterable[str] | None = None,
        start_offset_s: float = 0.0,
        restamper: Restamper | None = None,
        prefix: str = "",
        with_status: bool = False,
        monotonic: Monotonic = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.transport = transport
        self.path = path
        self.rate = rate
        self.loop = loop
        self.topics = topic_filter(topics)
        self.start_offset_s = start_offset_s
        self.restamper = restamper
        self.prefix = prefix
        self.with_status = with_status
        self._monotonic = monotonic
        self._sleep = sleep  # with ``monotonic``, a test's virtual clock
        self.stats = ReplayStats()

    async def run(self) -> ReplayStats:
        first_ns, last_ns, count = time_range(self.path)
        if count == 0:
            return self.stats
        origin_ns = first_ns + int(self.start_offset_s * 1e9)
        self.stats.span_s = max(0, last_ns - origin_ns) / 1e9
        t0 = self._monotonic()
        while True:
            await self._play_pass(t0, origin_ns)
            self.stats.passes += 1
            if not self.loop or self.stats.published == 0:
                return self.stats
            t0 += self.stats.span_s / self.rate

    async def _play_pass(self, t0: float, origin_ns: int) -> None:
        for record in iter_log(self.path, topics=self.topics, start_ns=origin_ns):
            if record.format == "decision":  # the black box's notes, never bus traffic
                self.stats.skipped["not_bus_traffic"] += 1
                continue
            if not self.with_status and is_status(record.topic):
                self.stats.skipped["status"] += 1
                continue
            due = t0 + (record.log_ns - origin_ns) / 1e9 / self.rate
            delay = due - self._monotonic()
            if delay > 0:
                await self._sleep(delay)
            payload = record.data
            if self.restamper is not None:
                try:
                    payload = self.restamper.restamp(record.data)
                except WireError as exc:
                    self.stats.skipped[exc.reason.value] += 1
                    log.warning("not replaying a message on %r: %r", record.topic, exc)
                    continue
            sent = self._monotonic()
            await self.transport.publish(self.prefix + record.topic, payload)
            self.stats.offsets.add((sent - due) * 1000)
            self.stats.published += 1
            self.stats.bytes += len(payload)
            self.stats.topics[self.prefix + record.topic] += 1
