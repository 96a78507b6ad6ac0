"""``vlabus hub`` as a real process: serves clients, stops on SIGTERM with a JSON summary."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas.errors import TransportError
from security.curve import load_client_keys
from security.keys import add_key
from vlabus.bus.transport import CurveKeys, TransportOptions
from vlabus.bus.zmq import open_zmq
from vlabus.hub.process import HubProcess
from vlabus.hub.protocol import tcp_endpoint

pytestmark = pytest.mark.integration


def test_hub_process_round_trip_and_summary() -> None:
    hub = HubProcess()
    url = hub.start()
    try:
        async def body() -> None:
            t = await open_zmq(url, TransportOptions(client_id="cli"))
            await t.subscribe("vla/v1/+/frame")
            await t.publish("vla/v1/r/frame", b"via process", qos=1)
            assert bytes((await asyncio.wait_for(t.receive(), 5)).payload) == b"via process"
            await t.close()
        asyncio.run(body())
    finally:
        summary = hub.stop()
    assert summary["url"] == url
    assert summary["delivered"] == 1
    assert summary["curve"] is False


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_hub_serves_its_counters_to_prometheus() -> None:
    hub = HubProcess("tcp://127.0.0.1:0", "--metrics-port", "0")
    url = hub.start()
    try:
        deadline = time.monotonic() + 10
        while not (lines := [x for x in hub.log_tail if x.startswith("metrics on http://")]):
            assert time.monotonic() < deadline, list(hub.log_tail)
            time.sleep(0.01)
        port = int(lines[0].rsplit(":", 1)[1].split("/")[0])
        assert scrape(port, "/healthz")[0] == 200
        assert scrape(port, "/readyz")[0] == 200

        async def body() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            sub = await open_zmq(url, TransportOptions(client_id="sub"))
            pub = await open_zmq(url, TransportOptions(client_id="pub"))
            await sub.subscribe("vla/v1/+/action")
            for step in range(3):
                await pub.publish("vla/v1/r/action", b"%d" % step, qos=1)
            await pub.publish("vla/v1/r/status", b"up", qos=1, retain=True)
            for _ in range(3):
                await asyncio.wait_for(sub.receive(), 5)
            _, text = await asyncio.to_thread(scrape, port)
            await sub.close()
            await pub.close()
            return samples(text)

        seen = asyncio.run(body())
    finally:
        summary = hub.stop()
    assert seen[("vlabus_hub_delivered_total", ())] == 3
    assert seen[("vlabus_hub_received_total", ())] >= 5  # 4 publishes, the SUB, HELLOs
    assert seen[("vlabus_hub_clients", ())] == 2
    assert seen[("vlabus_hub_retained_topics", ())] == 1
    for cause in ("hwm", "unroutable", "expired"):
        assert seen[("vlabus_hub_dropped_total", (("cause", cause),))] == 0
    assert seen[("vlabus_hub_denied_total", ())] == 0
    assert summary["metrics_port"] == port
    assert summary["delivered"] == 3


def test_a_metrics_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(TransportError, match=f"metrics on 127.0.0.1:{port}"):
            HubProcess("tcp://127.0.0.1:0", "--metrics-port", str(port)).start()


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


def test_sighup_reloads_keys_and_rules_and_a_bad_keyring_keeps_the_old_ones(
        tmp_path: Path) -> None:
    curve, keyring = tmp_path / "curve", tmp_path / "keys"
    add_key(keyring, "robot", "robot-a")
    # SIGHUP only: polling (--keys-poll, tests/integration/test_key_reload.py) would reload
    # on its own between the steps below
    hub = HubProcess("tcp://127.0.0.1:0", "--curve", str(curve), "--keys", str(keyring),
                     "--keys-poll", "0")
    url = hub.start()

    def opts(name: str) -> TransportOptions:
        return TransportOptions(client_id=name, curve=CurveKeys(*load_client_keys(curve, name)),
                                extra={"connect_timeout_s": "3"})

    def hup_and_wait(expect: str) -> None:
        assert hub.pid is not None
        os.kill(hub.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not any(expect in line for line in hub.log_tail):
            assert time.monotonic() < deadline, list(hub.log_tail)
            time.sleep(0.01)
        hub.log_tail.clear()

    try:
        add_key(keyring, "robot", "robot-c")  # a robot joins the fleet while the hub runs
        subprocess.run([sys.executable, "-m", "vlabus", "hub", "--curve", str(curve),
                        "--add-client", "robot-c"], capture_output=True, check=True)

        async def refused() -> None:
            with pytest.raises(TransportError, match="CURVE handshake"):
                await open_zmq(url, opts("robot-c"))

        asyncio.run(refused())
        hup_and_wait("hub reloaded: 1 clients admitted")

        async def admitted() -> None:
            t = await open_zmq(url, opts("robot-c"))
            await t.publish("vla/v1/robot-c/frame", b"mine", qos=1)
            await t.close()

        asyncio.run(admitted())
        (keyring / "robot" / "robot-a.pub.pem").write_text("not a key")
        hup_and_wait("reload failed, the previous keys and rules stay")
        asyncio.run(admitted())  # still served, under the rules in force
    finally:
        summary = hub.stop()
    assert summary["reloads"] == 1
    assert summary["denied"] == 0


def test_the_hub_follows_its_keyring_without_sighup(tmp_path: Path) -> None:
    curve, keyring = tmp_path / "curve", tmp_path / "keys"
    add_key(keyring, "robot", "robot-a")
    hub = HubProcess("tcp://127.0.0.1:0", "--curve", str(curve), "--keys", str(keyring),
                     "--keys-poll", "0.5")
    url = hub.start()
    try:
        add_key(keyring, "robot", "robot-c")
        subprocess.run([sys.executable, "-m", "vlabus", "hub", "--curve", str(curve),
                        "--add-client", "robot-c"], capture_output=True, check=True)
        deadline = time.monotonic() + 5  # the bound for a key added to a fleet
        while not any("hub reloaded: 1 clients admitted" in line for line in hub.log_tail):
            assert time.monotonic() < deadline, list(hub.log_tail)
            time.sleep(0.05)

        async def admitted() -> None:
            options = TransportOptions(client_id="robot-c", curve=CurveKeys(
                *load_client_keys(curve, "robot-c")), extra={"connect_timeout_s": "3"})
            t = await open_zmq(url, options)
            await t.publish("vla/v1/robot-c/frame", b"mine", qos=1)
            await t.close()

        asyncio.run(admitted())
    finally:
        summary = hub.stop()
    assert summary["reloads"] >= 1
