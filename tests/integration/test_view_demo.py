"""``vlabus view``: a client speaking the Foxglove WebSocket protocol subscribes to a camera
channel of a running ``vlabus demo --foxglove PORT`` and receives the image."""

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
import simplejpeg

pytest.importorskip("foxglove")
mcap_protobuf = pytest.importorskip("mcap_protobuf.decoder")

from mcap.records import Schema  # noqa: E402

from vlabus.cli.procs import free_port  # noqa: E402

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


def subscribe(ws: Any, channel: dict[str, Any]) -> None:
    ws.send(json.dumps({"op": "subscribe", "subscriptions": [
        {"id": 42, "channelId": channel["id"]}]}))


def first_image(ws: Any, timeout: float, seen: list[str]) -> tuple[dict[str, Any], bytes, int]:
    """Subscribe to the camera channel once advertised; return (channel, payload, log time).
    ``seen`` collects what arrived, for the failure message."""
    channel = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(message, str):
            doc = json.loads(message)
            seen.append(f"{doc['op']} {[c.get('topic') for c in doc.get('channels', [])]}"
                        f" {doc.get('message', '')}")
            if doc["op"] == "advertise" and channel is None:
                for advertised in doc["channels"]:
                    if advertised["topic"] == CAMERA_TOPIC:
                        channel = advertised
                        subscribe(ws, channel)
            elif (doc["op"] == "status" and channel is not None
                  and "Unknown channel ID" in doc.get("message", "")):
                # foxglove-sdk 0.30 may advertise a new channel to a client a moment before
                # its server accepts subscriptions to it; a client subscribes again
                time.sleep(0.1)
                subscribe(ws, channel)
            continue
        opcode, subscription, log_ns = message[0], *struct.unpack_from("<IQ", message, 1)
        seen.append(f"binary op {opcode} sub {subscription}")
        if opcode == 1 and subscription == 42:
            assert channel is not None
            return channel, bytes(message[13:]), log_ns
    raise AssertionError(f"no image on {CAMERA_TOPIC} within {timeout} s")


@pytest.mark.slow
def test_foxglove_client_receives_a_camera_image_from_a_running_demo(tmp_path: Path) -> None:
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "vlabus", "demo", "--robots", "1", "--workers", "1",
         "--seconds", "20", "--fps", "10", "--foxglove", str(port), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=tmp_path)
    seen: list[str] = []
    try:
        with connect(port, 90, demo) as ws:
            assert ws.subprotocol == "foxglove.sdk.v1"
            channel, payload, log_ns = first_image(ws, 60, seen)
    except Exception as exc:
        demo.wait(timeout=120)
        out = demo.stdout.read().decode() if demo.stdout else ""
        raise AssertionError(f"{exc!r} after {seen[-20:]}; demo: {out[-1500:]}") from None
    finally:
        demo.send_signal(signal.SIGINT)  # the demo stops its children on the way out
        demo.communicate(timeout=60)
    # the robots pick their camera codec (--codec auto): raw pixels or JPEG passed through
    assert channel["schemaName"] in ("foxglove.RawImage", "foxglove.CompressedImage")
    assert channel["encoding"] == "protobuf"
    decoder = mcap_protobuf.DecoderFactory().decoder_for("protobuf", Schema(
        id=1, name=channel["schemaName"], encoding="protobuf",
        data=base64.b64decode(channel["schema"])))
    assert decoder is not None
    image = decoder(payload)
    if channel["schemaName"] == "foxglove.RawImage":
        assert (image.width, image.height, image.encoding) == (224, 224, "rgb8")
        pixels = np.frombuffer(image.data, np.uint8).reshape(224, 224, 3)
    else:
        assert image.format == "jpeg"
        pixels = simplejpeg.decode_jpeg(bytes(image.data))
    assert pixels.shape == (224, 224, 3)
    assert pixels.std() > 0  # a rendered scene, not an empty buffer
    assert image.frame_id == "front"
    assert abs(log_ns - time.time_ns()) < 600e9
