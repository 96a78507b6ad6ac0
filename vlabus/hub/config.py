"""What a hub is started with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlabus.hub.access import Access


@dataclass(frozen=True)
class HubConfig:
    """``bind`` is a ZeroMQ endpoint; port 0 picks a free port."""

    bind: str = "tcp://127.0.0.1:0"
    curve_dir: Path | None = None
    hwm: int = 10_000
    max_msg_size: int = 32 << 20
    heartbeat_ms: int = 1000
    #: per-identity topic rules; needs ``curve_dir`` (the identities are CURVE's)
    access: Access | None = None
