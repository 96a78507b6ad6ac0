"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from vlabus.broker.local import LocalMosquitto
from vlabus.hub.server import Hub


@pytest.fixture(params=["zmq", "mqtt"])
def bus(request: pytest.FixtureRequest) -> tuple[str, LocalMosquitto | None]:
    """Each test twice: on a real hub (``(url, None)``) and on a real Mosquitto
    (``(url, broker)``, whose ``options`` carry the credentials)."""
    if request.param == "zmq":
        hub: Hub = request.getfixturevalue("zmq_hub")
        return hub.url, None
    broker: LocalMosquitto = request.getfixturevalue("mosquitto")
    return broker.url, broker
