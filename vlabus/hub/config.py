"""What a hub is started with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlabus.bus.transport import MAX_PAYLOAD
from vlabus.hub.access import Access


@dataclass(frozen=True)
class HubConfig:
    """``bind`` is a ZeroMQ endpoint; port 0 picks a free port."""

    bind: str = "tcp://127.0.0.1:0"
    curve_dir: Path | None = None
    hwm: int = 10_000
    #: libzmq's per-frame cap: a peer sending more is disconnected (so it is above
    #: ``max_payload``: a message between the two is received, refused and counted)
    max_msg_size: int = 32 << 20
    #: the deployment's message-size limit: a larger payload is refused with NACK and counted
    #: in ``too_large`` (clients accept at most this; see ``vlabus.bus.transport``)
    max_payload: int = MAX_PAYLOAD
    heartbeat_ms: int = 1000
    #: per-identity topic rules; needs ``curve_dir`` (the identities are CURVE's)
    access: Access | None = None
