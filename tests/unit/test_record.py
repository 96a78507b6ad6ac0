"""The recorder: live traffic to MCAP, read back by the upstream reader; full disk; kill -9."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mcap.reader import make_reader

from schemas.topics import frame_topic
from tests.support import ROOT
from tests.support.frames import make_frame
from tests.support.keys import KeyDir
from vlabus.bus.memory import reset_memory
from vlabus.bus.transport import TransportOptions, open_transport
from vlabus.cli import main
from vlabus.log.formats import UNPARSED_ENCODING
from vlabus.log.reader import recover
from vlabus.log.record import MESSAGE_ENCODING, Recorder, RecordError, record_from
from vlabus.wire import Decoder, Encoder


def read_back(path: Path) -> list[tuple[str, str, bytes, int, int]]:
    with open(path, "rb") as stream:
        reader = make_reader(stream)
        return [(ch.topic, ch.message_encoding, bytes(m.data), m.log_time, m.publish_time)
                for _s, ch, m in reader.iter_messages(log_time_order=False)]


async def record_live(url: str, path: Path, payloads: list[tuple[str, bytes]]) -> Recorder:
    """Record ``payloads`` published on ``url`` and stop once all were written."""
    recorder_bus = await open_transport(url, TransportOptions(client_id="recorder"))
    publisher = await open_transport(url, TransportOptions(client_id="publisher"))
    await recorder_bus.subscribe("vla/v1/#")
    done = asyncio.Event()
    recorder = Recorder(path, flush_interval_s=0.05)

    def check(_message: object) -> None:
        if recorder.messages >= len(payloads):
            done.set()

    task = asyncio.create_task(record_from(recorder_bus, recorder, stop=done, inspect=check))
    for topic, payload in payloads:
        await publisher.publish(topic, payload)
    await asyncio.wait_for(task, 10)
    recorder.close()
    await publisher.close()
    await recorder_bus.close()
    return recorder


def test_live_memory_traffic_reads_back_with_upstream_reader(keydir: KeyDir,
                                                              tmp_path: Path) -> None:
    reset_memory("rec-live")
    payloads = []
    for robot in ("robot-a", "robot-b"):
        encoder = Encoder(keydir.signers[robot])
        payloads += [(frame_topic(robot), encoder.encode(make_frame(robot, step)))
                     for step in range(20)]
    payloads.append(("vla/v1/robot-a/status", b"not an envelope at all"))
    path = tmp_path / "live.mcap"
    before = time.time_ns()
    recorder = asyncio.run(record_live("memory://rec-live", path, payloads))

    assert recorder.messages == len(payloads)
    assert recorder.bytes == sum(len(p) for _, p in payloads)
    assert recorder.not_envelope == 1
    rows = read_back(path)
    assert sorted((t, p) for t, _e, p, _l, _p in rows) == sorted(payloads)
    assert {(t, e) for t, e, *_ in rows if t.endswith("/status")} == {
        ("vla/v1/robot-a/status", UNPARSED_ENCODING)}  # labelled as what it is
    assert {e for t, e, *_ in rows if t.endswith("/frame")} == {MESSAGE_ENCODING}
    decoder = Decoder(keydir.ring)
    for topic, _enc, data, log_ns, publish_ns in rows:
        assert log_ns >= before
        if data.startswith(b"VB"):
            received = decoder.decode(data)  # every recorded signature still verifies
            assert publish_ns == received.header.sent_ns
            assert topic == frame_topic(received.message.robot_id)  # type: ignore[union-attr]
        else:
            assert publish_ns == log_ns


class FullDisk(io.RawIOBase):
    """A file that accepts ``limit`` bytes and then fails like a full disk."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        chunk = bytes(b)  # type: ignore[call-overload]
        if len(self.data) + len(chunk) > self.limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.data += chunk
        return len(chunk)

    def tell(self) -> int:
        return len(self.data)


