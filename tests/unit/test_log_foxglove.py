"""``vlabus log export --format foxglove``: upstream mcap reads the output, cameras use the
Foxglove image schemas and decode to the recorded images, numeric channels carry JSON Schemas,
rejected messages have their own channel, log times are the recording's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import msgpack
import numpy as np
import pytest
import simplejpeg
from mcap.reader import make_reader

pytest.importorskip("foxglove")
mcap_protobuf = pytest.importorskip("mcap_protobuf.decoder")

from schemas.arrays import pack_array  # noqa: E402
from schemas.images import encode_image  # noqa: E402
from schemas.messages import Action, Frame  # noqa: E402
from schemas.topics import action_topic, frame_topic  # noqa: E402
from tests.support.keys import KeyDir  # noqa: E402
from vlabus.cli import main  # noqa: E402
from vlabus.log.formats import DECISION  # noqa: E402
from vlabus.log.record import Recorder  # noqa: E402
from vlabus.wire import Encoder  # noqa: E402

T0 = 1_700_000_000_000_000_000


def pixels(step: int, shape: tuple[int, ...] = (24, 32, 3)) -> np.ndarray:
    return np.random.default_rng(step).integers(0, 255, size=shape, dtype=np.uint8)


def write_recording(path: Path, keydir: KeyDir) -> dict[str, Any]:
    robot = Encoder(keydir.signers["robot-a"])
    worker = Encoder(keydir.signers["worker-1"])
    sent: dict[str, Any] = {"jpeg": [], "raw": [], "chunks": [], "times": []}
    with Recorder(path) as recorder:
        for step in range(3):
            t = T0 + step * 50_000_000
            jpeg = encode_image(pixels(step), "jpeg", 90)
            raw = pixels(100 + step, (8, 10, 1))
            frame = Frame(robot_id="robot-a", step=step, command="stack the cups",
                          cameras={"wrist": jpeg, "top": encode_image(raw)},
                          state=pack_array(np.arange(14, dtype=np.float32) * step),
                          capture_ns=t - 1000)
            recorder.write(frame_topic("robot-a"),
                           robot.encode(frame, sent_ns=t, deadline_ns=t + 100_000_000,
                                        corr=f"c{step}"), t)
            chunk = np.full((50, 14), step, dtype=np.float32)
            action = Action(robot_id="robot-a", step=step, actions=pack_array(chunk),
                            model="default", model_version=1, worker_id="worker-1",
                            queue_wait_ns=1000, inference_ns=2_000_000, span_ns=3_000_000)
            recorder.write(action_topic("robot-a"),
                           worker.encode(action, corr=f"c{step}"), t + 7_000_000)
            recorder.write("vla/v1/robot-a/decision", msgpack.packb(
                {"step": step, "source": "cloud", "cause": None, "lateness_ns": 0,
                 "rtt_ns": 7_000_000, "worker_id": "worker-1", "model_version": 1,
                 "action": chunk[0].tolist()}), t + 8_000_000, channel=DECISION)
            sent["jpeg"].append(bytes(jpeg.data))
            sent["raw"].append(raw)
            sent["chunks"].append(chunk)
            sent["times"].append(t)
        forged = bytearray(robot.encode(frame, corr="forged"))
        forged[-1] ^= 0xFF
        recorder.write(frame_topic("robot-a"), bytes(forged), T0 + 999)
    return sent


@pytest.fixture
def exported(keydir: KeyDir, tmp_path: Path,
             capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], Path, dict[str, Any]]:
    source, target = tmp_path / "run.mcap", tmp_path / "fox.mcap"
    sent = write_recording(source, keydir)
    code = main(["log", "export", str(source), "--format", "foxglove", "-o", str(target),
                 "--keys", str(keydir.path), "--json"])
    assert code == 0
    return sent, target, json.loads(capsys.readouterr().out)


def decode_protobuf(path: Path, topic: str) -> list[tuple[Any, Any, Any]]:
    with open(path, "rb") as stream:
        reader = make_reader(stream, decoder_factories=[mcap_protobuf.DecoderFactory()])
        return [(s, m, d) for s, _c, m, d in reader.iter_decoded_messages(topics=[topic])]


def test_cameras_use_foxglove_image_schemas_and_decode_to_the_recorded_images(
        exported: tuple[dict[str, Any], Path, dict[str, Any]]) -> None:
    sent, target, summary = exported
    assert summary["images"] == {"compressed_image": 3, "raw_image": 3}
    jpegs = decode_protobuf(target, "vla/v1/robot-a/frame/camera/wrist")
    assert [s.name for s, _m, _d in jpegs] == ["foxglove.CompressedImage"] * 3
    assert [bytes(d.data) for _s, _m, d in jpegs] == sent["jpeg"]  # passed through
    assert {d.format for _s, _m, d in jpegs} == {"jpeg"}
    assert np.array_equal(simplejpeg.decode_jpeg(bytes(jpegs[0][2].data)).shape, (24, 32, 3))
    assert [m.log_time for _s, m, _d in jpegs] == sent["times"]
    raws = decode_protobuf(target, "vla/v1/robot-a/frame/camera/top")
    assert [s.name for s, _m, _d in raws] == ["foxglove.RawImage"] * 3
    for (_s, _m, image), recorded in zip(raws, sent["raw"], strict=True):
        assert (image.width, image.height, image.encoding, image.step) == (10, 8, "mono8", 10)
        got = np.frombuffer(image.data, np.uint8).reshape(8, 10, 1)
        assert np.array_equal(got, recorded)


def test_numeric_channels_carry_json_schemas_and_plot_values(
        exported: tuple[dict[str, Any], Path, dict[str, Any]]) -> None:
    sent, target, _summary = exported
    with open(target, "rb") as stream:
        rows = list(make_reader(stream).iter_messages(log_time_order=True))
    json_rows = [(s, c, m) for s, c, m in rows if c.message_encoding == "json"]
    assert {c.topic for _s, c, _m in json_rows} >= {
        "vla/v1/robot-a/frame/state", "vla/v1/robot-a/action", "vla/v1/robot-a/latency",
        "vla/v1/robot-a/decision", "vlabus/rejected"}
    for schema, channel, message in json_rows:
        assert schema.encoding == "jsonschema"
        assert channel.metadata["vlabus.verification"] == "ed25519"
        jsonschema.validate(json.loads(message.data), json.loads(schema.data))
    actions = [json.loads(m.data) for _s, c, m in json_rows if c.topic.endswith("/action")]
    assert [np.array(a["chunk"]).shape for a in actions] == [(50, 14)] * 3
    assert [a["first"] for a in actions] == [c[0].tolist() for c in sent["chunks"]]
    assert all(a["verified"] is True for a in actions)
    states = [json.loads(m.data) for _s, c, m in json_rows if c.topic.endswith("/state")]
    assert states[2]["state"] == (np.arange(14) * 2.0).tolist()
    latency = [json.loads(m.data) for _s, c, m in json_rows if c.topic.endswith("/latency")]
    assert [round(x["round_trip_ms"], 3) for x in latency] == [7.0] * 3
    assert all(x["within_deadline"] for x in latency)
    decisions = [json.loads(m.data) for _s, c, m in json_rows if c.topic.endswith("/decision")]
    assert [d["rtt_ms"] for d in decisions] == [7.0] * 3


def test_rejected_messages_have_their_own_channel(
        exported: tuple[dict[str, Any], Path, dict[str, Any]]) -> None:
    _sent, target, summary = exported
    assert summary["rejected"] == {"bad_signature": 1}
    with open(target, "rb") as stream:
        rows = list(make_reader(stream).iter_messages(topics=["vlabus/rejected"]))
    (_s, _c, message), = rows
    doc = json.loads(message.data)
    assert doc["topic"] == "vla/v1/robot-a/frame"
    assert doc["reason"] == "bad_signature"
    assert message.log_time == T0 + 999
    # the forged frame's images did not reach the camera channel
    assert summary["images"]["compressed_image"] == 3


def test_json_stays_the_default_format(keydir: KeyDir, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "run.mcap"
    write_recording(source, keydir)
    assert main(["log", "export", str(source), str(tmp_path / "out.mcap"), "--json"]) == 0
    # without --keys nothing is verified: the forged frame parses and is exported too
    assert json.loads(capsys.readouterr().out)["messages"] == 10
    with open(tmp_path / "out.mcap", "rb") as stream:
        encodings = {c.message_encoding for _s, c, _m in make_reader(stream).iter_messages()}
    assert encodings == {"json"}


def test_missing_source_fails_without_creating_output(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out.mcap"
    assert main(["log", "export", str(tmp_path / "nope.mcap"), "--format", "foxglove",
                 "-o", str(target)]) == 1
    assert "no such file" in capsys.readouterr().err
    assert not target.exists()
