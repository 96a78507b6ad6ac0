"""``vlabus view``: a client speaking the Foxglove WebSocket protocol subscribes to a camera
channel of a running ``vlabus demo --foxglove PORT`` and receives the image; the live view's
bookkeeping (verification, fallbacks seen on the bus, stats) on its own."""

from __future__ import annotations

import base64
import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("foxglove")
mcap_protobuf = pytest.importorskip("mcap_protobuf.decoder")

from mcap.records import Schema  # noqa: E402

from schemas.arrays import pack_array  # noqa: E402
from schemas.messages import Action  # noqa: E402
from schemas.topics import action_topic, frame_topic  # noqa: E402
from tests.conftest import KeyDir  # noqa: E402
from tests.test_record_support import make_frame  # noqa: E402
from vlabus.cli.procs import free_port  # noqa: E402
from vlabus.log.foxglove_msgs import Out  # noqa: E402
from vlabus.log.live import LiveView  # noqa: E402
from vlabus.wire import Encoder  # noqa: E402

CAMERA_TOPIC = "vla/v1/robot-1/frame/camera/front"


def connect(port: int, timeout: float, demo: subprocess.Popen[bytes]) -> Any:
    from websockets.sync.client import connect as ws_connect

    deadline = time.monotonic() + timeout
    while True:
        try:
            return ws_connect(f"ws://127.0.0.1:{port}", subprotocols=["foxglove.sdk.v1"],
                              open_timeout=2)
        except OSError:
            if demo.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # polling for the view's port while the demo starts its fleet


def first_image(ws: Any, timeout: float) -> tuple[dict[str, Any], bytes, int]:
    """Subscribe to the camera channel once advertised; return (channel, payload, log time)."""
    channel = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(message, str):
            doc = json.loads(message)
            if doc["op"] == "advertise" and channel is None:
                for advertised in doc["channels"]:
                    if advertised["topic"] == CAMERA_TOPIC:
                        channel = advertised
                        ws.send(json.dumps({"op": "subscribe", "subscriptions": [
                            {"id": 42, "channelId": advertised["id"]}]}))
            continue
        opcode, subscription, log_ns = message[0], *struct.unpack_from("<IQ", message, 1)
        if opcode == 1 and subscription == 42:
            assert channel is not None
            return channel, bytes(message[13:]), log_ns
    raise AssertionError(f"no image on {CAMERA_TOPIC} within {timeout} s")


@pytest.mark.integration
@pytest.mark.slow
def test_foxglove_client_receives_a_camera_image_from_a_running_demo(tmp_path: Path) -> None:
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "vlabus", "demo", "--robots", "1", "--workers", "1",
         "--seconds", "20", "--fps", "10", "--foxglove", str(port), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        with connect(port, 90, demo) as ws:
            assert ws.subprotocol == "foxglove.sdk.v1"
            channel, payload, log_ns = first_image(ws, 60)
    except Exception:
        demo.wait(timeout=120)
        out = demo.stdout.read().decode() if demo.stdout else ""
        raise AssertionError(f"demo: {out[-3000:]}") from None
    finally:
        demo.send_signal(signal.SIGINT)  # the demo stops its children on the way out
        demo.communicate(timeout=60)
    assert channel["schemaName"] == "foxglove.RawImage"
    assert channel["encoding"] == "protobuf"
    decoder = mcap_protobuf.DecoderFactory().decoder_for("protobuf", Schema(
        id=1, name=channel["schemaName"], encoding="protobuf",
        data=base64.b64decode(channel["schema"])))
    assert decoder is not None
    image = decoder(payload)
    assert (image.width, image.height, image.encoding) == (224, 224, "rgb8")
    pixels = np.frombuffer(image.data, np.uint8)
    assert pixels.size == 224 * 224 * 3
    assert pixels.std() > 0  # a rendered scene, not an empty buffer
    assert abs(log_ns - time.time_ns()) < 600e9


class Captured:
    def __init__(self) -> None:
        self.outs: list[Out] = []
        self.logged = 0

    def log(self, out: Out, log_ns: int) -> None:
        self.outs.append(out)
        self.logged += 1

    def topic(self, name: str) -> list[dict[str, Any]]:
        return [o.message for o in self.outs if o.topic == name]


def test_live_view_verifies_and_tracks_fallbacks_seen_on_the_bus(keydir: KeyDir) -> None:
    now = [1_000_000_000_000]
    sink = Captured()
    view = LiveView(sink, keydir.ring, stats_interval_s=1.0, clock=lambda: now[0])
    robot = Encoder(keydir.signers["robot-a"], clock=lambda: now[0])
    worker = Encoder(keydir.signers["worker-1"], clock=lambda: now[0])
    budget = 100_000_000
    for step in range(3):
        wire = robot.encode(make_frame("robot-a", step), corr=f"c{step}",
                            deadline_ns=now[0] + budget)
        view.on_message(frame_topic("robot-a"), wire, now[0])
    reply = Action(robot_id="robot-a", step=0, actions=pack_array(np.zeros((4, 7), np.float32)),
                   model="m", model_version=1, worker_id="worker-1", queue_wait_ns=2_000_000)
    now[0] += 5_000_000
    view.on_message(action_topic("robot-a"), worker.encode(reply, corr="c0"), now[0])
    forged = bytearray(robot.encode(make_frame("robot-a", 9), corr="c9"))
    forged[-3] ^= 1
    view.on_message(frame_topic("robot-a"), bytes(forged), now[0])
    now[0] += budget  # steps 1 and 2 got no action within their budget
    view.tick()
    now[0] += 1_000_000_000
    view.tick()
    decisions = sink.topic("vla/v1/robot-a/decision")
    assert [(d["step"], d["source"], d["cause"]) for d in decisions] == [
        (0, "cloud", None), (1, "fallback", "no_reply"), (2, "fallback", "no_reply")]
    assert decisions[0]["rtt_ms"] == 5.0
    assert sink.topic("vlabus/rejected")[0]["reason"] == "bad_signature"
    assert view.rejections.by_reason == {"bad_signature": 1}
    (stats,) = sink.topic("vla/v1/robot-a/stats")[-1:]
    assert (stats["fallbacks"], stats["cloud_share"]) == (2, 1 / 3)
    (workers,) = sink.topic("vla/v1/workers/worker-1/stats")[-1:]
    assert workers["queue_wait_max_ms"] == 2.0
    assert workers["replies_total"] == 1
    cameras = [o for o in sink.outs if o.topic == "vla/v1/robot-a/frame/camera/front"]
    assert len(cameras) == 3  # the forged frame's image was not shown
