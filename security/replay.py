"""Per-sender replay guard: a sequence window plus a clock-skew window on sender time.

Call :meth:`ReplayGuard.admit` only after the signature verified, so a forged message with a
huge sequence number cannot advance the window and lock the real sender out. The window
tolerates gaps (a shared subscription spreads one robot's sequence over several workers).
An exact copy of an admitted message (same sequence, same signature) is a ``duplicate`` — a
QoS 1 redelivery, not an attack; the same sequence with other bytes is a ``replay``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from schemas.errors import Reason, ReplayError

Clock = Callable[[], int]


class _Window:
    __slots__ = ("highest", "seen")

    def __init__(self) -> None:
        self.highest = -1
        self.seen: dict[int, bytes] = {}


class ReplayGuard:
    """Admits each (sender key, sequence) once, within ``window`` of the highest seen."""

    def __init__(
        self,
        *,
        window: int = 4096,
        max_age_ns: int = 10_000_000_000,
        max_future_ns: int = 2_000_000_000,
        max_senders: int = 65_536,
        clock: Clock = time.time_ns,
    ) -> None:
        self.window = window
        self.max_age_ns = max_age_ns
        self.max_future_ns = max_future_ns
        self.max_senders = max_senders
        self._clock = clock
        self._senders: OrderedDict[str, _Window] = OrderedDict()

    def check_time(self, sent_ns: int) -> None:
        """Raise ``stale`` or ``future`` when ``sent_ns`` is outside the skew window."""
        now = self._clock()
        if sent_ns < now - self.max_age_ns:
            raise ReplayError(f"sent {(now - sent_ns) / 1e9:.3f} s ago", reason=Reason.STALE)
        if sent_ns > now + self.max_future_ns:
            raise ReplayError(f"sent {(sent_ns - now) / 1e9:.3f} s ahead", reason=Reason.FUTURE)

    def admit(
        self, sender_key: str, seq: int, signature: bytes, *, sent_ns: int | None = None
    ) -> None:
        """Record a verified message or raise :class:`ReplayError` with its reason."""
        self.check(sender_key, seq, signature, sent_ns=sent_ns)
        self.record(sender_key, seq, signature)

    def check(
        self, sender_key: str, seq: int, signature: bytes, *, sent_ns: int | None = None
    ) -> None:
        """Raise :class:`ReplayError` when :meth:`admit` would; records nothing (a receiver
        with checks after the guard's records with :meth:`record` once they all passed)."""
        if sent_ns is not None:
            self.check_time(sent_ns)
        win = self._senders.get(sender_key)
        if win is None or seq > win.highest:
            return
        if seq <= win.highest - self.window:
            raise ReplayError(f"sequence {seq} is behind the window (highest {win.highest})",
                              reason=Reason.REPLAY)
        previous = win.seen.get(seq)
        if previous is None:
            return
        if previous == signature:
            raise ReplayError(f"sequence {seq} already received", reason=Reason.DUPLICATE)
        raise ReplayError(f"sequence {seq} reused with other bytes", reason=Reason.REPLAY)

    def record(self, sender_key: str, seq: int, signature: bytes) -> None:
        """Move ``sender_key``'s window past a message that :meth:`check` admitted."""
        win = self._senders.get(sender_key)
        if win is None:
            win = _Window()
            self._senders[sender_key] = win
            if len(self._senders) > self.max_senders:
                self._senders.popitem(last=False)
        else:
            self._senders.move_to_end(sender_key)
        if seq > win.highest:
            win.highest = seq
            win.seen[seq] = signature
            if len(win.seen) > 2 * self.window:
                floor = seq - self.window
                win.seen = {s: sig for s, sig in win.seen.items() if s > floor}
            return
        win.seen.setdefault(seq, signature)
