"""pytest plugin: a real Mosquitto from ``broker_config/`` on a free loopback port.

``mosquitto`` yields a running :class:`vlabus.broker.local.LocalMosquitto` with the dev
configuration
(password authentication) rendered for the session keyring; ``mosquitto_fleet`` the fleet
configuration (TLS client certificates, dynamic-security access control). Both have ``.url``,
``.options(identity, client_id)``, ``.stop()``, ``.start()`` and ``.restart()`` (same port).
Each test gets its own configuration directory, so persisted sessions never leak between tests.
Tests are skipped when no ``mosquitto`` executable is installed. ``running_broker(config)``
starts one from any rendered configuration directory and stops it afterwards.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.keys import KeyDir
from vlabus.broker.local import LocalMosquitto
from vlabus.broker.render import Limits, render


def running_broker(config: Path) -> Iterator[LocalMosquitto]:
    """A Mosquitto on ``config`` while the generator runs (skips when none is installed)."""
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    broker = LocalMosquitto(config)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto(keydir: KeyDir, tmp_path: Path) -> Iterator[LocalMosquitto]:
    render(keydir.path, tmp_path / "mqtt-dev", limits=Limits(persistence=False))
    yield from running_broker(tmp_path / "mqtt-dev")


@pytest.fixture
def mosquitto_persistent(keydir: KeyDir, tmp_path: Path) -> Iterator[LocalMosquitto]:
    render(keydir.path, tmp_path / "mqtt-dev-persistent")
    yield from running_broker(tmp_path / "mqtt-dev-persistent")


@pytest.fixture
def mosquitto_fleet(keydir: KeyDir, tmp_path: Path) -> Iterator[LocalMosquitto]:
    render(keydir.path, tmp_path / "mqtt-fleet", tls=True)
    yield from running_broker(tmp_path / "mqtt-fleet")
