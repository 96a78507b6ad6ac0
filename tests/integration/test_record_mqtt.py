"""`vlabus record` and `vlabus replay` over a real Mosquitto, as subprocesses."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mcap.reader import make_reader

from schemas.topics import frame_topic
from tests.support import ROOT
from tests.support.aio import eventually
from tests.support.frames import make_frame
from tests.support.keys import KeyDir
from tests.support.logs import write_log
from vlabus.broker.local import LocalMosquitto
from vlabus.bus.transport import open_transport
from vlabus.envelope import SENDER_ROLES
from vlabus.log.reader import recover
from vlabus.wire import Decoder, Encoder

pytestmark = pytest.mark.integration


def vlabus(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "vlabus", *argv], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_record_cli_over_mqtt(mosquitto: LocalMosquitto, keydir: KeyDir, tmp_path: Path) -> None:
    path = tmp_path / "mqtt.mcap"
    child = vlabus("record", "--bus", mosquitto.url, "--broker-config",
                   str(mosquitto.config_dir), "--identity", "worker-1", "-o", str(path),
                   "--topics", "vla/v1/#", "--flush-interval", "0.1", "--keys", str(keydir.path),
                   "--json")

    def on_disk() -> int:
        if not path.exists() or path.stat().st_size == 0:
            return 0
        return recover(path, tmp_path / "probe.mcap").messages

    async def publish() -> list[bytes]:
        pub = await open_transport(mosquitto.url, mosquitto.options("robot-a", "robot-a"))
        await eventually(lambda: on_disk() > 0, timeout=20,
                         nudge=lambda: pub.publish("vla/v1/probe/status", b"probe"))
        probes = on_disk()
        encoder = Encoder(keydir.signers["robot-a"])
        sent = [encoder.encode(make_frame("robot-a", step, size=64)) for step in range(30)]
        for wire in sent:
            await pub.publish(frame_topic("robot-a"), wire, qos=1)
        await eventually(lambda: on_disk() >= probes + len(sent))
        await pub.close()
        return sent

    sent = asyncio.run(publish())
    child.send_signal(2)  # Ctrl-C: a clean stop writes the summary section
    out, err = child.communicate(timeout=20)
    assert child.returncode == 0, err
    summary = json.loads(out)
    with open(path, "rb") as stream:
        rows = [(c.topic, bytes(m.data)) for _s, c, m in make_reader(stream).iter_messages()]
    frames = [data for topic, data in rows if topic == frame_topic("robot-a")]
    assert frames == sent
    assert summary["messages"] == len(rows)
    assert summary["bytes"] == sum(len(d) for _t, d in rows)
    assert summary["verified"] == len(sent)
    assert summary["rejected"] == {"malformed": summary["not_envelope"]}
    assert summary["write_errors"] == 0
    for data in frames:
        Decoder(keydir.ring).decode(data)


def test_restamped_replay_cli_over_mqtt(mosquitto: LocalMosquitto, keydir: KeyDir,
                                        tmp_path: Path) -> None:
    path = tmp_path / "log.mcap"
    written = write_log(path, keydir.signers, steps=5, period_ns=20_000_000,
                        start_ns=time.time_ns() - 60_000_000_000)
    frames = [w for t, w, _l in sorted(written, key=lambda r: r[2]) if t.endswith("/frame")]
    roles = dict(SENDER_ROLES)
    roles["frame"] = roles["frame"] | {"replay"}
    decoder = Decoder(keydir.ring, sender_roles=roles)

    async def scenario() -> tuple[list[bytes], dict[str, object]]:
        sink = await open_transport(mosquitto.url, mosquitto.options("worker-1", "sink"))
        await sink.subscribe("vla/v1/+/frame")
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vlabus", "replay", str(path), "--bus", mosquitto.url,
            "--broker-config", str(mosquitto.config_dir), "--rate", "2", "--topics",
            "vla/v1/+/frame", "--restamp", str(keydir.path), "--keys", str(keydir.path),
            "--onto-live", "--json", "--quiet", cwd=ROOT, stdout=asyncio.subprocess.PIPE)
        got = [bytes((await asyncio.wait_for(sink.receive(), 20)).payload) for _ in frames]
        out, _ = await asyncio.wait_for(child.communicate(), 20)
        await sink.close()
        return got, json.loads(out)

    got, summary = asyncio.run(scenario())
    assert summary["published"] == len(frames)
    assert summary["restamped"] is True
    assert summary["offset_ms"]["count"] == len(frames)  # type: ignore[index]
    for original, replayed in zip(frames, got, strict=True):
        assert replayed != original
        new = decoder.decode(replayed)
        old = decoder.decode(original)
        assert new.header.sender == "replay"
        assert new.header.corr == old.header.corr
        assert new.message.step == old.message.step  # type: ignore[union-attr]
