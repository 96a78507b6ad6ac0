"""Shared fixtures. Helpers live in ``tests/support`` (imported, never defined twice); the
broker and hub fixtures are plugins there.

Layout: ``contract/`` runs one behaviour suite on every transport, ``unit/`` needs no network,
``integration/`` starts real Mosquitto, real ZeroMQ hubs or real processes. Every test under
``integration/``, and every test that uses a real broker or hub fixture, is marked
``integration`` here (``pytest -m 'not integration'`` runs the rest in seconds).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.keys import KeyDir, make_keydir

pytest_plugins: list[str] = ["tests.support.hub", "tests.support.mosquitto",
                              "tests.support.install", "tests.support.netbed"]

_INTEGRATION = Path(__file__).parent / "integration"
_REAL_BUS_FIXTURES = {"mosquitto", "mosquitto_persistent", "mosquitto_fleet", "zmq_hub",
                      "zmq_curve_hub"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.path.is_relative_to(_INTEGRATION) or fixtures & _REAL_BUS_FIXTURES:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> KeyDir:
    return make_keydir(tmp_path_factory.mktemp("keys"))
