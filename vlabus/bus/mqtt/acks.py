"""Which PUBACKs the loop waits for, decided on paho's (any) thread without waking the loop.

paho calls ``on_publish`` for every QoS 0 packet written as well as for each PUBACK; waking the
loop for those would cost a thread switch per frame. The loop registers the QoS 1 message ids
it waits for (:meth:`AckGate.expect`); :meth:`AckGate.arrived` says whether an acknowledgement
is one of them. One that beats the registration (the PUBACK read before ``publish()`` returned)
waits in a small bounded table and is answered by ``expect``. Pure apart from its lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

EARLY_LIMIT = 256  # acknowledgements kept before anyone waits for them


class AckGate:
    """Thread-safe: ``arrived`` from any thread, ``expect`` from the loop."""

    def __init__(self, early_limit: int = EARLY_LIMIT) -> None:
        self._lock = threading.Lock()
        self._awaited: set[int] = set()
        self._early: OrderedDict[int, int] = OrderedDict()
        self._early_limit = early_limit

    def arrived(self, mid: int, code: int) -> bool:
        """An acknowledgement (reason ``code``) for ``mid``: True when the loop waits for it
        (hand it over), False when it was kept for a later :meth:`expect` (or is a QoS 0
        write, which nobody will ask about; the oldest such are forgotten)."""
        with self._lock:
            if mid in self._awaited:
                self._awaited.discard(mid)
                return True
            self._early[mid] = code
            if len(self._early) > self._early_limit:
                self._early.popitem(last=False)
        return False

    def expect(self, mid: int) -> int | None:
        """Wait for ``mid``'s acknowledgement: its reason code if it came already, else None
        (then :meth:`arrived` returns True for it)."""
        with self._lock:
            code = self._early.pop(mid, None)
            if code is None:
                self._awaited.add(mid)
        return code
