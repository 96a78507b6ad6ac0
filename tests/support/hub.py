"""pytest plugin: a real vlabus ZeroMQ hub on a free port (plain and CURVE).

``zmq_hub`` yields a running :class:`vlabus.hub.server.Hub` (``.url`` is ``zmq://127.0.0.1:PORT``),
stopped after the test. ``zmq_curve_hub`` yields a :class:`CurveHub`: the hub plus its key
directory, where ``options(name)`` builds :class:`TransportOptions` for an admitted client.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from security.curve import add_curve_client, init_curve, load_client_keys
from vlabus.bus.transport import CurveKeys, TransportOptions
from vlabus.hub.config import HubConfig
from vlabus.hub.server import Hub


@dataclass
class CurveHub:
    hub: Hub
    keys: Path

    @property
    def url(self) -> str:
        return self.hub.url

    def options(self, name: str, **extra: Any) -> TransportOptions:
        """Options for client ``name``, creating and admitting its key pair if needed."""
        if not (self.keys / "clients" / f"{name}.key_secret").exists():
            add_curve_client(self.keys, name)
        server_public, public, secret = load_client_keys(self.keys, name)
        return TransportOptions(client_id=name, curve=CurveKeys(server_public, public, secret),
                                **extra)


@pytest.fixture
def zmq_hub() -> Iterator[Hub]:
    hub = Hub(HubConfig(bind="tcp://127.0.0.1:0", heartbeat_ms=200)).start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def zmq_curve_hub(tmp_path: Path) -> Iterator[CurveHub]:
    keys = tmp_path / "curve"
    init_curve(keys)
    add_curve_client(keys, "robot-a")
    hub = Hub(HubConfig(bind="tcp://127.0.0.1:0", curve_dir=keys, heartbeat_ms=200)).start()
    try:
        yield CurveHub(hub, keys)
    finally:
        hub.stop()
