"""The one place a received message goes through the envelope checks.

Bad input is counted by reason, logged with ``%r`` and dropped; it never ends a receive loop.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from schemas.errors import Reason, WireError
from vlabus.transport import Message
from vlabus.wire import Decoder, Received

log = logging.getLogger(__name__)


class Rejections:
    """Counts rejected messages by reason; ``on_reject`` feeds a metric when given."""

    def __init__(self, on_reject: Callable[[Reason], None] | None = None) -> None:
        self.by_reason: Counter[str] = Counter()
        self._on_reject = on_reject

    def count(self, reason: Reason) -> None:
        self.by_reason[reason.value] += 1
        if self._on_reject is not None:
            self._on_reject(reason)

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())


def accept(decoder: Decoder, message: Message, rejections: Rejections) -> Received | None:
    """Decode ``message`` or count and log why not; never raises for bad input."""
    try:
        return decoder.decode(message.payload)
    except WireError as exc:
        rejections.count(exc.reason)
        # Duplicates are QoS 1 redeliveries: expected, so not worth a warning each.
        level = logging.DEBUG if exc.reason is Reason.DUPLICATE else logging.WARNING
        log.log(level, "rejected message on %r: %r", message.topic, exc)
        return None
