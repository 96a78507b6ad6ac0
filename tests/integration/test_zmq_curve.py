"""CurveZMQ on the hub: admitted keys work, everything else is refused (DESIGN trap 6)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
import zmq

from schemas.errors import KeyringError, TransportError
from security.curve import add_curve_client, init_curve, load_client_keys, load_hub_keys
from tests.support.aio import run
from tests.support.hub import CurveHub
from vlabus.bus.transport import CurveKeys, TransportOptions
from vlabus.bus.zmq import open_zmq

pytestmark = pytest.mark.integration

FAST_FAIL = {"connect_timeout_s": "0.5"}


def test_admitted_client_talks(zmq_curve_hub: CurveHub) -> None:
    async def body() -> None:
        t = await open_zmq(zmq_curve_hub.url, zmq_curve_hub.options("robot-a"))
        await t.subscribe("vla/v1/robot-a/action")
        await t.publish("vla/v1/robot-a/action", b"go", qos=1)
        assert bytes((await asyncio.wait_for(t.receive(), 5)).payload) == b"go"
        await t.close()
    run(body())


def test_unlisted_key_refused(zmq_curve_hub: CurveHub) -> None:
    async def body() -> None:
        server_public, _, _ = load_client_keys(zmq_curve_hub.keys, "robot-a")
        public, secret = zmq.curve_keypair()
        opts = TransportOptions(client_id="intruder", extra=FAST_FAIL,
                                curve=CurveKeys(server_public, public, secret))
        with pytest.raises(TransportError, match="refused the CURVE handshake"):
            await open_zmq(zmq_curve_hub.url, opts)
    run(body())


def test_plain_client_refused(zmq_curve_hub: CurveHub) -> None:
    async def body() -> None:
        with pytest.raises(TransportError, match="no answer"):
            await open_zmq(zmq_curve_hub.url, TransportOptions(client_id="plain", extra=FAST_FAIL))
    run(body())


def test_stopped_authenticator_refuses_instead_of_admitting(zmq_curve_hub: CurveHub) -> None:
    async def body() -> None:
        zmq_curve_hub.hub.stop_authenticator()
        with pytest.raises(TransportError, match="no answer"):
            await open_zmq(zmq_curve_hub.url, zmq_curve_hub.options("robot-a", extra=FAST_FAIL))
    run(body())


def test_key_added_after_start_needs_a_restart(zmq_curve_hub: CurveHub) -> None:
    """The ZAP handler reads the allow list at start; a new key needs a hub restart."""
    async def body() -> None:
        with pytest.raises(TransportError):
            await open_zmq(zmq_curve_hub.url, zmq_curve_hub.options("robot-b", extra=FAST_FAIL))
    run(body())


def test_secret_files_private_and_checked(tmp_path: Path) -> None:
    keys = tmp_path / "curve"
    hub_public = init_curve(keys)
    add_curve_client(keys, "worker-1")
    for secret in (keys / "hub.key_secret", keys / "clients" / "worker-1.key_secret"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert (keys / "authorized" / "worker-1.key").exists()
    assert not (keys / "clients" / "worker-1.key").exists()
    assert load_hub_keys(keys)[0] == hub_public
    assert init_curve(keys) == hub_public  # idempotent: the hub keeps its identity
    os.chmod(keys / "hub.key_secret", 0o644)
    with pytest.raises(KeyringError, match="readable by others"):
        load_hub_keys(keys)
    with pytest.raises(KeyringError, match="no CURVE key pair"):
        load_client_keys(keys, "robot-z")
