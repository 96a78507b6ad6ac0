"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.buses import Bus
from vlabus.broker.local import LocalMosquitto
from vlabus.bus.transport import TransportOptions
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


@pytest.fixture(params=["zmq", "mqtt"])
def real_bus(request: pytest.FixtureRequest) -> Iterator[Bus]:
    """The same on both buses, as a :class:`~tests.support.buses.Bus` whose ``options`` make a
    client's transport options (a ``worker-1`` identity on Mosquitto)."""
    if request.param == "zmq":
        hub = request.getfixturevalue("zmq_hub")
        yield Bus("zmq", hub.url, lambda cid, **kw: TransportOptions(client_id=cid, **kw))
    else:
        broker = request.getfixturevalue("mosquitto")
        yield Bus("mqtt", broker.url, lambda cid, **kw: broker.options("worker-1", cid, **kw))
