"""MCAP metadata tells the truth: envelope channels have their own encoding and schema and
decode by the steps docs/mcap.md gives (checked here with msgpack, lz4, blake3 and
cryptography only), decision channels are MessagePack as labelled, older recordings still read.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import blake3
import jsonschema
import lz4.frame
import msgpack
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from mcap.reader import make_reader
from mcap.writer import Writer

from schemas.topics import action_topic, frame_topic
from tests.support.frames import make_frame
from tests.support.keys import KeyDir
from tests.support.logs import make_action
from vlabus.cli import main
from vlabus.log.formats import (
    DECISION,
    ENVELOPE_ENCODING,
    UNPARSED_ENCODING,
    format_of,
)
from vlabus.log.mcap_decoder import VlabusDecoderFactory
from vlabus.log.reader import iter_log, summarize
from vlabus.log.record import Recorder
from vlabus.log.view import cat
from vlabus.wire import Encoder

CONTEXT = b"vlabus/v1 ed25519-blake3\x00"  # pinned: docs/mcap.md step 3
DECISION_RECORD = {"step": 3, "source": "fallback", "cause": "timeout", "lateness_ns": 0,
                   "rtt_ns": None, "worker_id": None, "model_version": 0,
                   "action": [0.5, 1.5]}


def record_mixed(path: Path, keydir: KeyDir) -> list[bytes]:
    robot = Encoder(keydir.signers["robot-a"])
    worker = Encoder(keydir.signers["worker-1"], compress="always")
    wires = [robot.encode(make_frame("robot-a", 1)),
             worker.encode(make_action("robot-a", 1, "worker-1"))]
    with Recorder(path) as recorder:
        recorder.write(frame_topic("robot-a"), wires[0], 100)
        recorder.write(action_topic("robot-a"), wires[1], 200)
        recorder.write("vla/v1/robot-a/decision", msgpack.packb(DECISION_RECORD), 300,
                       channel=DECISION)
        recorder.write(frame_topic("robot-a"), b"junk on the bus", 400)
    return wires


def public_keys(keydir: KeyDir) -> dict[str, bytes]:
    return {signer.key_id: signer.key.public_key().public_bytes_raw()
            for signer in keydir.signers.values()}


def read_channels(path: Path) -> list[tuple[Any, Any, bytes]]:
    with open(path, "rb") as stream:
        return [(schema, channel, bytes(message.data))
                for schema, channel, message in make_reader(stream).iter_messages()]


def decode_by_the_documented_steps(data: bytes, keys: dict[str, bytes]) -> dict[str, Any]:
    """docs/mcap.md, "Decoding an envelope", with no vlabus code."""
    magic, version, header_len = struct.unpack_from(">2sBH", data)
    assert (magic, version) == (b"VB", 1)
    header = msgpack.unpackb(data[5:5 + header_len])
    signed, signature = data[:-64], data[-64:]
    public = Ed25519PublicKey.from_public_bytes(keys[header["key"]])
    public.verify(signature, CONTEXT + blake3.blake3(signed).digest())  # raises if forged
    body = data[5 + header_len:-64]
    assert not header["enc"] & 2
    if header["enc"] & 1:
        body = lz4.frame.decompress(body)
    assert len(body) == header["raw_len"]
    return {"header": header, "body": msgpack.unpackb(body)}


def test_channels_say_what_their_bytes_are(keydir: KeyDir, tmp_path: Path) -> None:
    path = tmp_path / "run.mcap"
    wires = record_mixed(path, keydir)
    rows = read_channels(path)
    labels = {(ch.topic, ch.message_encoding, schema.name if schema else None)
              for schema, ch, _ in rows}
    assert labels == {
        ("vla/v1/robot-a/frame", ENVELOPE_ENCODING, "vlabus.Envelope"),
        ("vla/v1/robot-a/action", ENVELOPE_ENCODING, "vlabus.Envelope"),
        ("vla/v1/robot-a/decision", "msgpack", "vlabus.Decision"),
        ("vla/v1/robot-a/frame", UNPARSED_ENCODING, None),
    }
    keys = public_keys(keydir)
    envelopes = [(s, d) for s, ch, d in rows if ch.message_encoding == ENVELOPE_ENCODING]
    assert [d for _, d in envelopes] == wires
    for schema, data in envelopes:
        assert schema.encoding == "jsonschema"
        doc = decode_by_the_documented_steps(data, keys)
        spec = json.loads(schema.data)
        body_schema = {**spec["x-vlabus-body-by-kind"][doc["header"]["kind"]],
                       "$defs": spec["$defs"]}
        header_schema = {**spec["properties"]["header"], "$defs": spec["$defs"]}
        jsonschema.validate(doc["header"], header_schema)
        # bytes fields are base64 text in JSON Schema terms: compare shape, not bytes
        assert set(doc["body"]) <= set(spec["$defs"][body_schema["$ref"].rsplit("/", 1)[1]]
                                       ["properties"])
    (schema, _ch, data), = [r for r in rows if r[1].message_encoding == "msgpack"]
    assert schema.encoding == "jsonschema"
    decision = msgpack.unpackb(data)  # plain MessagePack, as its channel says
    assert decision == DECISION_RECORD
    jsonschema.validate(decision, json.loads(schema.data))


def test_a_forged_envelope_fails_the_documented_check(keydir: KeyDir, tmp_path: Path) -> None:
    path = tmp_path / "run.mcap"
    wire = record_mixed(path, keydir)[0]
    keys = public_keys(keydir)
    forged = bytearray(wire)
    forged[-100] ^= 1
    with pytest.raises(InvalidSignature):
        decode_by_the_documented_steps(bytes(forged), keys)


def test_log_tools_read_each_format(keydir: KeyDir, tmp_path: Path) -> None:
    path = tmp_path / "run.mcap"
    record_mixed(path, keydir)
    docs = list(cat(path, keyring=keydir.ring))
    assert [d.get("kind") for d in docs] == ["frame", "action", "decision", None]
    assert docs[2]["message"]["source"] == "fallback"
    assert docs[3]["error"]["reason"] == "malformed"
    info = summarize(path)
    assert info["topics"]["vla/v1/robot-a/decision"]["kinds"] == {"decision": 1}
    assert info["not_envelope"] == 1


def write_legacy(path: Path, keydir: KeyDir) -> bytes:
    """A recording as vlabus wrote them before: every channel `msgpack` + envelope-v1."""
    wire = Encoder(keydir.signers["robot-a"]).encode(make_frame("robot-a", 2))
    with open(path, "wb") as stream:
        writer = Writer(stream)
        writer.start(profile="vlabus", library="vlabus")
        meta = {"vlabus.format": "envelope-v1"}
        frames = writer.register_channel(frame_topic("robot-a"), "msgpack", 0, meta)
        decisions = writer.register_channel("vla/v1/robot-a/decision", "msgpack", 0, meta)
        writer.add_message(frames, log_time=10, data=wire, publish_time=10)
        writer.add_message(decisions, log_time=20, data=msgpack.packb(DECISION_RECORD),
                           publish_time=20)
        writer.finish()
    return wire


def test_older_recordings_still_read(keydir: KeyDir, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "old.mcap"
    wire = write_legacy(path, keydir)
    records = list(iter_log(path))
    assert [r.format for r in records] == ["legacy", "legacy"]
    assert records[0].data == wire
    docs = list(cat(path, keyring=keydir.ring))
    assert docs[0]["kind"] == "frame"
    assert docs[0]["verified"] is True
    assert docs[1]["kind"] == "plain"
    assert docs[1]["message"]["step"] == 3
    assert main(["log", "info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["messages"] == 2


def test_format_of_reads_labels() -> None:
    assert format_of(ENVELOPE_ENCODING, {"vlabus.format": "envelope"}) == "envelope"
    assert format_of("msgpack", {"vlabus.format": "decision"}) == "decision"
    assert format_of("msgpack", {"vlabus.format": "envelope-v1"}) == "legacy"
    assert format_of("msgpack", {"vlabus.format": "envelope"}) == "foreign"  # mismatched label
    assert format_of("json", {}) == "foreign"


def test_upstream_decoded_message_api_with_the_vlabus_decoder_factory(keydir: KeyDir,
                                                                      tmp_path: Path) -> None:
    path = tmp_path / "run.mcap"
    record_mixed(path, keydir)
    with open(path, "rb") as stream:
        reader = make_reader(stream, decoder_factories=[VlabusDecoderFactory(keydir.ring)])
        decoded = [(ch.topic, value) for _s, ch, _m, value in reader.iter_decoded_messages(
            topics=["vla/v1/robot-a/action", "vla/v1/robot-a/decision"])]
    (action_topic_name, received), (_decision_topic, decision) = decoded
    assert action_topic_name == "vla/v1/robot-a/action"
    assert received.role == "worker"
    assert received.message.worker_id == "worker-1"
    assert decision == DECISION_RECORD
