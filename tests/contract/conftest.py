"""The ``bus`` fixture: every contract test runs on memory, a real ZeroMQ hub and a real
Mosquitto (the last two marked ``integration``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.buses import Bus
from vlabus.broker.local import LocalMosquitto
from vlabus.bus.memory import reset_memory
from vlabus.bus.transport import TransportOptions
from vlabus.cli.procs import free_port
from vlabus.hub.config import HubConfig
from vlabus.hub.server import Hub


def _zmq_bus(request: pytest.FixtureRequest) -> Iterator[Bus]:
    hubs: list[Hub] = [request.getfixturevalue("zmq_hub")]
    port = hubs[0].url.rsplit(":", 1)[1]

    def stop() -> None:
        hubs[-1].stop()

    def start() -> None:
        hubs.append(Hub(HubConfig(bind=f"tcp://127.0.0.1:{port}", heartbeat_ms=200)).start())

    def options(cid: str, **extra: object) -> TransportOptions:
        return TransportOptions(client_id=cid, **extra)  # type: ignore[arg-type]

    yield Bus("zmq", hubs[0].url, options, stop, start,
              unreachable=f"zmq://127.0.0.1:{free_port()}")
    for hub in hubs[1:]:
        hub.stop()


def _mqtt_bus(broker: LocalMosquitto) -> Bus:
    def options(cid: str, **extra: object) -> TransportOptions:
        # Every client authenticates as worker-1 (dev config: any topic); client ids differ.
        return broker.options("worker-1", cid, **extra)  # type: ignore[arg-type]

    def start() -> None:
        broker.start()

    return Bus("mqtt", broker.url, options, broker.stop, start,
               unreachable=f"mqtt://127.0.0.1:{free_port()}")


@pytest.fixture(params=["memory", pytest.param("zmq", marks=pytest.mark.integration),
                        pytest.param("mqtt", marks=pytest.mark.integration)])
def bus(request: pytest.FixtureRequest) -> Iterator[Bus]:
    if request.param == "memory":
        name = f"behaviour-{uuid.uuid4().hex[:8]}"

        def options(cid: str, **extra: object) -> TransportOptions:
            return TransportOptions(client_id=cid, **extra)  # type: ignore[arg-type]

        yield Bus("memory", f"memory://{name}", options)
        reset_memory(name)
    elif request.param == "zmq":
        yield from _zmq_bus(request)
    else:
        yield _mqtt_bus(request.getfixturevalue("mosquitto"))
