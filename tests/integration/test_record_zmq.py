"""Recording and replaying over a real ZeroMQ hub, including ``kill -9`` of `vlabus record`."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mcap.reader import make_reader

from schemas.topics import frame_topic
from tests.support import ROOT
from tests.support.aio import eventually
from tests.support.frames import make_frame
from tests.support.keys import KeyDir
from tests.support.logs import write_log
from vlabus.bus.transport import Transport, TransportOptions, open_transport
from vlabus.hub.server import Hub
from vlabus.log.reader import recover
from vlabus.log.record import Recorder, record_from
from vlabus.log.replay import Replayer
from vlabus.wire import Decoder, Encoder

pytestmark = pytest.mark.integration



async def connect(url: str, name: str) -> Transport:
    return await open_transport(url, TransportOptions(client_id=name))


def test_live_zmq_traffic_reads_back_and_verifies(zmq_hub: Hub, keydir: KeyDir,
                                                  tmp_path: Path) -> None:
    path = tmp_path / "zmq.mcap"

    async def scenario() -> tuple[Recorder, list[bytes]]:
        rec_bus = await connect(zmq_hub.url, "recorder")
        pub = await connect(zmq_hub.url, "robot-a")
        await rec_bus.subscribe("vla/v1/#")
        recorder = Recorder(path, flush_interval_s=0.1)
        stop = asyncio.Event()
        task = asyncio.create_task(record_from(rec_bus, recorder, stop=stop))
        # The hub does not acknowledge SUB: publish a probe until the recorder has one.
        await eventually(lambda: recorder.messages > 0,
                         nudge=lambda: pub.publish("vla/v1/probe/status", b"probe"))
        probes = recorder.messages
        encoder = Encoder(keydir.signers["robot-a"])
        sent = [encoder.encode(make_frame("robot-a", step, size=64)) for step in range(50)]
        for wire in sent:
            await pub.publish(frame_topic("robot-a"), wire)
        await eventually(lambda: recorder.messages >= probes + len(sent))
        stop.set()
        await task
        recorder.close()
        await pub.close()
        await rec_bus.close()
        return recorder, sent

    recorder, sent = asyncio.run(scenario())
    with open(path, "rb") as stream:
        rows = [(c.topic, bytes(m.data)) for _s, c, m in make_reader(stream).iter_messages()]
    frames = [data for topic, data in rows if topic == frame_topic("robot-a")]
    assert frames == sent  # bytes intact, in order
    assert recorder.bytes == sum(len(d) for _t, d in rows)
    decoder = Decoder(keydir.ring)
    for data in frames:
        decoder.decode(data)


def test_kill_9_of_vlabus_record_then_recover(zmq_hub: Hub, keydir: KeyDir,
                                              tmp_path: Path) -> None:
    path = tmp_path / "killed.mcap"
    child = subprocess.Popen(
        [sys.executable, "-m", "vlabus", "record", "--bus", zmq_hub.url, "-o", str(path),
         "--topics", "vla/v1/#", "--flush-interval", "0.1", "--quiet"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def on_disk() -> int:
        if not path.exists() or path.stat().st_size == 0:
            return 0
        return recover(path, tmp_path / "probe.mcap").messages

    async def scenario() -> tuple[list[bytes], int]:
        pub = await connect(zmq_hub.url, "robot-a")
        await eventually(lambda: on_disk() > 0, timeout=20,
                         nudge=lambda: pub.publish("vla/v1/probe/status", b"probe"))
        probes = on_disk()
        encoder = Encoder(keydir.signers["robot-a"])
        flushed = [encoder.encode(make_frame("robot-a", step)) for step in range(40)]
        for wire in flushed:
            await pub.publish(frame_topic("robot-a"), wire)
        await eventually(lambda: on_disk() >= probes + len(flushed))  # on disk: safe from now
        tail = [encoder.encode(make_frame("robot-a", step)) for step in range(40, 60)]
        for wire in tail:
            await pub.publish(frame_topic("robot-a"), wire)
        os.kill(child.pid, signal.SIGKILL)
        await pub.close()
        return flushed + tail, len(flushed)

    sent, flushed = asyncio.run(scenario())
    child.wait(10)
    assert child.stderr is not None
    child.stderr.close()
    result = recover(path, tmp_path / "fixed.mcap")
    assert not result.complete
    with open(tmp_path / "fixed.mcap", "rb") as stream:
        frames = [bytes(m.data) for _s, c, m in make_reader(stream).iter_messages()
                  if c.topic == frame_topic("robot-a")]
    assert len(frames) >= flushed
    assert frames == sent[: len(frames)]  # every flushed message, in order, nothing torn
    decoder = Decoder(keydir.ring)
    for data in frames:
        decoder.decode(data)


def test_replay_over_zmq_keeps_order(zmq_hub: Hub, keydir: KeyDir, tmp_path: Path) -> None:
    path = tmp_path / "log.mcap"
    written = write_log(path, keydir.signers, steps=10, period_ns=5_000_000)

    async def scenario() -> list[bytes]:
        sink = await connect(zmq_hub.url, "sink")
        player = await connect(zmq_hub.url, "player")
        await sink.subscribe("vla/v1/#")
        await eventually(lambda: sink.counters()["received"] > 0,
                         nudge=lambda: player.publish("vla/v1/probe/status", b"probe"))
        while sink.receive_nowait() is not None:
            pass
        await Replayer(player, path, rate=5.0).run()
        got = []
        for _ in written:
            got.append(bytes((await asyncio.wait_for(sink.receive(), 5)).payload))
        await sink.close()
        await player.close()
        return got

    got = asyncio.run(scenario())
    assert got == [w for _t, w, _l in sorted(written, key=lambda row: row[2])]


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # a 200 KB "disk"


def test_full_disk_ends_vlabus_record_but_not_the_bus(zmq_hub: Hub, keydir: KeyDir,
                                                      tmp_path: Path) -> None:
    path = tmp_path / "full.mcap"
    child = subprocess.Popen(
        [sys.executable, "-m", "vlabus", "record", "--bus", zmq_hub.url, "-o", str(path),
         "--topics", "vla/v1/#", "--flush-interval", "0.05", "--quiet", "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_limit_file_size)  # noqa: PLW1509 - only sets an rlimit

    async def scenario() -> int:
        pub = await connect(zmq_hub.url, "robot-a")
        other = await connect(zmq_hub.url, "worker-1")
        await other.subscribe("vla/v1/#")
        encoder = Encoder(keydir.signers["robot-a"])
        sent = 0
        while child.poll() is None:  # publish until the recorder gives up on its full disk
            await pub.publish(frame_topic("robot-a"),
                              encoder.encode(make_frame("robot-a", sent, size=64)))
            sent += 1
            await asyncio.sleep(0.002)
            assert sent < 5000, "the recorder never hit its file size limit"
        # The bus still works for everyone else.
        await pub.publish(frame_topic("robot-a"), b"after")

        async def see_after() -> None:
            while bytes((await other.receive()).payload) != b"after":
                pass

        await asyncio.wait_for(see_after(), 10)
        await pub.close()
        await other.close()
        return sent

    asyncio.run(scenario())
    out, err = child.communicate(timeout=10)
    assert child.returncode == 1, err
    summary = json.loads(out)
    assert summary["write_errors"] == 1
    assert "File too large" in summary["error"] or "No space" in summary["error"]
    result = recover(path, tmp_path / "fixed.mcap")
    assert 0 < result.messages <= summary["messages"]
