"""A site broker bridged to the cloud broker, end to end across two network namespaces.

site ns: a Mosquitto rendered by ``render_site`` for robot-a and robot-b, and the robots
(``vlabus edge --sim`` processes); cloud ns: the fleet Mosquitto and a ``vlabus worker``. The
bridge is the only path between them (MQTT 5 + mutual TLS over the veth link).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from schemas.errors import PublishRejected, SubscribeRejected
from schemas.messages import Priority, Status
from security.keys import Keyring, load_signer
from tests.support.keys import KeyDir
from tests.support.netbed import CLOUD_IP, NetBed, open_netbed, unavailable
from vlabus.broker.local import LocalMosquitto
from vlabus.broker.render import Limits, render
from vlabus.broker.site import render_site
from vlabus.bus.transport import TlsFiles, TransportOptions, open_transport
from vlabus.wire import Decoder, Encoder

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PORT = 8883  # each namespace is fresh: the port is free there
SITE_ROBOTS = ["robot-a", "robot-b"]


@dataclass
class SiteFleet:
    bed: NetBed
    keys: Path
    cloud: LocalMosquitto
    site: LocalMosquitto
    cloud_dir: Path
    site_dir: Path

    def edge(self, robot: str, seconds: float, *extra: str) -> dict[str, Any]:
        """Run ``vlabus edge --sim`` for ``robot`` at the site; its --json summary."""
        argv = [sys.executable, "-m", "vlabus", "edge", "--sim", "--robot-id", robot,
                "--bus", f"mqtts://127.0.0.1:{PORT}", "--broker-config", str(self.site_dir),
                "--keys", str(self.keys), "--fps", "15", "--deadline-ms", "100",
                "--seconds", str(seconds), "--json", *extra]
        with self.bed.inside("site"):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=90,
                                  check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return summary


def _worker(bed: NetBed, cloud: LocalMosquitto, cloud_dir: Path,
            keys: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "vlabus", "worker", "--bus", cloud.url, "--broker-config",
            str(cloud_dir), "--keys", str(keys), "--id", "worker-1", "--threads", "1"]
    log = cloud_dir / "worker.log"
    with bed.inside("cloud"), log.open("wb") as sink:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=sink,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if b'"event": "ready"' in log.read_bytes():  # its stderr line once it is serving
            return proc
        time.sleep(0.1)  # waiting for the process's own signal, not for time to pass
    proc.kill()
    proc.wait()
    raise AssertionError(f"worker did not start:\n{log.read_text(errors='replace')[-2000:]}")


@pytest.fixture(scope="module")
def fleet(keydir: KeyDir, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteFleet]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("site-bridge")
    cloud_dir, site_dir = root / "cloud", root / "site"
    render(keydir.path, cloud_dir, tls=True, bind=CLOUD_IP, port=PORT,
           limits=Limits(persistence=False))
    render_site(keydir.path, site_dir, site="berlin", uplink=f"mqtts://{CLOUD_IP}:{PORT}",
                cloud=cloud_dir, robots=SITE_ROBOTS, port=PORT)
    bed = open_netbed()
    cloud, site = LocalMosquitto(cloud_dir, PORT), LocalMosquitto(site_dir, PORT)
    worker = None
    try:
        with bed.inside("cloud"):
            cloud.start()
        with bed.inside("site"):
            site.start()
        worker = _worker(bed, cloud, cloud_dir, keydir.path)
        yield SiteFleet(bed, keydir.path, cloud, site, cloud_dir, site_dir)
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        site.stop()
        cloud.stop()
        bed.close()


def _run(bed: NetBed, host: str, coro: Any) -> Any:
    return bed.run(host, lambda: asyncio.run(coro()))


def test_frames_go_up_and_actions_come_down_through_the_bridge(fleet: SiteFleet) -> None:
    summary = fleet.edge("robot-a", 4.0)
    assert summary["actions_by_source"].get("cloud", 0) > 0, summary
    assert summary["steps_without_action"] == 0
    assert summary["codec"]["mode"] == "auto"
    assert summary["codec"]["uplink_mbit_s"] is not None  # it measured the path


class CloudTap:
    """A raw MQTT 5 subscriber on the cloud broker (as the recorder), keeping properties."""

    def __init__(self, fleet: SiteFleet, pattern: str) -> None:
        self.got: list[tuple[str, bytes, int | None]] = []
        self.event = threading.Event()
        self.subscribed = threading.Event()
        tls = fleet.cloud_dir / "tls"
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="recorder",
                             protocol=paho.MQTTv5)
        client.tls_set(ca_certs=str(tls / "ca.crt"), certfile=str(tls / "clients/recorder.crt"),
                       keyfile=str(tls / "clients/recorder.key"))
        client.on_message = self._message
        client.on_subscribe = lambda *args: self.subscribed.set()
        client.on_connect = lambda c, *args: c.subscribe(pattern, qos=1)
        self.client = client
        with fleet.bed.inside("cloud"):
            client.connect(CLOUD_IP, PORT)
            client.loop_start()
        assert self.subscribed.wait(20), "tap did not subscribe"

    def _message(self, client: Any, userdata: Any, msg: Any) -> None:
        expiry = getattr(msg.properties, "MessageExpiryInterval", None)
        self.got.append((msg.topic, bytes(msg.payload), expiry))
        self.event.set()

    def wait_for(self, topic: str, payload: bytes,
                 timeout: float = 30.0) -> tuple[str, bytes, int | None]:
        """The first message on ``topic`` with exactly ``payload`` (retained ones differ)."""
        while True:
            for item in self.got:
                if item[:2] == (topic, payload):
                    return item
            self.event.clear()
            assert self.event.wait(timeout), f"{topic} never reached the cloud"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_refused_topics_stay_on_their_side_and_expiry_and_priority_cross(
        fleet: SiteFleet) -> None:
    tap = CloudTap(fleet, "vla/v1/#")
    signer = load_signer(fleet.keys, "robot", "robot-a")
    site_tls = fleet.site_dir / "tls"
    options = TransportOptions(client_id="robot-a", tls=TlsFiles(
        site_tls / "ca.crt", site_tls / "clients/robot-a.crt", site_tls / "clients/robot-a.key"))
    status = Status(client_id="robot-a", role="robot", state="online", session=7, time_ns=1)
    payload = Encoder(signer).encode(status, priority=Priority.HIGH, corr="marker")

    async def at_site() -> None:
        bus = await open_transport(f"mqtts://127.0.0.1:{PORT}", options)
        try:
            # robot-a may not speak for robot-c, nor for a robot of another site
            with pytest.raises(PublishRejected):
                await bus.publish("vla/v1/robot-c/frame", payload, qos=1)
            await bus.publish("vla/v1/robot-a/status", payload, qos=1, expiry_s=30)
        finally:
            await bus.close()

    try:
        _run(fleet.bed, "site", at_site)
        _, body, expiry = tap.wait_for("vla/v1/robot-a/status", payload)
    finally:
        tap.close()
    assert not any(t == "vla/v1/robot-c/frame" for t, _, _ in tap.got)
    # the exact signed bytes arrived: the header's deadline and priority are unchanged
    got = Decoder(Keyring.load(fleet.keys)).decode(body)
    assert got.header.priority == Priority.HIGH
    assert expiry is not None
    assert 0 < expiry <= 30


def test_the_cloud_keeps_a_site_to_its_own_robots(fleet: SiteFleet) -> None:
    bridge = fleet.site_dir / "bridge"
    # a separate client id: the real bridge keeps its session
    options = TransportOptions(client_id="site-berlin", tls=TlsFiles(
        bridge / "ca.crt", bridge / "site-berlin.crt", bridge / "site-berlin.key"))
    frame = Encoder(load_signer(fleet.keys, "robot", "robot-c")).encode(
        Status(client_id="robot-c", role="robot", state="online", session=1, time_ns=1))

    async def as_site() -> None:
        bus = await open_transport(f"mqtts://{CLOUD_IP}:{PORT}", options)
        try:
            with pytest.raises(PublishRejected):
                await bus.publish("vla/v1/robot-c/frame", frame, qos=1)
            with pytest.raises(SubscribeRejected):
                await bus.subscribe("vla/v1/robot-c/action", qos=1)
            await bus.subscribe("vla/v1/robot-a/action", qos=1)  # its own robot: allowed
        finally:
            await bus.close()

    _run(fleet.bed, "cloud", as_site)


def test_with_the_bridge_cut_every_step_still_gets_its_action(fleet: SiteFleet) -> None:
    fleet.bed.cut()
    try:
        summary = fleet.edge("robot-b", 2.0)
    finally:
        fleet.bed.restore()
    assert summary["steps"] > 0
    assert summary["steps_without_action"] == 0
    assert summary["actions_by_source"].get("cloud", 0) == 0
    assert summary["actions_by_source"]["fallback"] == summary["steps"]
    # decided by the deadline: the local policy was started early enough (hedge)
    assert summary["lateness_ms"]["p50"] == 0
    # and when the link is back, the bridge carries the robot's frames again
    again = fleet.edge("robot-b", 8.0)
    assert again["actions_by_source"].get("cloud", 0) > 0, again
