"""``vlabus view`` on an access-controlled hub (CURVE + the keyring's roles): with a recorder
identity it reads and verifies the fleet's traffic; with a robot's it is refused, and says why."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("foxglove")

from schemas.topics import frame_topic
from security.curve import add_curve_client, init_curve
from security.keys import Role, add_key, load_signer
from tests.support.aio import run
from tests.support.frames import make_frame
from tests.support.hub import CurveHub
from vlabus.broker.render import TEMPLATES
from vlabus.bus.zmq import open_zmq
from vlabus.cli.procs import Child
from vlabus.hub.access import Access
from vlabus.hub.config import HubConfig
from vlabus.hub.server import Hub
from vlabus.wire import Encoder


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[CurveHub, Path]]:
    keyring, curve = tmp_path / "keys", tmp_path / "curve"
    names: dict[str, Role] = {"robot-a": "robot", "worker-1": "worker", "rec": "recorder"}
    init_curve(curve)
    for name, role in names.items():
        add_key(keyring, role, name)
        add_curve_client(curve, name)
    rules = Access.from_keyring(keyring, TEMPLATES / "acl.json")
    hub = Hub(HubConfig(curve_dir=curve, heartbeat_ms=200, access=rules)).start()
    try:
        yield CurveHub(hub, curve), keyring
    finally:
        hub.stop()


def start_view(tmp_path: Path, hub: CurveHub, keyring: Path, identity: str) -> Child:
    return Child(f"view-{identity}", [
        "view", "--bus", hub.url, "--curve", str(hub.keys), "--identity", identity,
        "--keys", str(keyring), "--port", "0", "--seconds", "8", "--json"], tmp_path).start()


def wait_listening(child: Child, path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists() and '"listening"' in path.read_text():
            return
        assert child.running, child.stderr_tail()
        time.sleep(0.05)  # polling the child's output file
    raise AssertionError("the view did not start listening")


async def publish_frames(hub: CurveHub, keyring: Path, count: int) -> None:
    robot = await open_zmq(hub.url, hub.options("robot-a"))
    encoder = Encoder(load_signer(keyring, "robot", "robot-a"))
    try:
        for step in range(count):
            await robot.publish(frame_topic("robot-a"), encoder.encode(make_frame("robot-a", step)))
    finally:
        await robot.close()


def test_a_recorder_identity_views_an_access_controlled_fleet(
        fleet: tuple[CurveHub, Path], tmp_path: Path) -> None:
    hub, keyring = fleet
    view = start_view(tmp_path, hub, keyring, "rec")
    wait_listening(view, tmp_path / "view-rec.0.out")
    run(publish_frames(hub, keyring, 5))
    assert view.wait(timeout=60) == 0
    summary = view.stdout_json()
    assert summary is not None
    assert summary["error"] is None
    assert summary["messages"] >= 1
    assert summary["robots"] == ["robot-a"]
    assert summary["rejected"] == {}


def test_a_robot_identity_may_not_view(fleet: tuple[CurveHub, Path], tmp_path: Path) -> None:
    hub, keyring = fleet
    view = start_view(tmp_path, hub, keyring, "robot-a")
    assert view.wait(timeout=60) == 2
    summary = view.stdout_json()
    assert summary is not None
    assert "refused" in summary["error"]
    assert "needs the recorder role" in summary["error"]
