"""What the hub refuses, counted and logged without flooding its log, with the NACK to send.

Three refusals: an access rule (``denied``: logged once per identity and request until the
rules reload) and a payload over the deployment's limit (``too_large``: logged at the 1st,
2nd, 4th, 8th... so a flood costs a few lines).
"""

from __future__ import annotations

import logging
from typing import Any

from vlabus.hub import protocol as proto

log = logging.getLogger("vlabus.hub.server")


class Refusals:
    """Counts into the hub's ``stats``; each method returns the NACK frames for the client."""

    def __init__(self, stats: dict[str, int], max_payload: int) -> None:
        self.stats = stats
        self.max_payload = max_payload
        self._denials_logged: set[tuple[str, str]] = set()

    def forget_denials(self) -> None:
        """New access rules: log each denial again once."""
        self._denials_logged.clear()

    def denied(self, user: str, what: str, mid: bytes) -> list[Any]:
        """``user`` may not do ``what``."""
        self.stats["denied"] += 1
        key = (user, what)
        if key not in self._denials_logged:
            if len(self._denials_logged) >= 1024:
                self._denials_logged.clear()
            self._denials_logged.add(key)
            log.warning("hub: %r may not %s", user, what)
        return proto.nack(mid, f"{user!r} may not {what}")

    def too_large(self, rid: bytes, topic: bytes | str, size: int, mid: bytes) -> list[Any]:
        """A payload of ``size`` bytes is over ``max_payload``: no client could accept it."""
        self.stats["too_large"] += 1
        count, limit = self.stats["too_large"], self.max_payload
        if count & (count - 1) == 0:
            log.warning("hub: refused a payload of %d bytes on %r from %r: over the %d-byte "
                        "limit (%d so far)", size, topic[:64], rid, limit, count)
        return proto.nack(mid, f"payload of {size} bytes is over the {limit}-byte limit")

    def taken_over(self, client_id: str, old: bytes, new: bytes) -> list[Any]:
        """A newer connection said HELLO as ``client_id``: the older one is told to step aside."""
        self.stats["taken_over"] += 1
        log.warning("hub: client id %r taken over by %r; connection %r forgotten, no will",
                    client_id, new, old)
        return proto.nack(b"", f"{proto.TAKEN_OVER}: client id {client_id!r} connected again")