def test_full_disk_stops_the_recorder_once_and_counts(keydir: KeyDir) -> None:
    stream = FullDisk(20_000)
    recorder = Recorder(stream, flush_interval_s=0.0)  # type: ignore[arg-type]
    encoder = Encoder(keydir.signers["robot-a"])
    wires = [encoder.encode(make_frame("robot-a", step)) for step in range(200)]

    def write_all() -> None:
        for wire in wires:
            recorder.write("vla/v1/robot-a/frame", wire, time.time_ns())

    with pytest.raises(RecordError, match="No space left"):
        write_all()
    written = recorder.messages
    assert recorder.failed
    assert recorder.write_errors == 1
    recorder.write("vla/v1/robot-a/frame", b"later", time.time_ns())  # refused quietly
    assert recorder.dropped == 1
    assert recorder.messages == written
    recorder.close()
    assert recorder.write_errors == 1


def test_unwritable_file_fails_at_start() -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with pytest.raises(RecordError, match="cannot start"):
        Recorder("/dev/full", overwrite=True)  # a device: it exists


def test_full_disk_leaves_the_bus_running(keydir: KeyDir) -> None:
    reset_memory("rec-full")

    async def scenario() -> tuple[int, bool]:
        bus = await open_transport("memory://rec-full", TransportOptions(client_id="rec"))
        other = await open_transport("memory://rec-full", TransportOptions(client_id="other"))
        pub = await open_transport("memory://rec-full", TransportOptions(client_id="pub"))
        await bus.subscribe("#")
        await other.subscribe("#")
        recorder = Recorder(FullDisk(5_000), flush_interval_s=0.0)  # type: ignore[arg-type]
        task = asyncio.create_task(record_from(bus, recorder))
        encoder = Encoder(keydir.signers["robot-a"])
        for step in range(30):
            await pub.publish("vla/v1/robot-a/frame", encoder.encode(make_frame("robot-a", step)))
        with pytest.raises(RecordError):
            await asyncio.wait_for(task, 5)
        got = 0
        while other.receive_nowait() is not None:
            got += 1
        connected = bus.connected
        recorder.close()
        for t in (bus, other, pub):
            await t.close()
        return got, connected

    got, connected = asyncio.run(scenario())
    assert got == 30
    assert connected


CHILD = """
import sys, time
from vlabus.log.record import Recorder
rec = Recorder(sys.argv[1], flush_interval_s=0.05)
last = 0
n = 0
while True:
    rec.write("vla/v1/robot-a/frame", n.to_bytes(8, "big") * 64, time.time_ns())
    n += 1
    if rec.flushes != last:
        last = rec.flushes
        print(n, flush=True)  # every message up to n is on disk now
    time.sleep(0.001)
"""


def test_kill_9_loses_at_most_what_came_after_the_last_flush(tmp_path: Path) -> None:
    path = tmp_path / "killed.mcap"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                             text=True, cwd=ROOT)
    assert child.stdout is not None
    flushed = 0
    for _ in range(5):
        line = child.stdout.readline()
        assert line, "recorder child died"
        flushed = int(line)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    child.stdout.close()
    with pytest.raises(Exception):  # noqa: B017, PT011 - the default reader cannot read it
        read_back(path)
    fixed = tmp_path / "fixed.mcap"
    result = recover(path, fixed)
    assert not result.complete
    assert result.messages >= flushed
    rows = read_back(fixed)
    assert len(rows) == result.messages
    counters = [int.from_bytes(row[2][:8], "big") for row in rows]
    assert counters == list(range(len(rows)))  # every message, in order, none torn


def test_tick_flushes_a_quiet_recording(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "quiet.mcap"
    recorder = Recorder(path, flush_interval_s=1.0, monotonic=lambda: now[0])
    recorder.write("vla/v1/robot-a/status", b"one", 1)
    recorder.tick()
    assert recover(path, tmp_path / "r1.mcap").messages == 0  # still in the open chunk
    now[0] = 1.0
    recorder.tick()
    assert recorder.flushes == 1
    assert recover(path, tmp_path / "r2.mcap").messages == 1  # on disk without a new write
    recorder.close()


def test_record_cli_reports_an_unwritable_output(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["record", "--bus", "memory://rec-cli", "-o", str(tmp_path / "no" / "x.mcap"),
                 "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 1
    assert summary["exit_code"] == 1
    assert "cannot open" in summary["error"]


def test_record_cli_duration_on_a_quiet_bus(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "quiet.mcap"
    code = main(["record", "--bus", "memory://rec-quiet", "-o", str(path), "--duration", "0.2",
                 "--json", "--quiet"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["messages"] == 0
    assert summary["duration_s"] >= 0.2
    assert read_back(path) == []  # a valid, empty recording
