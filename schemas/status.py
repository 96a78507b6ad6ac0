"""The one way to build a :class:`~schemas.messages.Status` (birth or death of a client).

Robots, workers and the robot's will all announce themselves through :func:`status_message`,
so every status carries the same fields the same way and a role or state is checked once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Literal

from schemas.messages import Status

Role = Literal["robot", "worker", "recorder", "publisher", "hub"]
State = Literal["online", "offline"]
STATES: tuple[State, ...] = ("online", "offline")


def status_message(client_id: str, role: Role, state: str, *, session: int,
                   models: Mapping[str, int] | None = None,
                   detail: Mapping[str, str] | None = None,
                   time_ns: int | None = None) -> Status:
    """A status for ``client_id``; ``state`` must be ``online`` or ``offline`` (ValueError
    otherwise); ``time_ns`` defaults to the wall clock now."""
    if state not in STATES:
        raise ValueError(f"status state {state!r}, expected one of {STATES}")
    return Status(client_id=client_id, role=role, state=state, session=session,
                  time_ns=time.time_ns() if time_ns is None else time_ns,
                  models=dict(models or {}), detail=dict(detail or {}))
