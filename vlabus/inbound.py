"""The one place a received message goes through the envelope checks.

Bad input is counted by reason, logged with ``%r`` and dropped; it never ends a receive loop.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from schemas.errors import Reason, UnknownKeyError, WireError
from vlabus.bus.transport import Message
from vlabus.envelope import Received
from vlabus.wire import Decoder

log = logging.getLogger(__name__)


class Rejections:
    """Counts rejected messages by reason; ``on_reject`` feeds a metric when given.

    Logging is rate-limited per reason (``log_burst`` lines per ``log_period_s``), so a flood
    of bad input costs a counter increment each, not a log line each.
    """

    #: senders with an unknown key that are counted by name (the rest add to "(others)")
    MAX_UNKNOWN_SENDERS = 256

    def __init__(self, on_reject: Callable[[Reason], None] | None = None, *,
                 log_burst: int = 5, log_period_s: float = 10.0,
                 unknown_log_period_s: float = 60.0) -> None:
        self.by_reason: Counter[str] = Counter()
        #: messages refused for an unknown key, by the sender id their header claims
        self.unknown_senders: Counter[str] = Counter()
        self._on_reject = on_reject
        self._burst = log_burst
        self._period = log_period_s
        self._window: dict[Reason, tuple[float, int]] = {}
        self._unknown_period = unknown_log_period_s
        self._unknown_logged: dict[str, float] = {}

    def unknown_key(self, exc: UnknownKeyError) -> bool:
        """Count a message with an unknown key under its claimed sender; True when that sender
        has not been logged in the last minute (log it, with the hint)."""
        sender = exc.sender or "(no sender)"
        if (sender not in self.unknown_senders
                and len(self.unknown_senders) >= self.MAX_UNKNOWN_SENDERS):
            sender = "(others)"  # bounded: a flood of made-up names costs one entry
        self.unknown_senders[sender] += 1
        now = time.monotonic()
        last = self._unknown_logged.get(sender)
        if last is not None and now - last < self._unknown_period:
            return False
        self._unknown_logged[sender] = now
        if len(self._unknown_logged) > self.MAX_UNKNOWN_SENDERS:
            self._unknown_logged.pop(next(iter(self._unknown_logged)))
        return True

    def should_log(self, reason: Reason) -> bool:
        """True for the first ``log_burst`` rejects of ``reason`` in each period."""
        now = time.monotonic()
        start, count = self._window.get(reason, (now, 0))
        if now - start >= self._period:
            start, count = now, 0
        self._window[reason] = (start, count + 1)
        return count < self._burst

    def count(self, reason: Reason) -> None:
        self.by_reason[reason.value] += 1
        if self._on_reject is not None:
            self._on_reject(reason)

    def reject(self, exc: WireError, topic: str) -> None:
        """Count ``exc`` by its reason and log it (rate-limited)."""
        self.count(exc.reason)
        if self.should_log(exc.reason):
            # Duplicates are QoS 1 redeliveries: expected, so not worth a warning.
            level = logging.DEBUG if exc.reason is Reason.DUPLICATE else logging.WARNING
            log.log(level, "rejected message on %r: %r (%d %s so far)", topic, exc,
                    self.by_reason[exc.reason.value], exc.reason.value)

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())


def accept(decoder: Decoder, message: Message, rejections: Rejections, *,
           on_error: Callable[[WireError, Message], None] | None = None,
           commit: bool = True) -> Received | None:
    """Decode ``message`` (bound to the topic it arrived on) or count and log why not; never
    raises for bad input. ``on_error`` also sees each refusal (a worker answers a refused
    session with it). ``commit=False``: the caller checks more, then ``decoder.commit``."""
    try:
        return decoder.decode(message.payload, topic=message.topic, commit=commit)
    except UnknownKeyError as exc:
        rejections.count(exc.reason)
        if rejections.unknown_key(exc):
            log.warning("refused messages from %r on %r: key %s is not in this keyring (%d "
                        "so far); if %r belongs to the fleet, add its public key "
                        "(ROLE/%s.pub.pem) to the keyring directory: it is picked up within "
                        "seconds, no restart", exc.sender, message.topic, exc.key_id,
                        rejections.unknown_senders[exc.sender or "(no sender)"], exc.sender,
                        exc.sender or "ID")
        return None
    except WireError as exc:
        rejections.reject(exc, message.topic)
        if on_error is not None:
            on_error(exc, message)
        return None
