"""Changing a running broker's identities without a restart, on a real Mosquitto.

Fleet (TLS, dynamic security): ``vlabus broker sync`` adds, removes and edits clients and roles
through the plugin's control topic. Dev (passwords): ``render`` again, then SIGHUP.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.errors import BusError, SubscribeRejected, TransportError
from security.keys import add_key
from tests.support.mosquitto import running_broker
from vlabus.broker.local import LocalMosquitto
from vlabus.broker.render import ADMIN, render, templates_dir
from vlabus.broker.site import render_site
from vlabus.bus.transport import Transport, open_transport
from vlabus.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[LocalMosquitto]:
    keys = tmp_path / "keys"
    add_key(keys, "robot", "robot-a")
    add_key(keys, "worker", "worker-1")
    render(keys, tmp_path / "broker", tls=True)
    yield from running_broker(tmp_path / "broker")


def sync(tmp_path: Path, broker: LocalMosquitto, capsys: pytest.CaptureFixture[str],
         *extra: str) -> dict[str, object]:
    code = main(["broker", "sync", "--config", str(tmp_path / "broker"), "--keys",
                 str(tmp_path / "keys"), "--bus", broker.url, "--json", *extra])
    summary: dict[str, object] = json.loads(capsys.readouterr().out)
    assert summary["exit_code"] == code
    return summary


async def connect(broker: LocalMosquitto, name: str) -> Transport:
    return await open_transport(broker.url, broker.options(name))


async def works(broker: LocalMosquitto, name: str) -> bool:
    """Whether ``name`` may subscribe to its actions (and so is a client with its role)."""
    transport = await connect(broker, name)
    try:
        await transport.subscribe(f"vla/v1/{name}/action")
        return True
    except SubscribeRejected:
        return False
    finally:
        await transport.close()


def test_sync_adds_removes_and_edits_identities_on_a_running_fleet_broker(
        fleet: LocalMosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    assert sync(tmp_path, fleet, capsys) == {"exit_code": 0, "added": [], "removed": [],
                                             "changed": []}  # render and broker agree
    add_key(keys, "robot", "robot-b")  # a robot joins: its key, then its certificate
    render(keys, tmp_path / "broker", tls=True)
    assert not asyncio.run(works(fleet, "robot-b"))  # a certificate alone grants nothing
    assert sync(tmp_path, fleet, capsys)["added"] == ["robot-b"]

    async def joined() -> None:
        assert await works(fleet, "robot-b")
        robot_b = await connect(fleet, "robot-b")
        with pytest.raises(SubscribeRejected):  # still only its own topics
            await robot_b.subscribe("vla/v1/robot-a/action")
        with pytest.raises(BusError):
            await robot_b.publish("vla/v1/robot-a/frame", b"forged", qos=1)
        await robot_b.close()

    asyncio.run(joined())

    async def leave() -> None:
        robot_a = await connect(fleet, "robot-a")
        await robot_a.subscribe("vla/v1/robot-a/action")
        for path in (keys / "robot").glob("robot-a.*"):
            path.unlink()
        assert await asyncio.to_thread(sync, tmp_path, fleet, capsys) == {
            "exit_code": 0, "added": [], "removed": ["robot-a"], "changed": []}
        for _ in range(100):  # the plugin disconnects it; it comes back with no rights
            if robot_a.counters()["disconnects"]:
                break
            await asyncio.sleep(0.05)
        assert robot_a.counters()["disconnects"] >= 1
        await robot_a.close()
        assert not await works(fleet, "robot-a")

    asyncio.run(leave())

    rules = json.loads((templates_dir() / "acl.json").read_text())
    rules["robot"]["publish"].append("vla/v1/{id}/telemetry")  # a rule added for robots
    (tmp_path / "acl.json").write_text(json.dumps(rules))
    acl = ["--acl", str(tmp_path / "acl.json")]

    async def telemetry() -> None:
        robot_b = await connect(fleet, "robot-b")
        try:
            await robot_b.publish("vla/v1/robot-b/telemetry", b"42", qos=1)
        finally:
            await robot_b.close()

    with pytest.raises(BusError):
        asyncio.run(telemetry())
    assert sync(tmp_path, fleet, capsys, *acl)["changed"] == ["robot-b"]
    asyncio.run(telemetry())
    assert sync(tmp_path, fleet, capsys, *acl) == {"exit_code": 0, "added": [], "removed": [],
                                                   "changed": []}


def test_only_the_admin_may_use_the_control_topic(fleet: LocalMosquitto) -> None:
    async def body() -> None:
        robot = await connect(fleet, "robot-a")
        with pytest.raises(SubscribeRejected):
            await robot.subscribe("$CONTROL/dynamic-security/v1/response")
        with pytest.raises(BusError):
            await robot.publish("$CONTROL/dynamic-security/v1", b'{"commands": []}', qos=1)
        await robot.close()
        admin = await connect(fleet, ADMIN)
        await admin.subscribe("$CONTROL/dynamic-security/v1/response")
        with pytest.raises(SubscribeRejected):  # the admin reads nothing of the fleet
            await admin.subscribe("vla/v1/+/frame")
        await admin.close()

    asyncio.run(body())


def test_sync_refuses_a_dev_configuration_and_an_unreachable_broker(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    add_key(keys, "robot", "robot-a")
    render(keys, tmp_path / "dev")
    assert main(["broker", "sync", "--config", str(tmp_path / "dev"), "--keys", str(keys),
                 "--json"]) == 2
    assert "SIGHUP" in json.loads(capsys.readouterr().out)["error"]
    render(keys, tmp_path / "broker", tls=True, port=1)  # nothing listens on port 1
    assert main(["broker", "sync", "--config", str(tmp_path / "broker"), "--keys", str(keys),
                 "--timeout", "2", "--json"]) == 2
    assert "cannot reach" in json.loads(capsys.readouterr().out)["error"]


def test_a_dev_broker_admits_a_new_identity_after_render_and_sighup(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    add_key(keys, "robot", "robot-a")
    render(keys, tmp_path / "dev")
    running = running_broker(tmp_path / "dev")
    broker = next(running)
    try:
        add_key(keys, "robot", "robot-b")
        render(keys, tmp_path / "dev")  # passwords of existing identities are kept

        async def attempt(name: str) -> None:
            transport = await connect(broker, name)
            await transport.publish(f"vla/v1/{name}/frame", b"x", qos=1)
            await transport.close()

        with pytest.raises(TransportError, match="refused the connection"):
            asyncio.run(attempt("robot-b"))
        broker.reload()
        for _ in range(50):
            try:
                asyncio.run(attempt("robot-b"))
                break
            except TransportError:
                asyncio.run(asyncio.sleep(0.05))
        else:
            pytest.fail("robot-b was not admitted after SIGHUP")
        asyncio.run(attempt("robot-a"))  # still admitted with its old password
    finally:
        running.close()


def test_sync_leaves_a_site_bridge_alone(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``site-NAME`` (added by ``render --site``) is not in the keyring: sync keeps it."""
    keys = tmp_path / "keys"
    add_key(keys, "robot", "robot-a")
    add_key(keys, "worker", "worker-1")
    render(keys, tmp_path / "broker", tls=True)
    render_site(keys, tmp_path / "site", site="berlin", uplink="mqtts://127.0.0.1:8883",
                cloud=tmp_path / "broker")
    for broker in running_broker(tmp_path / "broker"):
        assert sync(tmp_path, broker, capsys) == {"exit_code": 0, "added": [], "removed": [],
                                                  "changed": []}
