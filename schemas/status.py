"""The one way to build a :class:`~schemas.messages.Status` (birth or death of a client).

Robots, workers and the robot's will all announce themselves through :func:`status_message`,
so every status carries the same fields the same way and a role or state is checked once.

A worker serving a direct data plane (``vlabus worker --direct``) adds three ``detail`` keys:
``direct`` (the ZeroMQ endpoint robots connect to), ``queue_depth`` (requests queued when the
status was made; workers repeat their status while they serve) and, with CurveZMQ on that
socket, ``direct_curve`` (the socket's Z85 public key). :func:`direct_advert` reads them back.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from schemas.messages import Status

DIRECT, QUEUE_DEPTH, DIRECT_CURVE = "direct", "queue_depth", "direct_curve"
Role = Literal["robot", "worker", "recorder", "publisher", "hub"]
State = Literal["online", "offline"]
STATES: tuple[State, ...] = ("online", "offline")


def status_message(client_id: str, role: Role, state: str, *, session: int,
                   models: Mapping[str, int] | None = None,
                   detail: Mapping[str, str] | None = None,
                   time_ns: int | None = None, queue_depth: int | None = None) -> Status:
    """A status for ``client_id``; ``state`` must be ``online`` or ``offline`` (ValueError
    otherwise); ``time_ns`` defaults to the wall clock now; ``queue_depth`` goes into
    ``detail`` (a worker's load, for robots choosing a direct worker)."""
    if state not in STATES:
        raise ValueError(f"status state {state!r}, expected one of {STATES}")
    extra = {} if queue_depth is None else {QUEUE_DEPTH: str(max(0, queue_depth))}
    return Status(client_id=client_id, role=role, state=state, session=session,
                  time_ns=time.time_ns() if time_ns is None else time_ns,
                  models=dict(models or {}), detail={**(detail or {}), **extra})


@dataclass(frozen=True, slots=True)
class DirectAdvert:
    """What a worker's status says about its direct data plane."""

    worker: str
    endpoint: str
    queue_depth: int
    curve_key: str
    session: int
    time_ns: int


def direct_advert(status: Status) -> DirectAdvert | None:
    """The direct endpoint an online, healthy worker advertises, or None (offline, degraded,
    no direct plane, or an endpoint that is not ``tcp://HOST:PORT``)."""
    detail = status.detail
    endpoint = detail.get(DIRECT, "")
    if (status.role != "worker" or status.state != "online" or not endpoint.startswith("tcp://")
            or detail.get("health", "ok") != "ok" or len(endpoint) > 256):
        return None
    depth = detail.get(QUEUE_DEPTH, "0")
    return DirectAdvert(status.client_id, endpoint,
                        int(depth) if depth.isdigit() and len(depth) < 10 else 0,
                        detail.get(DIRECT_CURVE, ""), status.session, status.time_ns)
