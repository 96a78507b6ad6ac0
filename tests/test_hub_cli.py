"""``vlabus hub`` as a real process: serves clients, stops on SIGTERM with a JSON summary."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.errors import TransportError
from security.curve import load_client_keys
from security.keys import add_key
from vlabus.hub import tcp_endpoint
from vlabus.hub_process import HubProcess
from vlabus.transport import CurveKeys, TransportOptions
from vlabus.zmq import open_zmq

pytestmark = pytest.mark.integration


def test_hub_process_round_trip_and_summary() -> None:
    hub = HubProcess()
    url = hub.start()
    try:
        async def body() -> None:
            t = await open_zmq(url, TransportOptions(client_id="cli"))
            await t.subscribe("vla/v1/+/frame")
            await t.publish("vla/v1/r/frame", b"via process", qos=1)
            assert bytes((await asyncio.wait_for(t.recv(), 5)).payload) == b"via process"
            await t.close()
        asyncio.run(body())
    finally:
        summary = hub.stop()
    assert summary["url"] == url
    assert summary["delivered"] == 1
    assert summary["curve"] is False


def test_hub_process_with_curve(tmp_path: Path) -> None:
    keys = tmp_path / "curve"
    made = subprocess.run(
        [sys.executable, "-m", "vlabus", "hub", "--curve", str(keys), "--add-client", "robot-a",
         "--json"], capture_output=True, text=True, check=True)
    assert set(json.loads(made.stdout)["clients"]) == {"robot-a"}
    hub = HubProcess("tcp://127.0.0.1:0", "--curve", str(keys))
    url = hub.start()
    try:
        async def body() -> None:
            opts = TransportOptions(client_id="robot-a",
                                    curve=CurveKeys(*load_client_keys(keys, "robot-a")))
            t = await open_zmq(url, opts)
            await t.publish("vla/v1/robot-a/status", b"up", qos=1, retain=True)
            await t.close()
        asyncio.run(body())
    finally:
        summary = hub.stop()
    assert summary["curve"] is True
    assert summary["retained"] == 1


def test_port_in_use_is_a_clear_error() -> None:
    with HubProcess() as first, pytest.raises(TransportError, match="hub failed to start"):
        HubProcess(tcp_endpoint(first.url)).start()


def test_add_client_without_curve_is_an_error() -> None:
    done = subprocess.run([sys.executable, "-m", "vlabus", "hub", "--add-client", "x"],
                          check=False, capture_output=True, text=True)
    assert done.returncode == 2
    assert "--curve" in done.stderr


def test_hub_process_enforces_keyring_roles(tmp_path: Path) -> None:
    curve, keyring = tmp_path / "curve", tmp_path / "keys"
    add_key(keyring, "robot", "robot-a")
    subprocess.run([sys.executable, "-m", "vlabus", "hub", "--curve", str(curve),
                    "--add-client", "robot-a"], capture_output=True, check=True)
    hub = HubProcess("tcp://127.0.0.1:0", "--curve", str(curve), "--keys", str(keyring))
    url = hub.start()
    try:
        async def body() -> None:
            opts = TransportOptions(client_id="robot-a",
                                    curve=CurveKeys(*load_client_keys(curve, "robot-a")))
            t = await open_zmq(url, opts)
            await t.publish("vla/v1/robot-a/frame", b"mine", qos=1)
            with pytest.raises(TransportError, match="hub refused"):
                await t.publish("vla/v1/robot-b/frame", b"not mine", qos=1)
            await t.close()
        asyncio.run(body())
    finally:
        summary = hub.stop()
    assert summary["access"] is True
    assert summary["denied"] == 1


def test_keys_without_curve_is_an_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "vlabus", "hub", "--keys", str(tmp_path)],
                          check=False, capture_output=True, text=True)
    assert done.returncode == 2
    assert "--curve" in done.stderr
